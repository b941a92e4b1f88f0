"""Phase 3, imagination RL: the transformer frozen, the policy and value heads trained on rollouts
the world model imagines with the policy acting.

1. `imagine_with_policy`: from dataset contexts, `world.imagine` generates `horizon` frames with
   `AgentPolicy` sampling every action from the policy head on the frame's agent-token features
   (no gradient flows through the rollout). It keeps the features each action was chosen from
   and those of the last frame: H + 1 feature sets per rollout.
2. `rl_loss`: the heads are applied again to those stored features, now with gradients: the
   log-probability of the taken actions and the reverse KL to the frozen behaviour-cloned prior
   for PMPO, values for all H + 1 states; the rewards come from the reward head given the taken
   actions, decoded by the mode of the two-hot distribution by default (the mean spreads spurious
   mass over bins far from the reward; `RLSettings.reward_decode` "mean" reads it anyway, for
   rewards so rare that the mode is always 0) and held constant. Imagined rollouts have no
   episode ends (continues 1). Only the policy head receives gradients, and the value head with
   `RLSettings.train_value` (by default it keeps the value finetuning fitted to the data).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from agent.heads import AgentHeads
from agent.rl import imagination_losses
from dynamics import Dynamics
from world.imagine import Frame, imagine


class AgentPolicy(eqx.Module):
    """A `world.imagine` policy: samples (or, `greedy`, takes the mode of) the policy head's
    distribution on the frame's agent-token features."""

    heads: AgentHeads
    greedy: bool = eqx.field(static=True, default=False)

    def __call__(self, frame: Frame, key: PRNGKeyArray) -> Array:
        dist = self.heads.act(frame.features["agent"])
        return dist.mode() if self.greedy else dist.sample(key)


class Rollout(eqx.Module):
    """What `rl_loss` reads: agent features of states 0..H and the H actions taken."""

    features: Float[Array, "batch horizon1 tokens width"]
    actions: Array


def imagine_with_policy(dynamics: Dynamics, heads: AgentHeads, context, horizon: int, *,
                        key: PRNGKeyArray, actions=None, has_action=None, steps: int = 4,
                        capacity: int | None = None, greedy: bool = False,
                        context_signal: float = 0.9, guidance: float = 1.0) -> Rollout:
    """`horizon` imagined steps after `context` (tokenizer latents [batch, C, latents, dim], with
    their own `actions` in the dataset convention when known), sampled with K = `steps`,
    `context_signal` and action `guidance` (`world.imagine`)."""
    if dynamics.config.agent_tokens < 1:
        raise ValueError("imagination RL needs a dynamics model with agent tokens "
                         "(dynamics.agent_tokens >= 1).")
    out = imagine(dynamics, AgentPolicy(heads, greedy), context, horizon, key=key,
                  actions=actions, has_action=has_action, steps=steps, capacity=capacity,
                  context_signal=context_signal, guidance=guidance)
    features = jnp.concatenate([out.seen.features["agent"], out.last.features["agent"][:, None]],
                               axis=1)
    return Rollout(jax.lax.stop_gradient(features), out.actions)


@dataclasses.dataclass(frozen=True)
class RLSettings:
    gamma: float = 0.997
    lam: float = 0.95
    alpha: float = 0.5
    beta: float = 0.3
    reward_decode: str = "mode"  # or "mean" (`Bins.decode`)
    # False: the value head stays as finetuning fitted it to the data; True: it also learns the
    # imagined lambda-returns (which rewards too rare for the reward head drive to 0).
    train_value: bool = False


def rl_loss(heads: AgentHeads, prior: AgentHeads, rollout: Rollout,
            settings: RLSettings | None = None
            ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """(PMPO policy loss + value loss, metrics) on an imagined rollout; `prior` is frozen."""
    settings = settings or RLSettings()
    bins = heads.config.bins
    now = rollout.features[:, :-1]
    dist = heads.act(now)
    prior_dist = jax.lax.stop_gradient(prior).act(now)
    reward_logits = heads.reward_logits(now, rollout.actions)[..., 0, :]
    rewards = jax.lax.stop_gradient(bins.decode(reward_logits, how=settings.reward_decode))
    policy_loss, value_loss, metrics = imagination_losses(
        log_prob=dist.log_prob(rollout.actions), kl_to_prior=dist.kl(prior_dist),
        entropy=dist.entropy(), value_logits=heads.value_logits(rollout.features),
        rewards=rewards, continues=jnp.ones_like(rewards), bins=bins, gamma=settings.gamma,
        lam=settings.lam, alpha=settings.alpha, beta=settings.beta)
    if not settings.train_value:
        value_loss = jnp.zeros_like(value_loss)
    return policy_loss + value_loss, metrics | {"imagined_reward": jnp.mean(rewards)}
