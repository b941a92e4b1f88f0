"""Imagination RL's objectives: TD(lambda) returns, the PMPO policy loss, and the value loss.

Time convention of a rollout of T steps: state s_t is what the policy sees at step t
(t = 0..T); action a_t is chosen at s_t and leads to s_{t+1}; `rewards[t]` is the reward of that
transition and `continues[t]` is 0 where it ends the episode (1 otherwise); `values[t]` = v(s_t)
for t = 0..T, the last one bootstrapping the tail. The lambda-return is

    R_T = v_T,    R_t = r_t + gamma c_t ((1 - lambda) v_{t+1} + lambda R_{t+1}),

so lambda = 0 is the one-step TD target and lambda = 1 the discounted sum of rewards plus the
discounted last value.

PMPO (policy optimisation on the sign of the advantage A = R - v, no return or advantage
normalisation): with P = {A > 0} and N = {A < 0} among the valid steps,

    L = (1 - alpha) mean_N log pi(a) - alpha mean_P log pi(a) + beta mean KL[pi || pi_prior],

which raises the probability of actions that did better than expected, lowers it for worse ones
with equal say for each set whatever their sizes, and holds the policy near the behaviour-cloned
prior by the reverse KL.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def lambda_returns(rewards: Float[Array, "*batch time"], values: Float[Array, "*batch time1"],
                   continues: Float[Array, "*batch time"], *, gamma: float = 0.997,
                   lam: float = 0.95) -> Float[Array, "*batch time"]:
    """R_0..R_{T-1} of the recursion above; `values` has one more step than `rewards`."""
    if values.shape[-1] != rewards.shape[-1] + 1:
        raise ValueError(f"values need one step more than rewards (v_T bootstraps), got "
                         f"{values.shape[-1]} and {rewards.shape[-1]}.")

    def back(next_return, step):
        reward, cont, next_value = step
        ret = reward + gamma * cont * ((1.0 - lam) * next_value + lam * next_return)
        return ret, ret

    time_first = lambda x: jnp.moveaxis(x, -1, 0)
    _, returns = jax.lax.scan(
        back, values[..., -1],
        (time_first(rewards), time_first(continues), time_first(values[..., 1:])), reverse=True)
    return jnp.moveaxis(returns, 0, -1)


def _masked_mean(x, where):
    count = jnp.maximum(jnp.sum(where), 1).astype(x.dtype)
    return jnp.sum(jnp.where(where, x, 0.0)) / count


def pmpo_loss(log_prob: Float[Array, "*steps"], advantage: Float[Array, "*steps"],
              kl_to_prior: Float[Array, "*steps"], valid: Bool[Array, "*steps"] | None = None, *,
              alpha: float = 0.5, beta: float = 0.3
              ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """(loss, metrics) of PMPO; `advantage` is treated as a constant (stop-gradient inside).
    Steps with `valid` False (e.g. after an episode ended) take no part."""
    valid = jnp.ones(log_prob.shape, bool) if valid is None else valid
    advantage = jax.lax.stop_gradient(advantage)
    positive, negative = valid & (advantage > 0), valid & (advantage < 0)
    loss = ((1.0 - alpha) * _masked_mean(log_prob, negative)
            - alpha * _masked_mean(log_prob, positive)
            + beta * _masked_mean(kl_to_prior, valid))
    metrics = {"policy_loss": loss, "kl_to_prior": _masked_mean(kl_to_prior, valid),
               "positive_fraction": (jnp.sum(positive) / jnp.maximum(jnp.sum(valid), 1)
                                     ).astype(jnp.float32)}
    return loss, metrics
