"""One jitted, state-donating train step shared by every stage.

`TrainState` holds the model, the optax state, the loss's own running state (e.g. the
tokenizer's RMS estimates; any pytree, empty for none), the step and a count of skipped updates.
A step whose loss or gradient is not finite leaves model, optimizer and loss state untouched and
increments `skipped` (the caller decides when too many skips should stop the run).

`rms_normalised` is the loss normalisation of every multi-term loss (tokenizer, agent
finetuning): each term L_k keeps an EMA of L_k^2 (zero start, Adam-style bias correction by
1 - decay^(step + 1), updated with the current batch before use), and the total is
sum_k w_k L_k / sqrt(EMA_k), the divisor a stop-gradient constant: every term then speaks at
about its weight, whatever its raw scale.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree


class TrainState(eqx.Module):
    model: eqx.Module
    opt_state: PyTree
    loss_state: PyTree
    step: Int[Array, ""]
    skipped: Int[Array, ""]


def init_state(model: eqx.Module, optimizer: optax.GradientTransformation,
               loss_state: PyTree = None) -> TrainState:
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(model, opt_state, {} if loss_state is None else loss_state,
                      jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def rms_normalised(terms: dict[str, Float[Array, ""]], rms_sq_old: dict[str, Float[Array, ""]],
                   step: Int[Array, ""], *, decay: float,
                   weights: dict[str, float] | None = None
                   ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """(sum_k w_k L_k / RMS_k, the updated EMAs of L_k^2); weights default to 1."""
    count = (step + 1).astype(jnp.float32)
    rms_sq, total = {}, jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        rms_sq[name] = decay * rms_sq_old[name] + (1 - decay) * jax.lax.stop_gradient(value) ** 2
        unbiased = rms_sq[name] / (1.0 - jnp.power(jnp.float32(decay), count))
        total = total + (weights or {}).get(name, 1.0) * value / jnp.sqrt(unbiased + 1e-12)
    return total, rms_sq


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    static_argnames: tuple[str, ...] = ()) -> Callable:
    """step(state, batch, key, **static) -> (state, metrics), the state donated, with
    `loss_fn(model, loss_state, step, batch, *, key, **static) -> (loss, (metrics, loss_state))`.
    """

    def step(state: TrainState, batch, key, **static):
        grad_fn = eqx.filter_value_and_grad(
            lambda m: loss_fn(m, state.loss_state, state.step, batch, key=key, **static),
            has_aux=True)
        (loss, (metrics, loss_state)), grads = grad_fn(state.model)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes weak and int32 scalars
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old) if eqx.is_array(new) else new
        model = jax.tree.map(keep, model, state.model)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        loss_state = jax.tree.map(keep, loss_state, state.loss_state)
        state = TrainState(model, opt_state, loss_state, state.step + 1,
                           state.skipped + (~finite).astype(jnp.int32))
        return state, {**metrics, "grad_norm": grad_norm, "skipped": state.skipped}

    return jax.jit(step, donate_argnums=0, static_argnames=static_argnames)
