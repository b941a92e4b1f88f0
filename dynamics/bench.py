"""Generation speed of a dynamics model: the measurements of `python -m launch.generation_bench`
(the command line and the model presets, which come from the configs, live there).

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

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from core.timing import call_seconds, compile_timed, peak_memory_mb, print_rows
from dynamics.actions import random_actions
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.sampler import _uncached_frame, context_noise, next_frame, prefill, renoise

CONTEXT_SIGNAL = 0.9


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
