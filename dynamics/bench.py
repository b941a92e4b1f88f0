"""Generation speed: `python -m dynamics.bench [--models=small,calvin] [--contexts=8,32,64]
[--frames=16] [--json=rows.json]`.

Frames per second of autoregressive generation with K denoising steps, with the KV cache
(`sampler.next_frame`: K + 1 passes over the new frame alone) and without it
(`sampler._uncached_frame`, the per-frame function of `generate_uncached` at capacity = context + 1:
K passes over the whole window). Both run in the steady state of a long rollout: the window holds
`context` finished frames and slides by one per generated frame (the cache's `make_room` runs every
frame). A frame here is one time step for the whole batch. Each per-frame function is compiled once,
explicitly (the `compile_s` columns: trace + lower + compile), called `--warmup` times, then timed
call by call with block_until_ready; the median over `--frames` calls is reported (`best ratio`: the
same from the fastest call of each, the better estimate on a machine shared with other jobs).
Memory: `fn_mb` is XLA's estimate for one call of the compiled function (arguments + outputs +
temporaries - aliased), and `peak_mb` is the process peak so far (max RSS on CPU, peak_bytes_in_use
on GPU), so it only grows from row to row.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from absl import app, flags
from jaxtyping import Array, Bool, Float

from core.timing import call_seconds, compile_timed, peak_memory_mb, print_rows, write_rows_json
from dynamics.actions import ActionSpec, random_actions
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.sampler import _uncached_frame, context_noise, next_frame, prefill, renoise

_MODELS = flags.DEFINE_list("models", ["small", "calvin"], "Model presets to time.")
_CONTEXTS = flags.DEFINE_list("contexts", ["8", "32", "64"], "Context lengths in frames.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Timed frames per measurement (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
_STEPS = flags.DEFINE_integer("steps", 4, "Denoising steps K per frame.")
_BATCH = flags.DEFINE_integer("batch", None, "Batch size for every model (default: preset's).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute (and KV cache) dtype; default bfloat16 on "
                             "an accelerator, float32 on a CPU.")
_FLOORS = flags.DEFINE_bool("floors", False, "Only print each row's FLOPs and bytes per frame "
                            "(XLA cost analysis, no run) and the frames/s floor they allow at "
                            "--peak_tflops and --bandwidth_tbs.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Dense matmul peak for --floors (H100 SXM "
                           "bf16: 989).")
_BANDWIDTH = flags.DEFINE_float("bandwidth_tbs", 3.35, "Memory bandwidth for --floors (H100 "
                                "SXM: 3.35 TB/s).")

ACTION = ActionSpec("continuous", dim=7)
CONTEXT_SIGNAL = 0.9


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model size and the batch it is timed at."""

    config: DynamicsConfig
    batch: int


PRESETS = {
    # A small CPU config (64x64 frames -> 16 latents x 32).
    "small": Preset(DynamicsConfig(latent_tokens=16, latent_dim=32, action=ACTION, width=128,
                                   depth=4, heads=4, time_every=2, registers=4, k_max=16), 4),
    # CALVIN dynamics (32 latents x 32); batch 1 keeps CPU runs short.
    "calvin": Preset(DynamicsConfig(latent_tokens=32, latent_dim=32, action=ACTION, width=768,
                                    depth=8, heads=12, time_every=4, registers=4, k_max=128), 1),
    # configs/coinrun.py full: 16 latents x 32, 15 discrete actions.
    "coinrun": Preset(DynamicsConfig(latent_tokens=16, latent_dim=32,
                                     action=ActionSpec("discrete", classes=(15,)), width=768,
                                     depth=12, heads=12, kv_heads=4, time_every=4, registers=4,
                                     k_max=128), 1),
    # Minecraft scale: about 1B parameters, 256 spatial tokens (512 latents x 16
    # packed by 2), VPT's multi-part actions (23 keys and buttons, 121 camera classes).
    "minecraft": Preset(DynamicsConfig(latent_tokens=512, latent_dim=16, pack=2,
                                       action=ActionSpec("multipart", classes=(2,) * 23 + (121,)),
                                       width=2048, depth=20, heads=16, kv_heads=4, time_every=4,
                                       registers=8, k_max=64), 1),
}


def bench_inputs(config: DynamicsConfig, batch: int, context: int) -> tuple[
    Float[Array, "batch context latents dim"], Array,
    Bool[Array, "batch window"],
]:
    """Random context latents, model-convention actions and has_action (window = context + 1)."""
    k_z, k_a = jax.random.split(jax.random.key(1))
    z = jax.random.normal(k_z, (batch, context, config.latent_tokens, config.latent_dim))
    actions = random_actions(config.action, batch, context + 1, key=k_a)
    return z, actions, jnp.ones((batch, context + 1), bool)


def cached_row(model: Dynamics, context: Float[Array, "batch context latents dim"],
               actions: Array, has: Bool[Array, "batch window"], *,
               steps: int, warmup: int, repeats: int) -> dict:
    """`next_frame` over a cache of capacity context + 1, prefilled with `context` frames."""
    batch, frames = context.shape[:2]
    key = jax.random.key(0)
    caches = model.init_caches(batch, frames + 1)
    _, caches = prefill(model, caches, context, actions[:, :frames], has[:, :frames], key,
                        jnp.asarray(0, jnp.int32), context_signal=CONTEXT_SIGNAL)
    action, has_new = actions[:, frames:], has[:, frames:]
    frame = lambda i: jnp.asarray(frames + i, jnp.int32)
    step, compile_s, fn_mb = compile_timed(next_frame, model, caches, action, has_new, key,
                                           frame(0), steps=steps, context_signal=CONTEXT_SIGNAL)
    state = {"caches": caches}

    def call(i):
        z, _, state["caches"] = step(model, state["caches"], action, has_new, key, frame(i))
        return z

    median, best = call_seconds(call, warmup, repeats)
    return {"cached_ms": median * 1e3, "cached_best_ms": best * 1e3,
            "cached_compile_s": compile_s, "cached_fn_mb": fn_mb}


def uncached_row(model: Dynamics, context: Float[Array, "batch context latents dim"],
                 actions: Array, has: Bool[Array, "batch window"],
                 *, steps: int, warmup: int, repeats: int) -> dict:
    """`generate_uncached`'s per-frame function over a window of context + 1 frames."""
    batch, frames = context.shape[:2]
    key = jax.random.key(0)
    noisy = renoise(context, context_noise(key, jnp.asarray(0, jnp.int32), context),
                    CONTEXT_SIGNAL)
    window = jnp.concatenate([noisy, jnp.zeros_like(noisy[:, :1])], axis=1)
    tau = jnp.full((batch, frames + 1), CONTEXT_SIGNAL, jnp.float32)
    d = jnp.full((batch, frames + 1), 1.0 / model.config.k_max, jnp.float32)
    position = jnp.asarray(frames, jnp.int32)
    frame = lambda i: jnp.asarray(frames + i, jnp.int32)
    args = (model, window, tau, d, actions, has, key)
    step, compile_s, fn_mb = compile_timed(_uncached_frame, *args, frame(0), position,
                                           steps=steps, context_signal=CONTEXT_SIGNAL)
    median, best = call_seconds(lambda i: step(*args, frame(i), position)[0], warmup, repeats)
    return {"uncached_ms": median * 1e3, "uncached_best_ms": best * 1e3,
            "uncached_compile_s": compile_s, "uncached_fn_mb": fn_mb}


def bench_row(name: str, model: Dynamics, batch: int, context: int, *, steps: int, warmup: int,
              repeats: int) -> dict:
    """Cached and uncached per-frame times at one context length, frames/s and their ratio."""
    z, actions, has = bench_inputs(model.config, batch, context)
    timing = dict(steps=steps, warmup=warmup, repeats=repeats)
    row = {"model": name, "batch": batch, "context": context, "steps": steps,
           **cached_row(model, z, actions, has, **timing),
           **uncached_row(model, z, actions, has, **timing)}
    row["cached_fps"] = 1e3 / row["cached_ms"]
    row["uncached_fps"] = 1e3 / row["uncached_ms"]
    row["ratio"] = row["uncached_ms"] / row["cached_ms"]
    row["best_ratio"] = row["uncached_best_ms"] / row["cached_best_ms"]
    row["peak_mb"] = peak_memory_mb()
    return row


def print_table(rows: list[dict]) -> None:
    print_rows(rows, [
        ("model", "<7", "model"), ("batch", ">5", "batch"), ("ctx", ">4", "context"),
        ("cached f/s", ">10", lambda r: f"{r['cached_fps']:.2f}"),
        ("uncached f/s", ">12", lambda r: f"{r['uncached_fps']:.3f}"),
        ("ratio", ">6", lambda r: f"{r['ratio']:.1f}"),
        ("best ratio", ">10", lambda r: f"{r['best_ratio']:.1f}"),
        ("compile s c/u", ">14",
         lambda r: f"{r['cached_compile_s']:.1f}/{r['uncached_compile_s']:.1f}"),
        ("fn MiB c/u", ">14", lambda r: f"{r['cached_fn_mb']:.0f}/{r['uncached_fn_mb']:.0f}"),
        ("peak MiB", ">9", lambda r: f"{r['peak_mb']:.0f}")])


def floor_row(name: str, config: DynamicsConfig, batch: int, context: int, *, steps: int,
              peak_flops: float, bandwidth: float) -> dict:
    """The frames/s floor of cached generation: a frame takes at least max(FLOPs / peak, bytes /
    bandwidth). FLOPs: XLA's cost analysis of `next_frame` lowered on abstract inputs (nothing
    allocated or run). Bytes: each of the K + 1 passes reads every weight (in the compute
    dtype) and the whole KV cache (the cost analysis of unfused HLO would count every
    intermediate too). Memory: weights + KV cache stay resident (`resident_gb`, a floor)."""
    model = eqx.filter_eval_shape(Dynamics, config, key=jax.random.key(0))
    caches = eqx.filter_eval_shape(lambda m: m.init_caches(batch, context + 1), model)
    action = jax.eval_shape(lambda: random_actions(config.action, batch, 1, key=jax.random.key(0)))
    has = jax.ShapeDtypeStruct((batch, 1), jnp.bool_)
    frame = jax.ShapeDtypeStruct((), jnp.int32)
    lowered = next_frame.lower(model, caches, action, has, jax.random.key(0), frame, steps=steps,
                               context_signal=CONTEXT_SIGNAL)
    cost = lowered.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    weights = sum(x.size for x in jax.tree.leaves(model) if hasattr(x, "size")) * itemsize
    cache = sum(c.keys.size + c.values.size for c in caches) * itemsize
    nbytes = (steps + 1) * (weights + cache)
    compute_s, memory_s = flops / peak_flops, nbytes / bandwidth
    return {"model": name, "batch": batch, "context": context, "steps": steps,
            "gflop_per_frame": flops / 1e9, "gb_per_frame": nbytes / 1e9,
            "floor_fps": 1 / max(compute_s, memory_s), "resident_gb": (weights + cache) / 1e9,
            "bound": "compute" if compute_s > memory_s else "memory"}


def main(argv):
    del argv
    print(f"devices: {jax.devices()}  jax {jax.__version__}  K={_STEPS.value}", flush=True)
    on_cpu = jax.default_backend() == "cpu"
    dtype = _DTYPE.value or ("float32" if on_cpu else "bfloat16")
    rows = []
    for name in _MODELS.value:
        preset = PRESETS[name]
        config = dataclasses.replace(preset.config, compute_dtype=dtype)
        batch = _BATCH.value or preset.batch
        if _FLOORS.value:
            for context in map(int, _CONTEXTS.value):
                row = floor_row(name, config, batch, context, steps=_STEPS.value,
                                peak_flops=_PEAK.value * 1e12, bandwidth=_BANDWIDTH.value * 1e12)
                print(f"{name} {dtype} batch {batch} context {context}: "
                      f"{row['gflop_per_frame']:.1f} GFLOP, {row['gb_per_frame']:.2f} GB per "
                      f"frame -> floor {row['floor_fps']:.0f} frames/s ({row['bound']}); "
                      f"weights + cache {row['resident_gb']:.2f} GB")
                rows.append(row)
            continue
        model = Dynamics(config, key=jax.random.key(0))
        params = sum(x.size for x in jax.tree.leaves(model) if isinstance(x, jax.Array))
        print(f"{name}: {params / 1e6:.2f}M parameters, {dtype}, batch {batch}", flush=True)
        for context in map(int, _CONTEXTS.value):
            rows.append(bench_row(name, model, batch, context, steps=_STEPS.value,
                                  warmup=_WARMUP.value, repeats=_FRAMES.value))
            print(f"done {name} context {context}", flush=True)
    if not _FLOORS.value:
        print_table(rows)
    write_rows_json(_JSON.value, rows)


if __name__ == "__main__":
    app.run(main)
