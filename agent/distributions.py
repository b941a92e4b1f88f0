"""The agent's distributions: one policy distribution per action kind, and the two-hot / HL-Gauss
encodings of scalars (rewards, values) over bins in symlog space.

Policies (every one has `log_prob`, `entropy`, `kl` = KL[self || other], `sample`, `mode`):
- `Categorical`: discrete actions, int [*batch] (CoinRun's 15 buttons);
- `Multipart`: int [*batch, parts], one independent categorical per part (Minecraft's 121 camera
  classes and its binary keys: a 2-class part is a Bernoulli);
- `Binned`: continuous actions in a box [low, high]^dim (the 7-D end-effector actions), each
  dimension an independent categorical over `bins` equal-width bins with a uniform density
  inside its bin. The density is piecewise constant, so `log_prob` is exact
  (log p(bin) - log(bin width)), and the KL between two of them over the same bins is exactly
  the sum of the per-dimension categorical KLs. That is why it is the continuous policy here,
  rather than a tanh-squashed Gaussian (no closed-form KL; the Jacobian term dominates the
  log-prob near the bounds) or a Beta: PMPO needs the reverse KL to the prior at every step, and
  a categorical's entropy is bounded on both sides (between 0 and log bins per dimension, plus
  the width term), so the sign-based update cannot drive a scale to zero or infinity. It also
  represents multi-modal demonstrations (a demonstrator that goes left or right of an obstacle).

Scalars: `symlog(x) = sign(x) log(1 + |x|)`, `symexp` its inverse. `Bins(low, high, count)` are
`count` equally spaced points in symlog space; `two_hot(y)` puts the weight of symlog(y) on its
two neighbouring bins (linear interpolation, so the expectation in symlog space is exactly
symlog(y) inside the range), `hl_gauss(y, sigma)` the mass of a Gaussian N(symlog(y), sigma^2) on
each bin's interval. `decode` reads a scalar back from logits: by the mean (symexp of the
expected symlog value) or by the mode (symexp of the most likely bin).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from core.layers import expand_to


def _categorical_kl(logits_p, logits_q):
    logp, logq = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def _categorical_entropy(logits):
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _pick(logits, index):
    return jnp.take_along_axis(jax.nn.log_softmax(logits), index[..., None], axis=-1)[..., 0]


class Categorical(eqx.Module):
    """One categorical over the last axis of `logits`."""

    logits: Float[Array, "*batch classes"]

    def log_prob(self, action: Int[Array, "*batch"]) -> Float[Array, "*batch"]:
        return _pick(self.logits, action)

    def entropy(self) -> Float[Array, "*batch"]:
        return _categorical_entropy(self.logits)

    def kl(self, other: "Categorical") -> Float[Array, "*batch"]:
        return _categorical_kl(self.logits, other.logits)

    def sample(self, key: PRNGKeyArray) -> Int[Array, "*batch"]:
        return jax.random.categorical(key, self.logits).astype(jnp.int32)

    def mode(self) -> Int[Array, "*batch"]:
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)


class Multipart(eqx.Module):
    """Independent categoricals, one per part (parts may have different class counts)."""

    parts: tuple[Categorical, ...]

    def log_prob(self, action: Int[Array, "*batch parts"]) -> Float[Array, "*batch"]:
        return sum(part.log_prob(action[..., p]) for p, part in enumerate(self.parts))

    def entropy(self) -> Float[Array, "*batch"]:
        return sum(part.entropy() for part in self.parts)

    def kl(self, other: "Multipart") -> Float[Array, "*batch"]:
        return sum(p.kl(q) for p, q in zip(self.parts, other.parts, strict=True))

    def sample(self, key: PRNGKeyArray) -> Int[Array, "*batch parts"]:
        keys = jax.random.split(key, len(self.parts))
        return jnp.stack([part.sample(k) for part, k in zip(self.parts, keys, strict=True)], -1)

    def mode(self) -> Int[Array, "*batch parts"]:
        return jnp.stack([part.mode() for part in self.parts], axis=-1)


class Binned(eqx.Module):
    """Continuous actions in [low, high]^dim: per dimension a categorical over equal-width bins
    with a uniform density inside each bin."""

    logits: Float[Array, "*batch dim bins"]
    low: tuple[float, ...] = eqx.field(static=True)
    high: tuple[float, ...] = eqx.field(static=True)

    def _edges(self):
        """(low, bin width), [1, ..., dim]: shaped like an action of this batch."""
        ndim = self.logits.ndim - 1
        low, high = (expand_to(jnp.asarray(v, jnp.float32), ndim) for v in (self.low, self.high))
        return low, (high - low) / self.logits.shape[-1]

    def bin_of(self, action: Float[Array, "*batch dim"]) -> Int[Array, "*batch dim"]:
        low, width = self._edges()
        index = jnp.floor((action - low) / width).astype(jnp.int32)
        return jnp.clip(index, 0, self.logits.shape[-1] - 1)

    def log_prob(self, action: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """Exact log density; actions outside the box count in the nearest edge bin."""
        _, width = self._edges()
        return jnp.sum(_pick(self.logits, self.bin_of(action)) - jnp.log(width), axis=-1)

    def entropy(self) -> Float[Array, "*batch"]:
        _, width = self._edges()
        return jnp.sum(_categorical_entropy(self.logits) + jnp.log(width), axis=-1)

    def kl(self, other: "Binned") -> Float[Array, "*batch"]:
        if (self.low, self.high) != (other.low, other.high):
            raise ValueError("KL between binned policies needs the same box.")
        return jnp.sum(_categorical_kl(self.logits, other.logits), axis=-1)

    def sample(self, key: PRNGKeyArray) -> Float[Array, "*batch dim"]:
        k_bin, k_within = jax.random.split(key)
        low, width = self._edges()
        index = jax.random.categorical(k_bin, self.logits)
        return low + (index.astype(jnp.float32) + jax.random.uniform(k_within, index.shape)) * width

    def mode(self) -> Float[Array, "*batch dim"]:
        low, width = self._edges()
        return low + (jnp.argmax(self.logits, axis=-1).astype(jnp.float32) + 0.5) * width


def symlog(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class Bins:
    """`count` equally spaced bin centres on [low, high] in symlog space."""

    low: float = -20.0
    high: float = 20.0
    count: int = 255

    def __post_init__(self):
        if self.count < 2 or not self.high > self.low:
            raise ValueError(f"bins need count >= 2 and high > low, got {self}.")

    @property
    def centres(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.count, dtype=np.float32)

    @property
    def spacing(self) -> float:
        return (self.high - self.low) / (self.count - 1)

    def two_hot(self, y: Float[Array, "*batch"]) -> Float[Array, "*batch count"]:
        """Weights on the two bins around symlog(y) (clipped into the range), summing to 1."""
        position = (jnp.clip(symlog(y), self.low, self.high) - self.low) / self.spacing
        below = jnp.clip(jnp.floor(position), 0, self.count - 2)
        upper = position - below
        index = expand_to(jnp.arange(self.count, dtype=jnp.float32), position.ndim + 1)
        return (jnp.where(index == below[..., None], 1.0 - upper[..., None], 0.0)
                + jnp.where(index == below[..., None] + 1, upper[..., None], 0.0))

    def hl_gauss(self, y: Float[Array, "*batch"], sigma: float | None = None
                 ) -> Float[Array, "*batch count"]:
        """The mass of N(symlog(y), sigma^2) on each bin's interval (centre +- spacing / 2),
        renormalised over the range; sigma defaults to 0.75 bin spacings."""
        sigma = 0.75 * self.spacing if sigma is None else sigma
        edges = jnp.asarray(np.concatenate([self.centres - self.spacing / 2,
                                            [self.high + self.spacing / 2]]))
        edges = expand_to(edges, jnp.ndim(y) + 1)
        cdf = ndtr((edges - jnp.clip(symlog(y), self.low, self.high)[..., None]) / sigma)
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / jnp.sum(mass, axis=-1, keepdims=True)

    def decode(self, logits: Float[Array, "*batch count"], how: str = "mean"
               ) -> Float[Array, "*batch"]:
        """symexp of the expected bin ("mean") or of the most likely bin ("mode")."""
        centres = expand_to(jnp.asarray(self.centres), logits.ndim)
        if how == "mean":
            return symexp(jnp.sum(jax.nn.softmax(logits) * centres, axis=-1))
        if how == "mode":
            return symexp(jnp.asarray(self.centres)[jnp.argmax(logits, axis=-1)])
        raise ValueError(f"decode how must be 'mean' or 'mode', got {how!r}.")

    def cross_entropy(self, logits: Float[Array, "*batch count"],
                      target: Float[Array, "*batch count"]) -> Float[Array, "*batch"]:
        """-sum target log softmax(logits): the loss of logits against an encoded target."""
        return -jnp.sum(target * jax.nn.log_softmax(logits), axis=-1)
