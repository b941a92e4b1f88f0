"""Imagination with a policy in the loop: the world model generates a frame, the policy reads it
and picks the action that leads to the next one, inside one compiled per-frame step.

    frame C-1 (last context frame) --policy--> action C-1 --dynamics--> frame C --policy--> ...

A policy is any function `policy(frame: Frame, key) -> action [batch, *action]` in the dataset
convention (the action taken after seeing the frame): a Python function (static: compiled once
per function object) or an `eqx.Module` whose arrays are traced (a neural policy head). `Frame`
holds the step number, the frame's latents and its output features per token group
(`Dynamics` groups: actions, shortcut, spatial, registers, agent), from the pass that writes the
finished frame into the KV cache. Noise is the same as `dynamics.generate`'s, so a policy that
replays a dataset's actions reproduces `generate` exactly.
"""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from dynamics import Dynamics, align_actions
from dynamics.model import FrameFeatures
from dynamics.sampler import cache_window, next_frame, prefill
from world.model import Sampling

_POLICY = 2  # purpose of the policy's keys (the sampler uses 0 and 1 for its noise)


class Frame(eqx.Module):
    """What a policy sees after a frame: `step` (0 for the last context frame, h for imagined
    frame h), the frame's tokenizer `latents` and its `features` per token group."""

    step: Int[Array, ""]
    latents: Float[Array, "batch latents dim"]
    features: FrameFeatures


class Imagination(eqx.Module):
    """A rollout of `horizon` frames: their latents, the actions the policy took (action h led to
    frame h), the frame each action was chosen from (`Frame` fields stacked over the horizon),
    the last imagined frame (`last`: what a value function bootstraps from), and, when asked
    for, the decoded frames of context and rollout."""

    latents: Float[Array, "batch horizon latents dim"]
    actions: Array
    seen: Frame
    last: Frame
    frames: Float[Array, "batch total height width 3"] | None


Policy = Callable[[Frame, PRNGKeyArray], Array]


@functools.partial(jax.jit, donate_argnums=2,
                   static_argnames=("policy_static", "steps", "context_signal", "guidance"))
def imagine_step(model: Dynamics, policy_params, caches, frame: Frame, key, index, *,
                 policy_static, steps: int, context_signal: float, guidance: float = 1.0):
    """One policy decision and one generated frame (frame number `index`): returns (action,
    the new frame's `Frame`, caches). Compiled once per policy and sizes."""
    policy = eqx.combine(policy_params, policy_static)
    action = policy(frame, jax.random.fold_in(jax.random.fold_in(key, _POLICY), index))
    batch = frame.latents.shape[0]
    z, features, caches = next_frame(model, caches, action[:, None], jnp.ones((batch, 1), bool),
                                     key, index, steps=steps, context_signal=context_signal,
                                     guidance=guidance)
    return action, Frame(frame.step + 1, model.denormalise(z), features), caches


def imagine(
    world_model,
    policy: Policy,
    context: Float[Array | np.ndarray, "batch context latents dim"],
    horizon: int,
    *,
    key: PRNGKeyArray,
    actions: ArrayLike | None = None,
    has_action: Bool[Array | np.ndarray, "batch context"] | None = None,
    steps: int | None = None,
    context_signal: float | None = None,
    capacity: int | None = None,
    guidance: float | None = None,
    decode: bool = False,
) -> Imagination:
    """Imagines `horizon` frames after `context` (tokenizer latents) with `policy` choosing every
    action. `actions` [batch, context, ...] are the context's own actions in the dataset
    convention (the last one is not used: the policy chooses it); without them the context
    frames get the "no action" embedding. `capacity` (frames in the KV cache, default all)
    bounds memory: older frames slide out of the window; set it to the longest training sequence
    when context + horizon exceed it (the eval and the player do: attending over more frames than
    training showed makes rollouts worse, BENCHMARKS.md). `world_model` is a `WorldModel` (or a
    bare `Dynamics` when `decode` is False). `steps` (K per frame), `context_signal` and
    `guidance` (action guidance, `dynamics.sampler.next_frame`; for models trained with action
    dropout) default to the world model's `sampling` (`Sampling()` for a bare `Dynamics`)."""
    model = getattr(world_model, "dynamics", world_model)
    sampling = getattr(world_model, "sampling", Sampling()).override(steps, context_signal,
                                                                     guidance)
    steps, context_signal, guidance = sampling.steps, sampling.context_signal, sampling.guidance
    context = jnp.asarray(context)
    batch, frames = context.shape[:2]
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}.")
    capacity, first = cache_window(model, frames, frames + horizon, steps, capacity)
    if actions is None:
        actions = jnp.zeros((batch, frames, *_action_shape(model)),
                            jnp.float32 if model.config.action.kind == "continuous" else jnp.int32)
        has_action = jnp.zeros((batch, frames), bool)
    elif has_action is None:
        has_action = jnp.ones((batch, frames), bool)
    aligned, known = align_actions(jnp.asarray(actions), jnp.asarray(has_action))
    caches = model.init_caches(batch, capacity)
    features, caches = prefill(model, caches, model.normalise(context[:, first:]),
                               aligned[:, first:], known[:, first:], key,
                               jnp.asarray(first, jnp.int32), context_signal=context_signal)
    frame = Frame(jnp.asarray(0, jnp.int32), context[:, -1], features)
    params, static = eqx.partition(policy, eqx.is_array)
    taken, seen = [], []
    for index in range(frames, frames + horizon):
        seen.append(frame)
        action, frame, caches = imagine_step(
            model, params, caches, frame, key, jnp.asarray(index, jnp.int32),
            policy_static=static, steps=steps, context_signal=context_signal, guidance=guidance)
        taken.append(action)
    latents = jnp.stack([f.latents for f in seen[1:]] + [frame.latents], axis=1)
    stacked = jax.tree.map(lambda *x: jnp.stack(x, axis=1 if x[0].ndim else 0), *seen)
    decoded = None
    if decode:
        decoded = world_model.decode(jnp.concatenate([context, latents], axis=1))
    return Imagination(latents, jnp.stack(taken, axis=1), stacked, frame, decoded)


def _action_shape(model: Dynamics) -> tuple[int, ...]:
    spec = model.config.action
    if spec.kind == "continuous":
        return (spec.dim,)
    return () if spec.kind == "discrete" else (len(spec.classes),)


def replay(actions: ArrayLike, offset: int = 0) -> Policy:
    """The policy that takes `actions[:, offset + step]` (dataset convention): with offset =
    context - 1 it replays a clip's own actions after its context."""
    actions = jnp.asarray(actions)
    return lambda frame, key: jax.lax.dynamic_index_in_dim(actions, offset + frame.step, axis=1,
                                                            keepdims=False)
