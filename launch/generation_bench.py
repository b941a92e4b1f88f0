"""Generation speed of the configs' dynamics models:

    python -m launch.generation_bench [--models=small,calvin,coinrun,minecraft]
        [--contexts=8,32,64] [--frames=16] [--batch=64] [--json=rows.json] [--floors]

Model presets: `small`, a CPU-sized model (16 latents x 32, width 128, 4 blocks) timed at batch
4, and `calvin`, `coinrun`, `minecraft`: the dynamics model of configs/<name>.py:full as the main
job builds it (`launch.bench.dynamics_config`: the source's action layout and classes), timed at
batch 1. The compute dtype is `--dtype` (default bfloat16 on an accelerator, float32 on a CPU).
What each row measures: dynamics/bench.py.
"""

import dataclasses
import importlib

import jax
from absl import app, flags

from core.timing import write_rows_json
from dynamics import ActionSpec, Dynamics, DynamicsConfig
from dynamics.bench import bench_row, floor_row, print_table
from launch.bench import dynamics_config

CONFIG_PRESETS = ("calvin", "coinrun", "minecraft")  # configs/<name>.py:full, at batch 1
SMALL = DynamicsConfig(latent_tokens=16, latent_dim=32, action=ActionSpec("continuous", dim=7),
                       width=128, depth=4, heads=4, time_every=2, registers=4, k_max=16)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model size and the batch it is timed at."""

    config: DynamicsConfig
    batch: int


def preset(name: str) -> Preset:
    """`small`, or the full variant of configs/<name>.py (see the module docstring)."""
    if name == "small":
        return Preset(SMALL, 4)
    if name not in CONFIG_PRESETS:
        raise app.UsageError(f"--models: no preset {name!r}; use small or one of "
                             f"{CONFIG_PRESETS}.")
    config = importlib.import_module(f"configs.{name}").get_config("full")
    return Preset(dynamics_config(config), 1)


def define_flags() -> None:
    """The command line (defined only when run as a script)."""
    flags.DEFINE_list("models", ["small", "calvin"], "Model presets to time.")
    flags.DEFINE_list("contexts", ["8", "32", "64"], "Context lengths in frames.")
    flags.DEFINE_integer("frames", 16, "Timed frames per measurement (median reported).")
    flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
    flags.DEFINE_integer("steps", 4, "Denoising steps K per frame.")
    flags.DEFINE_integer("batch", None, "Batch size for every model (default: the preset's).")
    flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
    flags.DEFINE_string("dtype", None, "Compute (and KV cache) dtype; default bfloat16 on an "
                        "accelerator, float32 on a CPU.")
    flags.DEFINE_bool("floors", False, "Only print each row's FLOPs and bytes per frame (XLA "
                      "cost analysis, no run) and the frames/s floor they allow at "
                      "--peak_tflops and --bandwidth_tbs.")
    flags.DEFINE_float("peak_tflops", 989.0, "Dense matmul peak for --floors (H100 SXM bf16: "
                       "989).")
    flags.DEFINE_float("bandwidth_tbs", 3.35, "Memory bandwidth for --floors (H100 SXM: "
                       "3.35 TB/s).")


def main(argv):
    del argv
    args = flags.FLAGS
    print(f"devices: {jax.devices()}  jax {jax.__version__}  K={args.steps}", flush=True)
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    contexts = [int(c) for c in args.contexts]
    rows = []
    for name in args.models:
        chosen = preset(name)
        config = dataclasses.replace(chosen.config, compute_dtype=dtype)
        batch = args.batch or chosen.batch
        if args.floors:
            for context in contexts:
                row = floor_row(name, config, batch, context, steps=args.steps,
                                peak_flops=args.peak_tflops * 1e12,
                                bandwidth=args.bandwidth_tbs * 1e12)
                print(f"{name} {dtype} batch {batch} context {context}: "
                      f"{row['gflop_per_frame']:.1f} GFLOP, {row['gb_per_frame']:.2f} GB per "
                      f"frame -> floor {row['floor_fps']:.0f} frames/s ({row['bound']}); "
                      f"weights + cache {row['resident_gb']:.2f} GB")
                rows.append(row)
            continue
        model = Dynamics(config, key=jax.random.key(0))
        params = sum(x.size for x in jax.tree.leaves(model) if isinstance(x, jax.Array))
        print(f"{name}: {params / 1e6:.2f}M parameters, {dtype}, batch {batch}", flush=True)
        for context in contexts:
            rows.append(bench_row(name, model, batch, context, steps=args.steps,
                                  warmup=args.warmup, repeats=args.frames))
            print(f"done {name} context {context}", flush=True)
    if not args.floors:
        print_table(rows)
    write_rows_json(args.json, rows)


if __name__ == "__main__":
    define_flags()
    app.run(main)
