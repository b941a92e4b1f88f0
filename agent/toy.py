"""A 1-D corridor where imagination RL must beat a deliberately bad behaviour-cloned prior: the
check that returns, PMPO and the value loss together improve a policy, with an exact model of the
environment standing in for the world model.

Cells 0..`cells - 1`; each episode starts in cell 1; action 0 moves left (cell 0 is a wall),
action 1 right; reaching the last cell gives reward 1 and ends the episode; at most `horizon`
steps. The demonstrator goes right with probability `demo_right` (0.25: mostly the wrong way), so
a policy cloned from it rarely reaches the goal, while the optimal policy (always right) reaches
it in `cells - 2` steps. Policy and value are tables over cells (the heads of a one-hot feature).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from agent.distributions import Bins, Categorical
from agent.rl import imagination_losses, valid_steps


@dataclasses.dataclass(frozen=True)
class Corridor:
    cells: int = 6
    horizon: int = 16
    demo_right: float = 0.25

    def step(self, cell, action):
        moved = jnp.clip(cell + 2 * action - 1, 0, self.cells - 1)
        reached = moved == self.cells - 1
        return moved, reached.astype(jnp.float32)


class Tables(eqx.Module):
    policy: Float[Array, "cells 2"]
    value: Float[Array, "cells bins"]


def rollout(env: Corridor, policy_logits, batch: int, *, key: PRNGKeyArray):
    """(cells [batch, T + 1], actions [batch, T], rewards [batch, T], continues [batch, T])."""

    def one(carry, key):
        cell = carry
        action = Categorical(policy_logits[cell]).sample(key)
        moved, reward = env.step(cell, action)
        return moved, (cell, action, reward, 1.0 - reward)

    start = jnp.ones((batch,), jnp.int32)
    last, (cells, actions, rewards, continues) = jax.lax.scan(
        one, start, jax.random.split(key, env.horizon))
    cells = jnp.concatenate([cells, last[None]], axis=0)
    return tuple(jnp.moveaxis(x, 0, 1) for x in (cells, actions, rewards, continues))


def success_rate(env: Corridor, policy_logits, episodes: int, *, key: PRNGKeyArray) -> float:
    _, _, rewards, _ = rollout(env, policy_logits, episodes, key=key)
    return float(jnp.mean(jnp.max(rewards, axis=1)))


def behaviour_cloning(env: Corridor, demos: int, steps: int, *, key: PRNGKeyArray
                      ) -> Float[Array, "cells 2"]:
    """Policy logits fitted by maximum likelihood (Adam) to the demonstrator's episodes."""
    demo = jnp.log(jnp.array([1.0 - env.demo_right, env.demo_right]))
    cells, actions, _, continues = rollout(env, jnp.broadcast_to(demo, (env.cells, 2)), demos,
                                           key=key)
    valid = valid_steps(continues) > 0

    def loss(logits, key):
        del key
        nll = -Categorical(logits[cells[:, :-1]]).log_prob(actions)
        return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid).astype(jnp.float32), {}

    logits, _ = fit(loss, jnp.zeros((env.cells, 2)), steps, lr=0.1, key=key)
    return logits


def imagination_rl(env: Corridor, prior: Float[Array, "cells 2"], iterations: int, *,
                   key: PRNGKeyArray, batch: int = 64, lr: float = 0.05, bins: Bins | None = None,
                   **loss_settings) -> tuple[Tables, list[dict]]:
    """PMPO from the prior (the policy starts as the prior, which stays frozen); returns the
    trained tables and the metrics per iteration."""
    bins = bins or Bins()

    def loss(tables: Tables, key):
        cells, actions, rewards, continues = rollout(
            env, jax.lax.stop_gradient(tables.policy), batch, key=key)
        policy = Categorical(tables.policy[cells[:, :-1]])
        prior_here = Categorical(prior[cells[:, :-1]])
        policy_loss, value_loss, metrics = imagination_losses(
            log_prob=policy.log_prob(actions), kl_to_prior=policy.kl(prior_here),
            entropy=policy.entropy(), value_logits=tables.value[cells], rewards=rewards,
            continues=continues, bins=bins, **loss_settings)
        return policy_loss + value_loss, metrics

    return fit(loss, Tables(prior, jnp.zeros((env.cells, bins.count))), iterations, lr=lr,
               key=key)


def fit(loss, params, steps: int, *, lr: float, key: PRNGKeyArray):
    """`steps` Adam steps on `loss(params, key) -> (scalar, metrics)`; (params, metrics list)."""
    optimizer = optax.adam(lr)

    @jax.jit
    def update(params, state, key):
        grads, metrics = jax.grad(loss, has_aux=True)(params, key)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes weak and int32 scalars
            updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, metrics

    state, history = optimizer.init(params), []
    for i in range(steps):
        params, state, metrics = update(params, state, jax.random.fold_in(key, i))
        history.append({k: float(v) for k, v in metrics.items()})
    return params, history
