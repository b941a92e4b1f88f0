"""Autoregressive generation with the fixed-size KV cache, and an uncached reference.

Per generated frame (one compiled function, caches donated, nothing recompiles as context grows):
1. `make_room`: if the caches are full, the oldest frame is dropped (O(1): the caches are ring
   buffers, so the new frame's writes reuse its slot and nothing moves);
2. K denoising steps from pure noise, tau = 0, 1/K, ..., (K-1)/K with step d = 1/K; each step
   writes the frame's keys/values into the same scratch slot (the cache index does not move) and
   applies z <- z + d (z1_hat - z) / (1 - tau), so the last step lands on z1_hat;
3. one more pass writes the finished frame, re-noised to the context signal level (default 0.9,
   i.e. 10% noise), and the index is committed past it. So the cache always holds finished
   context frames, never a half-denoised one. That pass's output features (per token group) are
   the frame's features: what a policy acting after the frame reads (`world.imagine`).
Context frames are prefilled the same way, all at once. Noise is drawn per frame from
`fold_in(key, frame_number)`, so the cached and the uncached paths see identical noise.

`generate_uncached` recomputes the whole window of the last `capacity` frames for every denoising
step (fixed shapes, so it compiles once too); it is the reference for tests and benchmarks.
Context and output are tokenizer latents (standardised inside, `Dynamics.normalise`); actions are
in the model convention (see `dynamics.actions.align_actions`).
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from core.transformer import commit, make_room
from dynamics.model import Dynamics, Features, FrameFeatures

_GENERATE, _CONTEXT = 0, 1


def frame_noise(key: PRNGKeyArray, purpose: int, frame: int | Array, shape) -> Array:
    """N(0, I) noise for one frame; the same (key, purpose, frame) always gives the same noise."""
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, purpose), frame), shape)


def _levels(batch: int, frames: int, tau: float | Array, d: float):
    return (jnp.full((batch, frames), tau, jnp.float32), jnp.full((batch, frames), d, jnp.float32))


def context_noise(key, first_frame, context):
    """Re-noising noise for context frames first_frame, first_frame + 1, ... (same shape)."""
    frames = first_frame + jnp.arange(context.shape[1])
    return jax.vmap(lambda t: frame_noise(key, _CONTEXT, t, context[:, 0].shape),
                    out_axes=1)(frames)


def renoise(z1, noise, signal: float):
    return (1.0 - signal) * noise + signal * z1


@functools.partial(jax.jit, donate_argnums=1, static_argnames=("context_signal",))
def prefill(model: Dynamics, caches, context, actions, has_action, key, first_frame, *,
            context_signal: float):
    """Writes and commits context frames [batch, C, latents, dim] numbered from first_frame;
    returns (features of the last context frame, per group [batch, tokens, width], caches)."""
    batch, frames = context.shape[:2]
    noise = context_noise(key, first_frame, context)
    tau, d = _levels(batch, frames, context_signal, 1.0 / model.config.k_max)
    _, features, caches = model.step(renoise(context, noise, context_signal), tau, d, actions,
                                     has_action, caches)
    return last_frame(features), commit(caches, frames)


def last_frame(features: Features) -> FrameFeatures:
    return {name: value[:, -1] for name, value in features.items()}


def guide(unknown: Array, known: Array, guidance: float) -> Array:
    """Action guidance: the prediction moved `guidance` times as far from the one made without
    the frame's action as the action alone moves it (1: the plain conditional prediction)."""
    return unknown + guidance * (known - unknown)


@functools.partial(jax.jit, donate_argnums=1,
                   static_argnames=("steps", "context_signal", "guidance"))
def next_frame(model: Dynamics, caches, action, has_action, key, frame, *, steps: int,
               context_signal: float, guidance: float = 1.0):
    """Generates frame number `frame` (int32 scalar) given one action [batch, 1, ...]; returns
    (its latents [batch, latents, dim], its features per group, caches). With `guidance` != 1
    every denoising step also predicts the frame without its action (same cache, its writes
    discarded) and steps along `guide`'s extrapolation."""
    batch = has_action.shape[0]
    shape = (batch, 1, model.config.latent_tokens, model.config.latent_dim)
    caches = make_room(caches, 1)
    z = frame_noise(key, _GENERATE, frame, shape)
    for i in range(steps):
        tau, d = _levels(batch, 1, i / steps, 1.0 / steps)
        z1_hat, _, stepped = model.step(z, tau, d, action, has_action, caches)
        if guidance != 1.0:
            unknown = model.step(z, tau, d, action, jnp.zeros_like(has_action), caches)[0]
            z1_hat = guide(unknown, z1_hat, guidance)
        caches = stepped
        z = z + (1.0 / steps) * (z1_hat - z) / (1.0 - i / steps)
    tau, d = _levels(batch, 1, context_signal, 1.0 / model.config.k_max)
    context = renoise(z, frame_noise(key, _CONTEXT, frame, shape), context_signal)
    _, features, caches = model.step(context, tau, d, action, has_action, caches)
    return z[:, 0], last_frame(features), commit(caches, 1)


def generate(
    model: Dynamics,
    context: Float[Array, "batch context latents dim"],
    actions: Float[Array, "batch total *action"] | Array,
    has_action: Bool[Array, "batch total"],
    *,
    key: PRNGKeyArray,
    steps: int = 4,
    context_signal: float = 0.9,
    capacity: int | None = None,
    guidance: float = 1.0,
) -> Float[Array, "batch horizon latents dim"]:
    """Frames C..total-1 given C context frames and model-convention actions for all frames.

    `capacity` (frames held in the cache, default all) bounds memory; beyond it the oldest
    frames slide out of the window. `guidance`: see `next_frame`.
    """
    batch, frames = context.shape[:2]
    total = has_action.shape[1]
    capacity, first = cache_window(model, frames, total, steps, capacity)
    context = model.normalise(context)
    caches = model.init_caches(batch, capacity)
    _, caches = prefill(model, caches, context[:, first:], actions[:, first:frames],
                        has_action[:, first:frames], key, jnp.asarray(first, jnp.int32),
                        context_signal=context_signal)
    out = []
    for t in range(frames, total):
        z, _, caches = next_frame(model, caches, actions[:, t:t + 1], has_action[:, t:t + 1], key,
                               jnp.asarray(t, jnp.int32), steps=steps,
                               context_signal=context_signal, guidance=guidance)
        out.append(z)
    return model.denormalise(jnp.stack(out, axis=1))


def cache_window(model: Dynamics, frames: int, total: int, steps: int, capacity: int | None
                 ) -> tuple[int, int]:
    """Validated capacity, and the first context frame that fits beside the generated one."""
    capacity = total if capacity is None else capacity
    if frames < 1 or capacity < 2 or total <= frames:
        raise ValueError(f"need context frames >= 1 (got {frames}), capacity >= 2 (got "
                         f"{capacity}) and actions for more frames than the context (got "
                         f"{total}).")
    if not 1 <= steps <= model.config.k_max:
        raise ValueError(f"sampling steps must be in 1..k_max={model.config.k_max}, got {steps}.")
    return capacity, max(0, frames - (capacity - 1))


@functools.partial(jax.jit, static_argnames=("steps", "context_signal", "guidance"))
def _uncached_frame(model, z_window, tau_window, d_window, actions, has_action, key, frame,
                    position, *, steps: int, context_signal: float, guidance: float = 1.0):
    """One frame by full recomputation over the window; the new frame sits at `position`."""
    batch = z_window.shape[0]
    shape = (batch, 1, *z_window.shape[2:])
    z = frame_noise(key, _GENERATE, frame, shape)

    def put(window, value):
        return jax.lax.dynamic_update_slice_in_dim(window, value, position, axis=1)

    unknown = has_action.at[:, position].set(False)  # the new frame's action hidden

    def predict(inputs, has):
        return jax.lax.dynamic_slice_in_dim(model(*inputs, has)[0], position, 1, axis=1)

    for i in range(steps):
        tau, d = _levels(batch, 1, i / steps, 1.0 / steps)
        inputs = put(z_window, z), put(tau_window, tau), put(d_window, d), actions
        z1_hat = predict(inputs, has_action)
        if guidance != 1.0:
            z1_hat = guide(predict(inputs, unknown), z1_hat, guidance)
        z = z + (1.0 / steps) * (z1_hat - z) / (1.0 - i / steps)
    context = renoise(z, frame_noise(key, _CONTEXT, frame, shape), context_signal)
    tau, d = _levels(batch, 1, context_signal, 1.0 / model.config.k_max)
    return z[:, 0], put(z_window, context), put(tau_window, tau), put(d_window, d)


def generate_uncached(model, context, actions, has_action, *, key, steps=4, context_signal=0.9,
                      capacity=None, guidance=1.0):
    """Same contract and noise as `generate`, by recomputing the window for every step."""
    batch, frames = context.shape[:2]
    total = has_action.shape[1]
    capacity, start = cache_window(model, frames, total, steps, capacity)  # start: frame in slot 0
    kept = model.normalise(context[:, start:])
    z_window = jnp.zeros((batch, capacity, *context.shape[2:]), jnp.float32)
    z_window = z_window.at[:, :kept.shape[1]].set(
        renoise(kept, context_noise(key, jnp.asarray(start, jnp.int32), kept), context_signal))
    tau_window, d_window = _levels(batch, capacity, context_signal, 1.0 / model.config.k_max)
    out = []
    for t in range(frames, total):
        if t - start >= capacity:
            z_window, tau_window, d_window = (jnp.roll(w, -1, axis=1)
                                              for w in (z_window, tau_window, d_window))
            start += 1
        window = slice(start, start + capacity)
        acts, has = actions[:, window], has_action[:, window]
        pad = capacity - has.shape[1]
        if pad:
            acts = jnp.concatenate([acts, jnp.zeros_like(actions[:, :pad])], axis=1)
            has = jnp.concatenate([has, jnp.zeros_like(has_action[:, :pad])], axis=1)
        z, z_window, tau_window, d_window = _uncached_frame(
            model, z_window, tau_window, d_window, acts, has, key, jnp.asarray(t, jnp.int32),
            jnp.asarray(t - start, jnp.int32), steps=steps, context_signal=context_signal,
            guidance=guidance)
        out.append(z)
    return model.denormalise(jnp.stack(out, axis=1))
