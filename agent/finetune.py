"""Phase 2, agent finetuning: behaviour cloning and reward prediction from the agent tokens, while
the dynamics loss keeps running on the same noisy inputs.

One forward pass of the dynamics model (with agent tokens) on the shortcut objective's noisy
latents gives the video loss and the agent-token features; the heads read those features:
- "bc": -log pi(a_{t+n} | h_t) for n = 0..mtp-1, over the steps whose action is known and
  inside the clip;
- "reward" (when the batch has rewards): the two-hot cross-entropy of r_{t+n} given h_t and the
  action a_t taken there, over the steps whose reward is known;
- "value" (when the batch has rewards and `value_from_data`): the two-hot cross-entropy of v(s_t)
  against the data's returns: the discounted return-to-go of the whole episode where the data
  says how it ended (`returns_to_go`, given to the batch as `returns`), else the window's
  lambda-returns bootstrapped by the value head itself (`data_value_targets`). This is the value
  of the policy that recorded the data, the critic imagination RL keeps by default.
Each term is RMS-normalised (`core.training.rms_normalised`): behaviour cloning's raw loss can
start three orders of magnitude above the video loss and would otherwise swamp the world model.

Batch (dataset convention, as the dynamics loader reads it): `latents` [b, t, latents, dim],
`actions` [b, t, ...] (`actions[t]` taken after frame t), `has_action` [b, t], and optionally
`rewards` [b, t] (`rewards[t]` earned by `actions[t]`; the loader gives them when the data has
them) with `has_reward` [b, t] (default: every reward known), and `continues` [b, t] (0 on the
frame whose action ended the episode; default: no episode ends in the batch), and `returns`
[b, t] (`returns_to_go`; NaN where unknown).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from agent.heads import AgentHeads, policy_distribution
from agent.objectives import lambda_returns
from core.training import rms_normalised
from dynamics import Dynamics, align_actions
from dynamics.objectives import dynamics_loss

TERMS = ("dynamics", "bc", "reward", "value")


class Agent(eqx.Module):
    """What finetuning trains: the dynamics model (with agent tokens) and the heads."""

    dynamics: Dynamics
    heads: AgentHeads


def ahead(x: Array, known: Bool[Array, "batch time"], steps: int
          ) -> tuple[Array, Bool[Array, "batch time steps"]]:
    """(x[:, t + n] for n < steps, stacked on axis 2; known there and inside the clip)."""
    time = known.shape[1]
    pad = lambda a: jnp.concatenate([a, jnp.zeros((a.shape[0], steps - 1, *a.shape[2:]),
                                                  a.dtype)], axis=1)
    x, known = pad(x), pad(known)
    take = lambda a: jnp.stack([a[:, n:n + time] for n in range(steps)], axis=2)
    return take(x), take(known)


def returns_to_go(rewards: np.ndarray, continues: np.ndarray, clips: Sequence[tuple[str, int]], *,
                  gamma: float) -> np.ndarray:
    """float32 [N, L]: for frame t of each clip, G_t = sum_k gamma^k r_{t+k} over the rest of
    its episode, up to the frame where the episode ended (continues 0); NaN where that is not
    known: episodes that were cut off (no 0 on their last frame) and frames before a gap no clip
    covers. `rewards` / `continues` [N, L] per clip, `clips` the (episode, start) of each."""
    length = rewards.shape[1]
    episodes: dict[str, list[int]] = {}
    for i, (episode, _) in enumerate(clips):
        episodes.setdefault(episode, []).append(i)
    out = np.full(rewards.shape, np.nan, np.float32)
    for rows in episodes.values():
        end = max(clips[i][1] for i in rows) + length
        reward, cont = np.zeros(end), np.ones(end)
        seen = np.zeros(end, bool)
        for i in rows:
            start = clips[i][1]
            reward[start:start + length], cont[start:start + length] = rewards[i], continues[i]
            seen[start:start + length] = True
        value, known, g = np.full(end, np.nan), cont[-1] == 0, 0.0
        for t in range(end - 1, -1, -1):
            known = known and seen[t]
            g = reward[t] + gamma * cont[t] * g
            value[t] = g if known else np.nan
        for i in rows:
            out[i] = value[clips[i][1]:clips[i][1] + length]
    return out


def data_value_targets(rewards: Float[Array, "batch time"], continues: Float[Array, "batch time"],
                       values: Float[Array, "batch time"], *, gamma: float, lam: float
                       ) -> tuple[Float[Array, "batch time"], Bool[Array, "batch time"]]:
    """(targets, has_target) for v(s_t) on a window of recorded data: the lambda-returns of the
    window's rewards (`agent.objectives.lambda_returns`), bootstrapped at its last frame by
    `values` there, or by that frame's reward where the episode ended on it (continues 0: its
    value is exactly that reward). Windows lie inside one episode, so only the last frame can end
    one; it has a target only when it does (otherwise its target would need the frame after)."""
    ended = continues[:, -1] == 0
    last = jnp.where(ended, rewards[:, -1], values[:, -1])
    returns = lambda_returns(rewards[:, :-1], jnp.concatenate([values[:, :-1], last[:, None]], 1),
                             continues[:, :-1], gamma=gamma, lam=lam)
    has_target = jnp.concatenate([jnp.ones(returns.shape, bool), ended[:, None]], axis=1)
    return jnp.concatenate([returns, last[:, None]], axis=1), has_target


def finetune_loss(agent: Agent, rms_sq_old, step, batch: dict, *, key: PRNGKeyArray,
                  bootstrap_rows: int = 0, decay: float = 0.99, value_from_data: bool = False,
                  gamma: float = 0.997, lam: float = 0.95, context_rows: int = 0,
                  context_signal: float = 0.9, twin_signal: float = 0.0,
                  noise_fraction: float = 0.0):
    """(normalised total, (metrics, updated EMAs of the squared terms)): the loss contract of
    `core.training.make_train_step`; the loss state is `{term: 0.0}` per term of `TERMS`.
    `gamma` and `lam` are the value targets' discount and lambda (imagination RL's). With
    `context_rows` > 0 the last that many rows have every frame at the context signal level
    (`dynamics_loss`), as the frames a policy acts on, and the agent terms read those rows only;
    the video loss reads every row. `twin_signal` and `noise_fraction` are the main run's
    dynamics objective settings (`dynamics_loss`), so finetuning keeps training the world model
    as it was trained; with twins the agent terms read the twins' features (`ContextTwins`: each
    frame as committed context, what a policy acting through `prefill` reads)."""
    heads, config = agent.heads, agent.heads.config
    aligned, known = align_actions(batch["actions"], batch["has_action"])
    video, metrics, features = dynamics_loss(
        agent.dynamics, batch["latents"], aligned, known, key=key, bootstrap_rows=bootstrap_rows,
        image_fraction=0.0, with_features=True, context_rows=context_rows,
        context_signal=context_signal, twin_signal=twin_signal, noise_fraction=noise_fraction)
    if context_rows:
        batch = {name: value[-context_rows:] for name, value in batch.items()}
    h = features["agent"][-context_rows:] if context_rows else features["agent"]
    targets, valid = ahead(batch["actions"], batch["has_action"], config.mtp)
    logits = heads.policy_logits(h)
    nll = jnp.stack([-policy_distribution(config, logits[:, :, n]).log_prob(targets[:, :, n])
                     for n in range(config.mtp)], axis=2)
    terms = {"dynamics": video, "bc": _mean(nll, valid)}
    if "rewards" in batch:
        known_reward = batch.get("has_reward", jnp.ones(batch["rewards"].shape, bool))
        rewards, has_reward = ahead(batch["rewards"], known_reward, config.mtp)
        reward_logits = heads.reward_logits(h, batch["actions"])
        ce = config.bins.cross_entropy(reward_logits, config.bins.two_hot(rewards))
        terms["reward"] = _mean(ce, has_reward & batch["has_action"][:, :, None])
    else:
        terms["reward"] = jnp.zeros((), jnp.float32)
    terms["value"] = jnp.zeros((), jnp.float32)
    if "rewards" in batch and value_from_data:
        value_logits = heads.value_logits(h)
        values = jax.lax.stop_gradient(config.bins.decode(value_logits))
        continues = batch.get("continues", jnp.ones(batch["rewards"].shape, jnp.float32))
        targets, has_target = data_value_targets(batch["rewards"], continues, values,
                                                 gamma=gamma, lam=lam)
        if "returns" in batch:  # the episode's own return where known, else the window's
            known = ~jnp.isnan(batch["returns"])
            targets = jnp.where(known, batch["returns"], targets)
            has_target = has_target | known
        ce = config.bins.cross_entropy(value_logits, config.bins.two_hot(targets))
        terms["value"] = _mean(ce, has_target)
    total, rms_sq = rms_normalised(terms, rms_sq_old, step, decay=decay)
    metrics = metrics | {f"{name}_loss": value for name, value in terms.items()} | {"loss": total}
    return total, (metrics, rms_sq)


def _mean(x: Float[Array, "*shape"], where: Bool[Array, "*shape"]) -> Float[Array, ""]:
    count = jnp.maximum(jnp.sum(where), 1).astype(jnp.float32)
    return jnp.sum(jnp.where(where, x, 0.0)) / count
