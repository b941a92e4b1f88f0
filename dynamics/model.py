"""The dynamics model: noisy latents + signal level + step size + actions -> clean latents.

Per-frame token block (`dynamics.layout.TokenLayout`, groups by name, in order): `action_tokens`
action tokens, one shortcut token, the spatial tokens (`pack` adjacent latent tokens concatenated
and projected to the model width), `registers` learned register tokens and `agent_tokens` learned
agent tokens (0 by default; they read everything and nothing reads them). A space-time axial
transformer (time layers are causal) runs over the blocks, and the spatial outputs are read out
linearly to clean latents (x-prediction). `__call__` and `step` also return the output features
of every group, [batch, time, tokens of the group, width], for heads (policy, reward, value).

The model works on standardised latents, (z - latent_mean) / latent_std, with the tokenizer
latents' statistics (tanh latents have a std well below the unit noise, so without it even
"slightly" re-noised context would bury the frame-to-frame change); the loss and
the sampler convert with `normalise` / `denormalise`, so callers pass and get tokenizer latents.

Signal level tau (0 = noise, 1 = clean) and step size d are embedded by `LevelEmbedding`: learned
rows on a grid, linearly interpolated in between. On the grid (tau = j / k_max; d = 0 or
2^i / k_max) it is exactly the paper's discrete lookup; off the grid (context frames at tau 0.9,
MeanFlow's continuous d) it stays well defined and differentiable.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from core import AxialTransformer, Linear
from core.layers import check_compute_dtype, expand_to
from dynamics.actions import ActionEncoder, ActionSpec
from dynamics.layout import TokenLayout
from kernels import KVCache, check_backend

Features = dict[str, Float[Array, "batch time _ width"]]  # per group: [b, t, its tokens, w]
FrameFeatures = dict[str, Float[Array, "batch _ width"]]  # one frame's: [b, its tokens, w]


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
    """Every size of the dynamics model (validated on construction)."""

    latent_tokens: int
    latent_dim: int
    action: ActionSpec
    width: int = 256
    depth: int = 8
    heads: int = 4
    kv_heads: int | None = None
    time_every: int = 4
    pack: int = 1
    registers: int = 4
    action_tokens: int = 1
    agent_tokens: int = 0
    k_max: int = 64
    softcap: float | None = 50.0
    qk_gain: float = 1.0  # initial QK-norm scales: logits up to qk_gain^2 sqrt(head_dim)
    remat: bool = False
    compute_dtype: str = "float32"
    backend: str = "auto"
    latent_mean: float = 0.0
    latent_std: float = 1.0
    action_mean: tuple[float, ...] = ()  # continuous actions: per-dimension statistics of the
    action_std: tuple[float, ...] = ()   # training data (empty: actions are used as they come)

    def __post_init__(self):
        if self.latent_tokens % self.pack:
            raise ValueError(f"dynamics.pack ({self.pack}) must divide dynamics.latent_tokens "
                             f"({self.latent_tokens}).")
        if self.k_max < 1 or self.k_max & (self.k_max - 1):
            raise ValueError(f"dynamics.k_max must be a power of two, got {self.k_max}.")
        if self.width % 2:
            raise ValueError(f"dynamics.width must be even (tau and d halves), got {self.width}.")
        if self.action_tokens < 1 or self.registers < 0 or self.agent_tokens < 0:
            raise ValueError("dynamics.action_tokens must be >= 1, dynamics.registers and "
                             "dynamics.agent_tokens >= 0.")
        if not self.latent_std > 0:
            raise ValueError(f"dynamics latent_std must be positive, got {self.latent_std}.")
        for name in ("action_mean", "action_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.action_mean or self.action_std:
            want = self.action.dim if self.action.kind == "continuous" else 0
            if not len(self.action_mean) == len(self.action_std) == want or \
                    min(self.action_std) <= 0:
                raise ValueError(f"dynamics action_mean / action_std need one value per "
                                 f"continuous action dimension ({want}) and std > 0, got "
                                 f"{self.action_mean} / {self.action_std}.")
        check_compute_dtype(self.compute_dtype)
        check_backend(self.backend)

    @property
    def spatial_tokens(self) -> int:
        return self.latent_tokens // self.pack

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(actions=self.action_tokens, shortcut=1, spatial=self.spatial_tokens,
                           registers=self.registers, agent=self.agent_tokens)

    @property
    def tokens_per_frame(self) -> int:
        return self.layout.total


class LevelEmbedding(eqx.Module):
    """Rows [count, dim] looked up at a fractional index by linear interpolation."""

    table: Float[Array, "count dim"]

    def __init__(self, count: int, dim: int, *, key: PRNGKeyArray):
        self.table = 0.02 * jax.random.normal(key, (count, dim))

    def __call__(self, index: Float[Array, "*batch"]) -> Float[Array, "*batch dim"]:
        index = jnp.clip(index, 0.0, self.table.shape[0] - 1.0)
        low = jnp.clip(jnp.floor(index), 0.0, self.table.shape[0] - 2.0)
        frac = (index - low)[..., None]
        low = low.astype(jnp.int32)
        return (1.0 - frac) * self.table[low] + frac * self.table[low + 1]


def tau_index(tau: Float[Array, "*batch"], k_max: int) -> Float[Array, "*batch"]:
    return tau * k_max


def step_index(d: Float[Array, "*batch"], k_max: int) -> Float[Array, "*batch"]:
    """Row 0 is d = 0; row 1 + i is d = 2^i / k_max; linear in d below d_min, in log2 above."""
    scaled = d * k_max
    return jnp.where(scaled < 1.0, scaled, 1.0 + jnp.log2(jnp.maximum(scaled, 1.0)))


class Dynamics(eqx.Module):
    """z1_hat = f(z_tau, tau, d, actions): see the module docstring."""

    actions: ActionEncoder
    tau_embed: LevelEmbedding
    step_embed: LevelEmbedding
    spatial_in: Linear
    registers: Float[Array, "registers width"]
    agent: Float[Array, "agent width"] | None
    transformer: AxialTransformer
    readout: Linear
    config: DynamicsConfig = eqx.field(static=True)

    def __init__(self, config: DynamicsConfig, *, key: PRNGKeyArray):
        c = config
        keys = jax.random.split(key, 7)
        self.actions = ActionEncoder(c.action, c.width, tokens=c.action_tokens,
                                     compute_dtype=c.compute_dtype, mean=c.action_mean,
                                     std=c.action_std, key=keys[0])
        self.tau_embed = LevelEmbedding(c.k_max + 1, c.width // 2, key=keys[1])
        self.step_embed = LevelEmbedding(2 + int(math.log2(c.k_max)), c.width // 2, key=keys[2])
        packed = c.pack * c.latent_dim
        self.spatial_in = Linear(packed, c.width, compute_dtype=c.compute_dtype, key=keys[3])
        self.registers = 0.02 * jax.random.normal(keys[4], (c.registers, c.width))
        agent_key = jax.random.fold_in(key, 7)  # not from `keys`: the other weights stay put
        self.agent = (0.02 * jax.random.normal(agent_key, (c.agent_tokens, c.width))
                      if c.agent_tokens else None)
        self.transformer = AxialTransformer(
            c.width, c.depth, c.heads, kv_heads=c.kv_heads, time_every=c.time_every,
            softcap=c.softcap, qk_gain=c.qk_gain, remat=c.remat, backend=c.backend,
            compute_dtype=c.compute_dtype, key=keys[5])
        self.readout = Linear(c.width, packed, compute_dtype=c.compute_dtype, key=keys[6])
        self.config = config

    def normalise(self, z: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """Tokenizer latents -> the model's standardised latents."""
        return (z - self.config.latent_mean) / self.config.latent_std

    def denormalise(self, z: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return z * self.config.latent_std + self.config.latent_mean

    def embed(self, z, tau, d, actions, has_action):
        """Token blocks [batch, time, tokens_per_frame, width] (float32)."""
        c = self.config
        batch, time = tau.shape
        level = jnp.concatenate([self.tau_embed(tau_index(tau, c.k_max)),
                                 self.step_embed(step_index(d, c.k_max))], axis=-1)
        packed = z.reshape(batch, time, c.spatial_tokens, c.pack * c.latent_dim)
        learned = [self.registers] + ([] if self.agent is None else [self.agent])
        learned = jnp.concatenate(learned, axis=0)
        learned = jnp.broadcast_to(expand_to(learned, 4), (batch, time, *learned.shape))
        return jnp.concatenate([
            self.actions(actions, has_action), level[:, :, None, :],
            self.spatial_in(packed).astype(jnp.float32), learned,
        ], axis=2)

    def space_mask(self) -> Bool[Array, "tokens tokens"] | None:
        mask = self.config.layout.space_mask()
        return None if mask is None else jnp.asarray(mask)

    def read(
        self, h: Float[Array, "batch time tokens width"]
    ) -> tuple[Float[Array, "batch time latents latent_dim"], Features]:
        """(clean-latent prediction, output features of every non-empty group)."""
        c, layout = self.config, self.config.layout
        features = {name: h[:, :, layout.slice(name)]
                    for name, size in layout.sizes.items() if size}
        out = self.readout(features["spatial"]).astype(jnp.float32)
        return out.reshape(*h.shape[:2], c.latent_tokens, c.latent_dim), features

    def __call__(
        self,
        z: Float[Array, "batch time latents dim"],
        tau: Float[Array, "batch time"],
        d: Float[Array, "batch time"],
        actions: Float[Array, "batch time *action"] | Int[Array, "batch time *action"],
        has_action: Bool[Array, "batch time"],
        *,
        time_mask: Bool[Array, "batch time time"] | None = None,
        time_positions: Int[Array, " time"] | None = None,
    ) -> tuple[Float[Array, "batch time latents dim"], Features]:
        """(clean-latent prediction for every frame, features per group); actions in the model
        convention; `time_mask` / `time_positions`: see `AxialTransformer.__call__`."""
        h = self.transformer(self.embed(z, tau, d, actions, has_action),
                             space_mask=self.space_mask(), time_mask=time_mask,
                             time_positions=time_positions)
        return self.read(h)

    def init_caches(self, batch: int, capacity: int, dtype=None) -> tuple[KVCache, ...]:
        """Empty caches (default dtype: the compute dtype, so bf16 models keep bf16 K/V)."""
        dtype = dtype or jnp.dtype(self.config.compute_dtype)
        return self.transformer.init_caches(batch, self.config.tokens_per_frame, capacity, dtype)

    def step(
        self,
        z: Float[Array, "batch new latents dim"],
        tau: Float[Array, "batch new"],
        d: Float[Array, "batch new"],
        actions: Float[Array, "batch new *action"] | Int[Array, "batch new *action"],
        has_action: Bool[Array, "batch new"],
        caches: tuple[KVCache, ...],
    ) -> tuple[Float[Array, "batch new latents dim"], Features, tuple[KVCache, ...]]:
        """The cached form: new frames after the cached ones; caches written, not committed.
        Returns (prediction, features per group, caches)."""
        h, caches = self.transformer.step(self.embed(z, tau, d, actions, has_action), caches,
                                          space_mask=self.space_mask())
        return *self.read(h), caches
