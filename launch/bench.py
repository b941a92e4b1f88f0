"""Training throughput against the device's limit:

    python -m launch.bench --configs=calvin,coinrun --variant=full --json=train.json

For each config and stage (tokenizer, dynamics) it builds the stage's real train step (the
jitted, state-donating step `launch/run.py` runs, at the config's sizes, on synthetic batches so
no dataset is needed; the dynamics step with its bootstrap rows on, as after
`bootstrap_start`), compiles it once and times `--steps` steps after `--warmup`. Columns:
- ms/step (median), steps/s and tokens/s (tokens = batch x frames x tokens per frame through the
  transformers: patches + latents for the tokenizer, `tokens_per_frame` for the dynamics);
- model GFLOP/step: XLA's cost analysis of the same step lowered with the XLA attention backend
  and no rematerialisation (custom kernels are opaque to the cost analysis, recomputation is not
  model work); MFU = model FLOPs/s / the peak matmul rate measured in this process
  (`peak_matmul`: a chain of square matmuls in the compute dtype);
- split of the step: attention and MLP = forward + backward time of one attention and one MLP
  sublayer at the step's shapes (space and time layers apart), times the number of layers;
  data = the real grain loader's time per batch over synthetic clips of the config's shape
  (frames for the tokenizer, latents for the dynamics); host = the real loop's time per step
  (next batch, device_put, step; no sync) minus the device step time;
- memory: XLA's estimate for one step (arguments + outputs + temporaries - aliased), the
  process peak (device peak_bytes_in_use, else max RSS) and `memory_estimate`, computed from
  shapes alone (XLA:CPU's own estimate ignores rematerialisation).
"""

import functools
import importlib
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from core.timing import (
    backward_residual_bytes,
    call_seconds,
    compile_timed,
    peak_memory_mb,
    print_rows,
    write_rows_json,
)
from core.training import init_state, make_train_step
from data import sources
from data.clips import ClipSettings, prepare_clips
from data.episode import NOISE_ACTIONS, NoiseEpisode
from data.loader import make_loader
from dynamics import Dynamics, DynamicsConfig
from dynamics.train import make_train_step as make_dynamics_step
from launch import settings
from launch.stages import dynamics_loss_fn, encode_clips
from launch.trainer import make_optimizer
from tokenizer import Tokenizer, init_train_state, tokenizer_loss

FLAGS = flags.FLAGS


def peak_matmul(dtype, *, size: int, chain: int = 8, repeats: int = 5) -> float:
    """Measured FLOP/s of `chain` dependent [size, size] matmuls in `dtype`."""
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (size, size), dtype)
    w = (jax.random.normal(k2, (size, size)) / np.sqrt(size)).astype(dtype)

    @jax.jit
    def run(x, w):
        for _ in range(chain):
            x = x @ w
        return x

    seconds = call_seconds(lambda i: run(x, w), 2, repeats)[0]
    return 2 * size**3 * chain / seconds


def flops_of(lowered) -> float:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0))


def action_batch(spec, batch: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "continuous":
        return rng.uniform(-1, 1, (batch, frames, spec.dim)).astype(np.float32)
    highs = np.asarray(spec.classes)
    return rng.integers(0, highs, (batch, frames, len(highs))).squeeze(-1) \
        if spec.kind == "discrete" else rng.integers(0, highs, (batch, frames, len(highs)))


def dynamics_config(config) -> DynamicsConfig:
    """The config's dynamics model as the main job builds it, with the action layout and default
    classes of its source (data/sources.py; a folder of episodes has no layout of its own: the
    noise clips' 7-D continuous one) and no latent statistics (mean 0, std 1)."""
    layout = sources.source(config.data.format).actions or NOISE_ACTIONS
    return settings.dynamics_config(config, settings.action_spec(config, layout))


class StageSetup(NamedTuple):
    """One stage's train step at [batch, frames] on a synthetic batch."""
    step: Callable  # jitted, state-donating: step(state, batch, key, **static)
    loss_fn: Callable  # loss_fn(model, loss_state, step, batch, *, key, **static)
    make_state: Callable  # () -> TrainState
    batch: Any
    static: dict
    tokens: int  # per step, through every transformer
    parts: Callable  # model -> [(transformer, tokens per frame it sees)]


def stage_setup(config, stage: str, batch: int, frames: int, *, exact: bool) -> StageSetup:
    """`exact=False`: XLA attention and no remat, for counting FLOPs."""
    rng = np.random.default_rng(0)
    if not exact:
        config = config.copy_and_resolve_references()
        config.tokenizer.remat = config.dynamics.remat = False
        config.tokenizer.backend = config.dynamics.backend = "xla"
    train = config.train[stage]
    optimizer = make_optimizer(train)
    height, width = settings.image_size(config)
    if stage == "tokenizer":
        loss_fn = functools.partial(tokenizer_loss, perceptual=None)
        c = settings.tokenizer_config(config)
        per_frame = c.n_patches + c.n_latents
        return StageSetup(
            make_train_step(loss_fn, optimizer), loss_fn,
            lambda: init_train_state(Tokenizer(c, key=jax.random.key(0)), optimizer),
            jnp.asarray(rng.integers(0, 256, (batch, frames, height, width, 3), np.uint8)), {},
            batch * frames * 2 * per_frame,
            lambda m: [(m.encoder.transformer, per_frame), (m.decoder.transformer, per_frame)])
    c = dynamics_config(config)
    loss_fn = dynamics_loss_fn(config)
    data = {"latents": jnp.asarray(rng.normal(size=(batch, frames, c.latent_tokens,
                                                    c.latent_dim)).astype(np.float32)),
            "actions": jnp.asarray(action_batch(c.action, batch, frames, rng)),
            "has_action": jnp.ones((batch, frames), bool)}
    return StageSetup(
        make_dynamics_step(optimizer, loss_fn), loss_fn,
        lambda: init_state(Dynamics(c, key=jax.random.key(0)), optimizer), data,
        {"bootstrap_rows": round(train.bootstrap_fraction * batch)},
        batch * frames * c.tokens_per_frame, lambda m: [(m.transformer, c.tokens_per_frame)])


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def is_float(x) -> bool:
    """A floating-point array or ShapeDtypeStruct: a parameter that gets a gradient."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def activation_bytes(setup: StageSetup, state) -> int:
    """Bytes the step's backward pass keeps from its forward pass (abstract `state`)."""
    is_array = lambda x: eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)
    arrays, static = eqx.partition(state.model, is_array)
    diff, fixed = eqx.partition(arrays, is_float)

    def loss(diff, other):
        fixed, loss_state, step, batch = other
        model = eqx.combine(diff, fixed, static)
        return setup.loss_fn(model, loss_state, step, batch, key=jax.random.key(0),
                             **setup.static)[0]

    return backward_residual_bytes(loss, diff, (fixed, state.loss_state, state.step,
                                                setup.batch))


def memory_estimate(config, stage: str, batch: int, frames: int) -> dict[str, float]:
    """Peak training memory (GiB) from shapes alone, nothing allocated: the train state (model,
    optimizer, loss state) + gradients + the activations the backward pass keeps + with remat,
    one block's activations while it is recomputed (the no-remat activations over the block
    count). Activations are counted as JAX's autodiff records them, before XLA fuses (which
    usually keeps fewer) and without XLA's scratch space, with the step's attention backend
    (on a CPU 'auto' is XLA, whose attention matrices count; on a GPU Pallas keeps none): a
    rough figure to compare with the device's peak."""
    exact = stage_setup(config, stage, batch, frames, exact=True)
    state = eqx.filter_eval_shape(exact.make_state)
    row = {"state_gib": nbytes(state),
           "grads_gib": nbytes(eqx.filter(state.model, is_float)),
           "saved_gib": activation_bytes(exact, state), "block_gib": 0}
    if (config.tokenizer if stage == "tokenizer" else config.dynamics).remat:
        plain = stage_setup(config, stage, batch, frames, exact=False)
        blocks = sum(len(t.blocks) for t, _ in exact.parts(state.model))
        row["block_gib"] = activation_bytes(plain, eqx.filter_eval_shape(plain.make_state)) \
            / blocks
    row = {k: v / 2**30 for k, v in row.items()}
    return {**row, "estimate_gib": sum(row.values())}


def sublayer_seconds(transformer, batch: int, frames: int, tokens: int) -> dict[str, float]:
    """Forward + backward seconds of all attention (space, time) and MLP sublayers of one
    transformer at [batch, frames, tokens], from one sublayer of each kind times its count."""
    block = transformer.blocks[0]
    width = block.attn_norm.scale.shape[0]
    n_time = sum(transformer.is_time_layer(i) for i in range(len(transformer.blocks)))
    n_space = len(transformer.blocks) - n_time
    x = jax.random.normal(jax.random.key(0), (batch * frames * tokens, width))

    def timed(fn, shaped):
        grad = jax.jit(jax.grad(lambda m, h: jnp.sum(fn(m, h).astype(jnp.float32))))
        return call_seconds(lambda i: grad(block, shaped), 1, 3)[0]

    space = x.reshape(batch * frames, tokens, width)
    time_rows = x.reshape(batch * tokens, frames, width)
    positions = lambda n: jnp.arange(n, dtype=jnp.int32)
    attention = lambda causal, n: lambda m, h: m.attn(h, positions=positions(n), causal=causal,
                                                       mask=None)
    return {"attention_s": n_space * timed(attention(False, tokens), space)
            + n_time * timed(attention(True, frames), time_rows),
            "mlp_s": len(transformer.blocks) * timed(lambda m, h: m.mlp(h), x)}


def synthetic_loader(config, stage: str, batch: int, frames: int):
    """The real grain loader over synthetic clips of the config's shape (frames for the
    tokenizer; random latents for the dynamics)."""
    root = tempfile.mkdtemp(prefix="bench_train_")
    size = settings.image_size(config)
    clips = [NoiseEpisode(f"noise{k}", frames, size) for k in range(batch + 2)]
    prepare_clips({"train": clips}, f"{root}/clips", ClipSettings(frames, frames, size),
                  progress=False)
    folder = f"{root}/clips"
    if stage == "dynamics":
        c = settings.tokenizer_config(config)
        shape = (c.n_latents, c.latent_dim)
        encode_clips(folder, f"{root}/latents",
                     lambda f: np.random.default_rng(0).normal(size=(*f.shape[:2], *shape)),
                     progress=False)
        folder = f"{root}/latents"
    return make_loader(folder, "train", batch_size=batch, seq_lengths=(frames,),
                       num_threads=config.data.loader_threads)


def bench_row(name: str, config, stage: str, batch: int, frames: int, *, steps: int,
              warmup: int, peak: float, loader_batches: int, trace: str | None) -> dict:
    """Times one stage's train step at [batch, frames]; see the module docstring."""
    key = jax.random.key(0)
    model_flops = step_flops(stage_setup(config, stage, batch, frames, exact=False))
    setup = stage_setup(config, stage, batch, frames, exact=True)
    data = setup.batch
    compiled, compile_s, step_mb = compile_timed(setup.step, setup.make_state(), data, key,
                                                 **setup.static)
    holder = {"state": setup.make_state()}

    def call(i):
        holder["state"], metrics = compiled(holder["state"], data, key)
        return metrics["loss"]

    if trace:
        jax.profiler.start_trace(trace)
    seconds = call_seconds(call, warmup, steps)[0]
    if trace:
        jax.profiler.stop_trace()
    split = {"attention_s": 0.0, "mlp_s": 0.0}
    for transformer, per_frame in setup.parts(holder["state"].model):
        for k, v in sublayer_seconds(transformer, batch, frames, per_frame).items():
            split[k] += v
    loader = synthetic_loader(config, stage, batch, frames)
    data_s = call_seconds(lambda i: next(loader), 2, loader_batches)[0]
    start = time.perf_counter()
    for i in range(steps):  # the trainer's loop: fetch, put on device, step; no sync
        jax.device_put(next(loader))
        loss = call(i)
    jax.block_until_ready(loss)
    loop_s = (time.perf_counter() - start) / steps
    return {"config": name, "variant": config.variant, "stage": stage, "batch": batch,
            "frames": frames, "ms_per_step": seconds * 1e3, "steps_per_s": 1 / seconds,
            "tokens_per_s": setup.tokens / seconds, "model_gflop_per_step": model_flops / 1e9,
            "mfu": model_flops / seconds / peak, "compile_s": compile_s,
            "attention_share": split["attention_s"] / seconds,
            "mlp_share": split["mlp_s"] / seconds, "data_ms_per_batch": data_s * 1e3,
            "host_overhead_ms": max(loop_s - seconds, 0.0) * 1e3, "step_mb": step_mb,
            "peak_mb": peak_memory_mb(),
            "estimate_mb": memory_estimate(config, stage, batch, frames)["estimate_gib"] * 1024}


def step_flops(setup: StageSetup) -> float:
    """XLA's FLOP count of the step, lowered on abstract state (nothing allocated or run)."""
    return flops_of(setup.step.lower(eqx.filter_eval_shape(setup.make_state), setup.batch,
                                     jax.random.key(0), **setup.static))


def floor_row(name: str, config, stage: str, batch: int, frames: int, peak: float) -> dict:
    """FLOPs and the step time they take at `peak` and at 40% of it; the memory estimate."""
    setup = stage_setup(config, stage, batch, frames, exact=False)
    flops = step_flops(setup)
    memory = memory_estimate(config, stage, batch, frames)
    row = {"config": name, "variant": config.variant, "stage": stage, "batch": batch,
           "frames": frames, "tokens_per_step": setup.tokens,
           "model_gflop_per_step": flops / 1e9, "ms_at_peak": flops / peak * 1e3,
           "ms_at_40pct": flops / (0.4 * peak) * 1e3, **memory}
    print(f"{name}:{config.variant} {stage} batch {batch} x {frames} frames: {setup.tokens} "
          f"tokens, {flops / 1e12:.2f} TFLOP/step -> {row['ms_at_peak']:.0f} ms at peak, "
          f"{row['ms_at_40pct']:.0f} ms at 40% MFU; memory estimate "
          f"{memory['estimate_gib']:.1f} GiB (state {memory['state_gib']:.2f}, grads "
          f"{memory['grads_gib']:.2f}, saved activations {memory['saved_gib']:.2f}, one block "
          f"recomputed {memory['block_gib']:.2f})", flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print_rows(rows, [
        ("config", "<8", "config"), ("stage", "<9", "stage"), ("batch", ">5", "batch"),
        ("T", ">4", "frames"), ("ms/step", ">8", lambda r: f"{r['ms_per_step']:.1f}"),
        ("tok/s", ">9", lambda r: f"{r['tokens_per_s']:.0f}"),
        ("GFLOP", ">8", lambda r: f"{r['model_gflop_per_step']:.1f}"),
        ("MFU", ">6", lambda r: f"{r['mfu']:.1%}"),
        ("attn", ">5", lambda r: f"{r['attention_share']:.0%}"),
        ("mlp", ">5", lambda r: f"{r['mlp_share']:.0%}"),
        ("data ms", ">8", lambda r: f"{r['data_ms_per_batch']:.1f}"),
        ("host ms", ">8", lambda r: f"{r['host_overhead_ms']:.1f}"),
        ("step MiB", ">9", lambda r: f"{r['step_mb']:.0f}"),
        ("peak MiB", ">9", lambda r: f"{r['peak_mb']:.0f}"),
        ("est MiB", ">8", lambda r: f"{r['estimate_mb']:.0f}")])


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module for
    its functions defines no flags)."""
    flags.DEFINE_list("configs", ["calvin", "coinrun"], "configs/<name>.py to time.")
    flags.DEFINE_string("variant", None, "Config variant (default: full on an accelerator, "
                        "small on a CPU).")
    flags.DEFINE_list("stages", ["tokenizer", "dynamics"], "Stages to time.")
    flags.DEFINE_integer("steps", 10, "Timed steps (median reported).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
    flags.DEFINE_integer("batch", None, "Override the config's batch size.")
    flags.DEFINE_integer("loader_batches", 10, "Timed loader batches.")
    flags.DEFINE_string("trace", None, "Write a profiler trace of the timed steps here.")
    flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
    flags.DEFINE_bool("floors", False, "Only count each step's model FLOPs (lowering on "
                      "abstract state, nothing run), print the step time they take at "
                      "--peak_tflops and at 40% of it, and estimate the step's peak memory "
                      "from its shapes (`memory_estimate`).")
    flags.DEFINE_float("peak_tflops", 989.0, "Matmul peak for --floors (H100 SXM bf16: 989).")


def main(argv):
    del argv
    on_cpu = jax.default_backend() == "cpu"
    rows = []
    peaks = {}
    for name in FLAGS.configs:
        try:
            config = importlib.import_module(f"configs.{name}").get_config(FLAGS.variant)
        except ModuleNotFoundError as error:
            raise app.UsageError(f"--configs: no config named {name!r} (configs/{name}.py); "
                                 "use calvin, coinrun or minecraft.") from error
        dtype = jnp.dtype(config.dynamics.compute_dtype)
        if dtype not in peaks and not FLAGS.floors:
            peaks[dtype] = peak_matmul(dtype, size=2048 if on_cpu else 8192)
            print(f"peak matmul {dtype}: {peaks[dtype] / 1e12:.3f} TFLOP/s on "
                  f"{jax.devices()[0].device_kind}", flush=True)
        for stage in FLAGS.stages:
            train = config.train[stage]
            for frames in train.seq_lengths:
                if FLAGS.floors:
                    rows.append(floor_row(name, config, stage, FLAGS.batch or train.batch,
                                          frames, FLAGS.peak_tflops * 1e12))
                    continue
                rows.append(bench_row(name, config, stage, FLAGS.batch or train.batch, frames,
                                      steps=FLAGS.steps, warmup=FLAGS.warmup,
                                      peak=peaks[dtype],
                                      loader_batches=FLAGS.loader_batches, trace=FLAGS.trace))
                print(f"done {name} {stage} T={frames}", flush=True)
    if not FLAGS.floors:
        print_table(rows)
    write_rows_json(FLAGS.json, rows, peak_flops={str(k): v for k, v in peaks.items()})


if __name__ == "__main__":
    define_flags()
    app.run(main)
