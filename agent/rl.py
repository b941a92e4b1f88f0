"""The losses of one imagination-RL update, given a rollout already annotated by the heads.

A rollout of T steps (the convention of `agent.objectives`): `value_logits` [*, T + 1, bins] for
s_0..s_T, `rewards` [*, T] predicted for (s_t, a_t) (decoded scalars), `continues` [*, T], and the
policy's `log_prob` [*, T] of the taken actions, its `kl_to_prior` [*, T] and `entropy` [*, T].
Steps after an episode's end (a zero continue earlier in the rollout) are masked out of every
loss. Values are decoded by the mean, and the lambda-returns, the advantages and the value
targets carry no gradient: the policy loss moves the policy alone and the value loss the value
alone.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from agent.distributions import Bins
from agent.objectives import lambda_returns, pmpo_loss


def valid_steps(continues: Float[Array, "*batch time"]) -> Float[Array, "*batch time"]:
    """1 for the steps taken before any episode end (the step that ends it included)."""
    alive = jnp.cumprod(continues, axis=-1)
    return jnp.concatenate([jnp.ones_like(alive[..., :1]), alive[..., :-1]], axis=-1)


def imagination_losses(
    *,
    log_prob: Float[Array, "*batch time"],
    kl_to_prior: Float[Array, "*batch time"],
    entropy: Float[Array, "*batch time"],
    value_logits: Float[Array, "*batch time1 bins"],
    rewards: Float[Array, "*batch time"],
    continues: Float[Array, "*batch time"],
    bins: Bins,
    gamma: float = 0.997,
    lam: float = 0.95,
    alpha: float = 0.5,
    beta: float = 0.3,
) -> tuple[Float[Array, ""], Float[Array, ""], dict[str, Float[Array, ""]]]:
    """(policy loss, value loss, metrics)."""
    values = jax.lax.stop_gradient(bins.decode(value_logits))
    returns = lambda_returns(rewards, values, continues, gamma=gamma, lam=lam)
    advantage = returns - values[..., :-1]
    valid = valid_steps(continues) > 0
    policy_loss, metrics = pmpo_loss(log_prob, advantage, kl_to_prior, valid, alpha=alpha,
                                     beta=beta)
    target = bins.two_hot(jax.lax.stop_gradient(returns))
    per_step = bins.cross_entropy(value_logits[..., :-1, :], target)
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    value_loss = jnp.sum(jnp.where(valid, per_step, 0.0)) / count
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / count
    metrics |= {"value_loss": value_loss, "value_error": mean(jnp.abs(values[..., :-1] - returns)),
                "imagined_return": jnp.mean(returns[..., 0]), "entropy": mean(entropy)}
    return policy_loss, value_loss, metrics
