"""Rotary position embedding, half-split layout.

The head dimension D is split into halves (x1, x2); pair i rotates by angle pos * base^(-2i/D):
  rope(x) = [x1 * cos - x2 * sin, x2 * cos + x1 * sin].
The cos/sin table is computed once per call for all positions and shared by q, k and all heads.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rope_cos_sin(
    positions: Int[Array, "*batch length"], head_dim: int, base: float
) -> tuple[Float[Array, "*batch length half"], Float[Array, "*batch length half"]]:
    """float32 cos/sin tables [..., length, head_dim // 2] for integer positions."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}.")
    half = head_dim // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * (2.0 / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq.reshape(
        (1,) * positions.ndim + (half,)
    )
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(
    x: Float[Array, "*batch length heads dim"],
    cos: Float[Array, "*batch length half"],
    sin: Float[Array, "*batch length half"],
) -> Float[Array, "*batch length heads dim"]:
    """Rotates x by the tables; the math runs in float32, the result has x.dtype."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    c, s = cos[..., None, :], sin[..., None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return rotated.astype(x.dtype)
