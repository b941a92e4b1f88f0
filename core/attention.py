"""Multi-head self-attention module: projections, GQA, QK-norm, RoPE, soft-cap, masks.

The attention math itself is `kernels.rope_attention`; this module owns only the parameters.
`cached` is the same layer for autoregressive inference: it routes the projections through
`kernels.cached_attention` and a fixed-size KV cache.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from core.layers import Linear, RMSNorm
from kernels import KVCache, cached_attention, rope_attention


class Attention(eqx.Module):
    """Self-attention over x [batch, length, width] with `heads` query and `kv_heads` K/V heads."""

    q_proj: Linear
    kv_proj: Linear
    out_proj: Linear
    q_norm: RMSNorm | None
    k_norm: RMSNorm | None
    heads: int = eqx.field(static=True)
    kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    rope_base: float | None = eqx.field(static=True)
    softcap: float | None = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        qk_norm: bool = True,
        rope_base: float | None = 10_000.0,
        softcap: float | None = None,
        qk_gain: float = 1.0,
        out_init_scale: float = 1.0,
        backend: str = "auto",
        compute_dtype: str = "float32",
        key: PRNGKeyArray,
    ):
        kv_heads = heads if kv_heads is None else kv_heads
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads}).")
        if head_dim is None:
            if width % heads:
                raise ValueError(f"width ({width}) must be divisible by heads ({heads}).")
            head_dim = width // heads
        kq, kkv, ko = jax.random.split(key, 3)
        self.q_proj = Linear(width, heads * head_dim, compute_dtype=compute_dtype, key=kq)
        self.kv_proj = Linear(width, 2 * kv_heads * head_dim, compute_dtype=compute_dtype, key=kkv)
        self.out_proj = Linear(
            heads * head_dim, width, init_scale=out_init_scale, compute_dtype=compute_dtype, key=ko
        )
        self.q_norm = RMSNorm(head_dim, init=qk_gain) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, init=qk_gain) if qk_norm else None
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.rope_base, self.softcap, self.backend = rope_base, softcap, backend

    def project(self, x: Float[Array, "batch length width"]) -> tuple[
        Float[Array, "batch length heads head_dim"],
        Float[Array, "batch length kv_heads head_dim"],
        Float[Array, "batch length kv_heads head_dim"],
    ]:
        """Un-rotated, QK-normed q, k and v."""
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, self.heads, self.head_dim)
        k, v = jnp.split(self.kv_proj(x), 2, axis=-1)
        k = k.reshape(batch, length, self.kv_heads, self.head_dim)
        v = v.reshape(batch, length, self.kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def merge(
        self, out: Float[Array, "batch length heads head_dim"]
    ) -> Float[Array, "batch length width"]:
        """Output projection of the concatenated heads."""
        batch, length = out.shape[:2]
        return self.out_proj(out.reshape(batch, length, self.heads * self.head_dim))

    def __call__(
        self,
        x: Float[Array, "batch length width"],
        *,
        positions: Int[Array, " length"] | Int[Array, "batch length"],
        causal: bool = False,
        mask: Bool[Array, "length length"] | Bool[Array, "batch length length"] | None = None,
    ) -> Float[Array, "batch length width"]:
        q, k, v = self.project(x)
        out = rope_attention(
            q, k, v, q_positions=positions, k_positions=positions, causal=causal, mask=mask,
            rope_base=self.rope_base, softcap=self.softcap, backend=self.backend,
        )
        return self.merge(out)

    def cached(
        self,
        x: Float[Array, "batch n width"],
        cache: KVCache,
        *,
        mask: Bool[Array, "n n"] | None = None,
    ) -> tuple[Float[Array, "batch n width"], KVCache]:
        """Attention of n new tokens over the cache and themselves; the cache index stays."""
        q, k, v = self.project(x)
        out, cache = cached_attention(cache, q, k, v, mask=mask, rope_base=self.rope_base,
                                      softcap=self.softcap, backend=self.backend)
        return self.merge(out), cache
