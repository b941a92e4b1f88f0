"""Space-time axial transformer over [batch, time, tokens, width].

Layer i attends across time when (i + 1) % time_every == 0 (causally, each token position to the
same position in current and past frames: "time-factorised"), otherwise within its own frame
(space, optionally restricted by a modality mask). `step` is the cached form for generation:
only time layers need a KV cache (one per layer, rows = batch * tokens), space layers see the new
frame alone. Pre-norm residual blocks with RMSNorm and
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
from kernels import KVCache


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

    def apply(self, x: Float[Array, "batch length width"], attend):
        """The block around any attention function `attend(h) -> (h, aux)`; returns (x, aux)."""
        h, aux = attend(self.attn_norm(x))
        x = x + h.astype(x.dtype)
        return x + self.mlp(self.mlp_norm(x)).astype(x.dtype), aux

    def __call__(
        self,
        x: Float[Array, "batch length width"],
        *,
        positions: Int[Array, " length"],
        causal: bool,
        mask: Bool[Array, "length length"] | Bool[Array, "batch length length"] | None,
    ) -> Float[Array, "batch length width"]:
        attend = lambda h: (self.attn(h, positions=positions, causal=causal, mask=mask), None)
        return self.apply(x, attend)[0]


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
        qk_gain: float = 1.0,
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
                qk_gain=qk_gain,
            )
            for k in jax.random.split(key, depth)
        )
        self.out_norm = RMSNorm(width)
        self.time_every, self.remat = time_every, remat

    def is_time_layer(self, index: int) -> bool:
        return (index + 1) % self.time_every == 0

    def _space(self, block, x, space_mask):
        batch, time, tokens, width = x.shape
        positions = jnp.arange(tokens, dtype=jnp.int32)
        h = block(x.reshape(batch * time, tokens, width), positions=positions, causal=False,
                  mask=space_mask)
        return h.reshape(batch, time, tokens, width)

    def _time(self, block, x, attend):
        """Runs `block.apply` over rows (batch, token) of frames; returns (x, aux)."""
        batch, time, tokens, width = x.shape
        h = x.transpose(0, 2, 1, 3).reshape(batch * tokens, time, width)
        h, aux = block.apply(h, attend(block))
        return h.reshape(batch, tokens, time, width).transpose(0, 2, 1, 3), aux

    def __call__(
        self,
        x: Float[Array, "batch time tokens width"],
        *,
        space_mask: Bool[Array, "tokens tokens"] | None = None,
        time_mask: Bool[Array, "batch time time"] | None = None,
        time_positions: Int[Array, " time"] | None = None,
    ) -> Float[Array, "batch time tokens width"]:
        """`time_mask[b, i, j]` further restricts which frames a frame sees (e.g. identity for
        sequences trained as separate images). Frames take time positions 0..time-1 unless
        `time_positions` gives them (RoPE; causality stays by sequence order)."""
        tokens, time = x.shape[2], x.shape[1]
        positions = (jnp.arange(time, dtype=jnp.int32) if time_positions is None
                     else time_positions)
        if time_mask is not None:
            time_mask = jnp.repeat(time_mask, tokens, axis=0)  # rows ordered (batch, token)

        def attend(block):
            return lambda h: (block.attn(h, positions=positions, causal=True, mask=time_mask),
                              None)

        for index, block in enumerate(self.blocks):
            if self.is_time_layer(index):
                layer = lambda block, x: self._time(block, x, attend)[0]
            else:
                layer = lambda block, x: self._space(block, x, space_mask)
            x = (eqx.filter_checkpoint(layer) if self.remat else layer)(block, x)
        return self.out_norm(x)

    def init_caches(self, batch: int, tokens: int, capacity: int,
                    dtype=jnp.float32) -> tuple[KVCache, ...]:
        """Empty KV caches, one per time layer, for `capacity` frames of batch * tokens rows."""
        return tuple(
            KVCache.create(batch * tokens, capacity, block.attn.kv_heads, block.attn.head_dim,
                           dtype)
            for index, block in enumerate(self.blocks) if self.is_time_layer(index)
        )

    def step(
        self,
        x: Float[Array, "batch new tokens width"],
        caches: tuple[KVCache, ...],
        *,
        space_mask: Bool[Array, "tokens tokens"] | None = None,
    ) -> tuple[Float[Array, "batch new tokens width"], tuple[KVCache, ...]]:
        """The same stack over new frames that follow the cached ones (time positions continue
        from each cache's offset + index). Caches come back written but not committed."""
        pending, written = list(caches), []

        def attend(block):
            return lambda h: block.attn.cached(h, pending.pop(0))

        for index, block in enumerate(self.blocks):
            if self.is_time_layer(index):
                x, cache = self._time(block, x, attend)
                written.append(cache)
            else:
                x = self._space(block, x, space_mask)
        return self.out_norm(x), tuple(written)


def commit(caches: tuple[KVCache, ...], frames: int) -> tuple[KVCache, ...]:
    """Keeps the last `frames` written frames in every cache."""
    return tuple(cache.commit(frames) for cache in caches)


def make_room(caches: tuple[KVCache, ...], frames: int) -> tuple[KVCache, ...]:
    """Drops the oldest frames of every cache so that `frames` more fit (O(1): ring buffers)."""
    return tuple(cache.make_room(frames) for cache in caches)
