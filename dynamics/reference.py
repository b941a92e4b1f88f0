"""A plain reference for the dynamics model: how much of the next frame the latents carry.

`NextLatentMLP` guesses frame t's latents as z[t - 1] + MLP(z[t - 2], z[t - 1], the actions
leading to frames t - 1 and t), with two GELU hidden layers. `fit` trains it with Adam on the
mean squared error over every (t - 2, t - 1, t) triple of true training latents: no noise, no
diffusion, one deterministic guess. `launch.diagnose --reference_steps=N` compares it
teacher-forced with the dynamics model: where the reference beats copying the previous frame by
far more than the dynamics model does, the latents hold the motion (carried on from the last two
frames, or the action's effect) and the dynamics model has not learned to read it.

Actions in the model convention (`dynamics.actions.align_actions`: `actions[t]` leads to frame t);
continuous ones enter as they are, discrete and multi-part ones one-hot per part, and a frame
without an action as zeros with its "has action" input at 0.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from dynamics.actions import ActionSpec

HISTORY = 2  # frames t - 2 and t - 1


def action_features(actions: Array | np.ndarray, has_action: Bool[Array | np.ndarray, "*batch"],
                    spec: ActionSpec
                    ) -> Float[Array, "*batch features"]:
    """Per-frame action inputs: the values (continuous) or one-hot parts, then `has_action`."""
    has = has_action.astype(jnp.float32)[..., None]
    if spec.kind == "continuous":
        values = jnp.asarray(actions, jnp.float32).reshape(*has_action.shape, spec.dim)
    else:
        parts = jnp.asarray(actions).reshape(*has_action.shape, len(spec.classes))
        values = jnp.concatenate([jax.nn.one_hot(parts[..., i], n)
                                  for i, n in enumerate(spec.classes)], axis=-1)
    return jnp.concatenate([values * has, has], axis=-1)


class NextLatentMLP(eqx.Module):
    """z[t] = z[t - 1] + MLP(z[t - 2], z[t - 1], action features of frames t - 1 and t)."""

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, latent_size: int, feature_size: int, *, hidden: int = 1024,
                 key: PRNGKeyArray):
        sizes = [HISTORY * (latent_size + feature_size), hidden, hidden, latent_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k)
                            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True))

    def __call__(self, history: Float[Array, "batch 2 latents dim"],
                 features: Float[Array, "batch 2 features"]
                 ) -> Float[Array, "batch latents dim"]:
        batch = history.shape[0]
        h = jnp.concatenate([history.reshape(batch, -1), features.reshape(batch, -1)], axis=-1)
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(jax.vmap(layer)(h))
        step = jax.vmap(self.layers[-1])(h)
        return history[:, -1] + step.reshape(history[:, -1].shape)


def triples(latents: Float[Array | np.ndarray, "clips time latents dim"],
            features: Float[Array | np.ndarray, "clips time features"], t: int):
    """(history [clips, 2, ...], features [clips, 2, F], target [clips, ...]) for frame t."""
    return latents[:, t - HISTORY:t], features[:, t - HISTORY + 1:t + 1], latents[:, t]


def fit(latents: Float[np.ndarray, "clips time latents dim"], actions: np.ndarray,
        has_action: Bool[np.ndarray, "clips time"], spec: ActionSpec, *, steps: int,
        key: PRNGKeyArray, batch: int = 256, lr: float = 1e-3, hidden: int = 1024,
        progress: Callable[[int, float], None] | None = None) -> NextLatentMLP:
    """The reference trained on every triple of the clips (model-convention actions) for
    `steps` Adam steps at `lr`; `progress(step, loss)` every steps // 5."""
    time = has_action.shape[1]
    if time <= HISTORY:
        raise ValueError(f"the reference needs clips of more than {HISTORY} frames, got {time}.")
    features = np.asarray(action_features(jnp.asarray(actions), jnp.asarray(has_action), spec))
    latents = np.asarray(latents, np.float32)
    rows = [triples(latents, features, t) for t in range(HISTORY, time)]
    history, feats, target = (np.concatenate(part) for part in zip(*rows, strict=True))
    k_init, k_rows = jax.random.split(key)
    model = NextLatentMLP(math.prod(latents.shape[2:]), features.shape[-1], hidden=hidden,
                          key=k_init)
    optimizer = optax.adam(lr)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, history, feats, target):
        loss, grads = eqx.filter_value_and_grad(
            lambda m: jnp.mean(jnp.square(m(history, feats) - target)))(model)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes weak and int32 scalars
            updates, state = optimizer.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    picks = np.asarray(jax.random.randint(k_rows, (steps, batch), 0, len(target)))
    for i in range(steps):
        model, state, loss = step(model, state, history[picks[i]], feats[picks[i]],
                                  target[picks[i]])
        if progress is not None and (i + 1) % max(steps // 5, 1) == 0:
            progress(i + 1, float(loss))
    return model


def one_step(model: NextLatentMLP, latents: Float[Array | np.ndarray, "clips time latents dim"],
             actions: Array | np.ndarray, has_action: Bool[Array | np.ndarray, "clips time"],
             spec: ActionSpec, *,
             context: int) -> Float[Array, "clips horizon latents dim"]:
    """Teacher-forced guesses of frames context .. time - 1 from the true latents before them."""
    features = action_features(jnp.asarray(actions), jnp.asarray(has_action), spec)
    latents = jnp.asarray(latents)
    guesses = [model(*triples(latents, features, t)[:2]) for t in range(context, latents.shape[1])]
    return jnp.stack(guesses, axis=1)


def rollout(model: NextLatentMLP, latents: Float[Array | np.ndarray, "clips time latents dim"],
            actions: Array | np.ndarray, has_action: Bool[Array | np.ndarray, "clips time"],
            spec: ActionSpec, *, context: int) -> Float[Array, "clips horizon latents dim"]:
    """Autoregressive guesses of frames context .. time - 1: from the true latents of the first
    `context` frames, each guess becomes the history of the next (the actions are all given)."""
    if context < HISTORY:
        raise ValueError(f"the reference rollout needs at least {HISTORY} context frames, "
                         f"got {context}.")
    features = action_features(jnp.asarray(actions), jnp.asarray(has_action), spec)
    history = jnp.asarray(latents)[:, context - HISTORY:context]
    guesses = []
    for t in range(context, features.shape[1]):
        guess = model(history, features[:, t - HISTORY + 1:t + 1])
        guesses.append(guess)
        history = jnp.concatenate([history[:, 1:], guess[:, None]], axis=1)
    return jnp.stack(guesses, axis=1)
