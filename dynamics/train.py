"""The dynamics model's loss over dataset batches and its train step, written once for the main
job, the benchmarks, the objective comparison and the tests.

A batch is what the loader reads from latent shards: a dict with `latents` (tokenizer latents
[batch, time, latents, dim]), `actions` in the dataset convention (`actions[t]` is taken after
frame t) and `has_action` bool [batch, time]. `batch_loss` aligns the actions to the model's
convention (`align_actions`) and returns `dynamics_loss` in the loss contract of
`core.training.make_train_step`; `bootstrap_rows` (the rows of the batch that train the
shortcut's bootstrap targets) is a static argument of the step, so each value compiles once.
"""

import functools
from collections.abc import Callable

import optax
from jaxtyping import Array, Float, PRNGKeyArray

from core.training import make_train_step as make_step
from dynamics.actions import align_actions
from dynamics.model import Dynamics
from dynamics.objectives import dynamics_loss


def batch_loss(model: Dynamics, loss_state, step, batch: dict, *,
               key: PRNGKeyArray, bootstrap_rows: int = 0, objective: str = "shortcut",
               mean_fraction: float = 0.25, image_fraction: float = 0.3,
               action_dropout: float = 0.0, context_fraction: float = 0.0,
               noise_fraction: float = 0.0, twin_signal: float = 0.0
               ) -> tuple[Float[Array, ""], tuple[dict[str, Float[Array, ""]], object]]:
    """(loss, (metrics, loss_state)) of `dynamics_loss` on a dataset batch (loss_state passes
    through unchanged; the step number is not used)."""
    del step
    actions, has_action = align_actions(batch["actions"], batch["has_action"])
    loss, metrics = dynamics_loss(model, batch["latents"], actions, has_action, key=key,
                                  objective=objective, bootstrap_rows=bootstrap_rows,
                                  mean_fraction=mean_fraction, image_fraction=image_fraction,
                                  action_dropout=action_dropout,
                                  context_fraction=context_fraction,
                                  noise_fraction=noise_fraction, twin_signal=twin_signal)
    return loss, (metrics, loss_state)


def loss_fn(*, objective: str = "shortcut", mean_fraction: float = 0.25,
            image_fraction: float = 0.3, action_dropout: float = 0.0,
            context_fraction: float = 0.0, noise_fraction: float = 0.0,
            twin_signal: float = 0.0) -> Callable:
    """`batch_loss` with the objective's settings fixed: the loss the train step takes."""
    return functools.partial(batch_loss, objective=objective, mean_fraction=mean_fraction,
                             image_fraction=image_fraction, action_dropout=action_dropout,
                             context_fraction=context_fraction,
                             noise_fraction=noise_fraction, twin_signal=twin_signal)


def make_train_step(optimizer: optax.GradientTransformation, loss: Callable | None = None
                    ) -> Callable:
    """step(state, batch, key, *, bootstrap_rows) -> (state, metrics): the jitted,
    state-donating train step (core.training) of `loss` (default `loss_fn()`)."""
    return make_step(loss or loss_fn(), optimizer, static_argnames=("bootstrap_rows",))
