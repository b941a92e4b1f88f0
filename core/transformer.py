"""Space-time axial transformer over [batch, time, tokens, width].

Layer i attends across time when (i + 1) % time_every == 0 (causally, each token position to the
same position in current and past frames: "time-factorised"), otherwise within its own frame
(space, optionally restricted by a modality mask). Pre-norm residual blocks with RMSNorm and
SwiGLU; the residual stream keeps the input dtype while matmuls run in `compute_dtype`. Because
space layers never mix frames and time layers are causal, the whole stack is block-causal in time.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from core.attention import Attention
from core.layers import RMSNorm, SwiGLU


class TransformerBlock(eqx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)), over x [batch, length, width]."""

    attn_norm: RMSNorm
    attn: Attention
    mlp_norm: RMSNorm
    mlp: SwiGLU

    def __init__(self, width: int, heads: int, *, mlp_hidden: int, out_init_scale: float,
                 compute_dtype: str, key: PRNGKeyArray, **attention_kwargs):
        ka, km = jax.random.split(key)
        self.attn_norm = RMSNorm(width)
        self.attn = Attention(width, heads, out_init_scale=out_init_scale,
                              compute_dtype=compute_dtype, key=ka, **attention_kwargs)
        self.mlp_norm = RMSNorm(width)
        self.mlp = SwiGLU(width, mlp_hidden, out_init_scale=out_init_scale,
                          compute_dtype=compute_dtype, key=km)

    def __call__(
        self,
        x: Float[Array, "batch length width"],
        *,
        positions: Int[Array, " length"],
        causal: bool,
        mask: Bool[Array, "length length"] | Bool[Array, "batch length length"] | None,
    ) -> Float[Array, "batch length width"]:
        h = self.attn(self.attn_norm(x), positions=positions, causal=causal, mask=mask)
        x = x + h.astype(x.dtype)
        return x + self.mlp(self.mlp_norm(x)).astype(x.dtype)


class AxialTransformer(eqx.Module):
    """Stack of space and time blocks with a final RMSNorm."""

    blocks: tuple[TransformerBlock, ...]
    out_norm: RMSNorm
    time_every: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        time_every: int = 4,
        qk_norm: bool = True,
        softcap: float | None = 50.0,
        rope_base: float = 10_000.0,
        remat: bool = False,
        backend: str = "auto",
        compute_dtype: str = "float32",
        key: PRNGKeyArray,
    ):
        if depth < 1 or time_every < 1:
            raise ValueError(f"depth ({depth}) and time_every ({time_every}) must be >= 1.")
        if time_every > depth:
            raise ValueError(f"time_every ({time_every}) > depth ({depth}) leaves no time layer; "
                             "frames would never see each other. Lower time_every.")
        mlp_hidden = max(8, round(width * mlp_ratio * 2 / 3 / 8) * 8)
        self.blocks = tuple(
            TransformerBlock(
                width, heads, mlp_hidden=mlp_hidden, out_init_scale=1 / math.sqrt(2 * depth),
                compute_dtype=compute_dtype, key=k, kv_heads=kv_heads, head_dim=head_dim,
                qk_norm=qk_norm, softcap=softcap, rope_base=rope_base, backend=backend,
            )
            for k in jax.random.split(key, depth)
        )
        self.out_norm = RMSNorm(width)
        self.time_every, self.remat = time_every, remat

    def is_time_layer(self, index: int) -> bool:
        return (index + 1) % self.time_every == 0

    def __call__(
        self,
        x: Float[Array, "batch time tokens width"],
        *,
        space_mask: Bool[Array, "tokens tokens"] | None = None,
        time_mask: Bool[Array, "batch time time"] | None = None,
        frame_offset: int | Int[Array, ""] = 0,
    ) -> Float[Array, "batch time tokens width"]:
        """`time_mask[b, i, j]` further restricts which frames a frame sees (e.g. identity for
        sequences trained as separate images); `frame_offset` shifts the time RoPE positions."""
        batch, time, tokens, width = x.shape
        space_positions = jnp.arange(tokens, dtype=jnp.int32)
        time_positions = jnp.arange(time, dtype=jnp.int32) + frame_offset
        if time_mask is not None:
            time_mask = jnp.repeat(time_mask, tokens, axis=0)  # rows ordered (batch, token)

        def space(block, h):
            h = block(h.reshape(batch * time, tokens, width), positions=space_positions,
                      causal=False, mask=space_mask)
            return h.reshape(batch, time, tokens, width)

        def time_(block, h):
            h = h.transpose(0, 2, 1, 3).reshape(batch * tokens, time, width)
            h = block(h, positions=time_positions, causal=True, mask=time_mask)
            return h.reshape(batch, tokens, time, width).transpose(0, 2, 1, 3)

        for index, block in enumerate(self.blocks):
            layer = time_ if self.is_time_layer(index) else space
            if self.remat:
                layer = eqx.filter_checkpoint(layer)
            x = layer(block, x)
        return self.out_norm(x)
