"""The heads that read the dynamics model's agent tokens: policy, reward and value.

Input: the agent-token features of a frame, [*batch, agent_tokens, width] (the `agent` group of
`Dynamics` features), flattened per frame. Each head is a small MLP (RMSNorm, Linear, SiLU,
Linear). Multi-token prediction: the policy and the reward heads predict `mtp` steps at once
from the features h_t of frame t: a_{t+n} and r_{t+n} for n = 0..mtp-1 (offset 0 is what acts and
what imagination RL reads; the others only shape the features during finetuning). The reward of
step t is predicted given the action a_t taken there (a reward depends on the action that earns
it), encoded as one-hots (discrete parts) or box-scaled values (continuous). The value head
predicts v(s_t) alone. Rewards and values are logits over `Bins` (two-hot in symlog space).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from agent.distributions import Binned, Bins, Categorical, Multipart
from core import Linear, RMSNorm
from core.layers import expand_to
from dynamics.actions import ActionSpec
from world.model import config_to_json
from world.serialise import load_module, read_header, save_module

KIND = "agent_heads"  # the kind of model folder the heads are saved as (world/serialise.py)


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """`action_low` / `action_high`: the box of continuous actions (one value per dimension)."""

    action: ActionSpec
    agent_tokens: int
    width: int
    hidden: int = 256
    mtp: int = 8
    action_bins: int = 21
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    bins: Bins = dataclasses.field(default_factory=Bins)

    def __post_init__(self):
        if self.agent_tokens < 1 or self.mtp < 1:
            raise ValueError(f"agent heads need agent_tokens >= 1 and mtp >= 1, got "
                             f"{self.agent_tokens} and {self.mtp}.")
        if self.action.kind == "continuous":
            box = (len(self.action_low), len(self.action_high))
            if box != (self.action.dim,) * 2 or not all(
                    h > lo for lo, h in zip(self.action_low, self.action_high, strict=True)):
                raise ValueError(f"continuous actions need action_low < action_high, one value "
                                 f"per dimension ({self.action.dim}); got {self.action_low} / "
                                 f"{self.action_high}.")

    @property
    def policy_logits(self) -> int:
        """Logits per predicted action."""
        if self.action.kind == "continuous":
            return self.action.dim * self.action_bins
        return sum(self.action.classes)

    @property
    def action_code(self) -> int:
        """Width of the action encoding the reward head reads."""
        return self.action.dim if self.action.kind == "continuous" else sum(self.action.classes)


def policy_distribution(config: HeadsConfig, logits: Float[Array, "*batch n"]):
    """The policy distribution of one predicted action from its flat logits."""
    spec = config.action
    if spec.kind == "continuous":
        return Binned(logits.reshape(*logits.shape[:-1], spec.dim, config.action_bins),
                      low=config.action_low, high=config.action_high)
    if spec.kind == "discrete":
        return Categorical(logits)
    starts = [sum(spec.classes[:p]) for p in range(len(spec.classes))]
    return Multipart(tuple(Categorical(logits[..., s:s + n])
                           for s, n in zip(starts, spec.classes, strict=True)))


def encode_action(config: HeadsConfig, action) -> Float[Array, "*batch code"]:
    """One-hot per discrete part; continuous actions scaled from their box to [-1, 1]."""
    spec = config.action
    if spec.kind == "continuous":
        low, high = (expand_to(jnp.asarray(v, jnp.float32), action.ndim)
                     for v in (config.action_low, config.action_high))
        return 2.0 * (action.astype(jnp.float32) - low) / (high - low) - 1.0
    parts = action[..., None] if spec.kind == "discrete" else action
    return jnp.concatenate([jax.nn.one_hot(parts[..., p], n)
                            for p, n in enumerate(spec.classes)], axis=-1)


class MLP(eqx.Module):
    norm: RMSNorm
    hidden: Linear
    out: Linear

    def __init__(self, d_in: int, hidden: int, d_out: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm = RMSNorm(d_in)
        self.hidden = Linear(d_in, hidden, use_bias=True, key=k1)
        self.out = Linear(hidden, d_out, use_bias=True, init_scale=0.0, key=k2)

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        return self.out(jax.nn.silu(self.hidden(self.norm(x))))


class AgentHeads(eqx.Module):
    """Policy, reward and value heads over agent-token features. The output layers start at zero:
    a uniform policy, and reward and value logits that decode to 0."""

    policy: MLP
    reward: MLP
    value: MLP
    config: HeadsConfig = eqx.field(static=True)

    def __init__(self, config: HeadsConfig, *, key: PRNGKeyArray):
        kp, kr, kv = jax.random.split(key, 3)
        d_in, n = config.agent_tokens * config.width, config.bins.count
        self.policy = MLP(d_in, config.hidden, config.mtp * config.policy_logits, key=kp)
        self.reward = MLP(d_in + config.action_code, config.hidden, config.mtp * n, key=kr)
        self.value = MLP(d_in, config.hidden, n, key=kv)
        self.config = config

    @staticmethod
    def _flat(features):
        return features.reshape(*features.shape[:-2], -1)

    def policy_logits(self, features: Float[Array, "*batch tokens width"]
                      ) -> Float[Array, "*batch mtp n"]:
        out = self.policy(self._flat(features))
        return out.reshape(*out.shape[:-1], self.config.mtp, self.config.policy_logits)

    def act(self, features: Float[Array, "*batch tokens width"], offset: int = 0):
        """The policy distribution over the action at step t + offset."""
        return policy_distribution(self.config, self.policy_logits(features)[..., offset, :])

    def reward_logits(self, features: Float[Array, "*batch tokens width"], action
                      ) -> Float[Array, "*batch mtp bins"]:
        x = jnp.concatenate([self._flat(features), encode_action(self.config, action)], axis=-1)
        out = self.reward(x)
        return out.reshape(*out.shape[:-1], self.config.mtp, self.config.bins.count)

    def value_logits(self, features: Float[Array, "*batch tokens width"]
                     ) -> Float[Array, "*batch bins"]:
        return self.value(self._flat(features))


def save_heads(folder: str, heads: AgentHeads, *, step: int) -> None:
    """A self-describing model folder (header with the `HeadsConfig`, named weights)."""
    save_module(folder, heads, kind=KIND, config=config_to_json(heads.config), step=step)


def load_heads(folder: str) -> AgentHeads:
    fields = dict(read_header(folder, kind=KIND)["config"])
    action = dict(fields.pop("action"))
    action["classes"] = tuple(action.get("classes", ()))
    config = HeadsConfig(ActionSpec(**action), bins=Bins(**fields.pop("bins")),
                         **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return load_module(folder, AgentHeads(config, key=jax.random.key(0)), kind=KIND)
