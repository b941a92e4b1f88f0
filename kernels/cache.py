"""Fixed-size KV cache for autoregressive generation, and attention through it.

Layout: `keys`, `values` [batch, capacity, kv_heads, dim] (distinct buffers; keys stored already
rotated), `index` int32 = slots committed so far, `offset` int32 = absolute position of slot 0.
`cached_attention` writes the new keys/values into slots [index, index + n) **in place** and
attends over [0, index + n) without moving the index, so every denoising step of a frame rewrites
the same scratch slots; `commit(n)` advances the index once the frame is final. Shapes never
depend on the index, so nothing recompiles as the context grows. Writing past the capacity is a
runtime error (eqx.error_if); `make_room(n)` slides the window instead, dropping the oldest slots.
In place means: donate the cache to the jitted caller (`eqx.filter_jit(..., donate="all")`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jaxtyping import Array, Bool, Float, Int

from kernels.attention import rope_attention, select_backend
from kernels.rope import apply_rope, rope_cos_sin


class KVCache(eqx.Module):
    """One attention layer's cache (see module docstring)."""

    keys: Float[Array, "batch capacity kv_heads dim"]
    values: Float[Array, "batch capacity kv_heads dim"]
    index: Int[Array, ""]
    offset: Int[Array, ""]

    @classmethod
    def create(cls, batch: int, capacity: int, kv_heads: int, dim: int,
               dtype=jnp.float32) -> "KVCache":
        shape = (batch, capacity, kv_heads, dim)  # four distinct buffers, so all can be donated
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    def commit(self, n: int) -> "KVCache":
        """Keeps the n slots written last: the index moves past them."""
        index = eqx.error_if(self.index + n, self.index + n > self.capacity,
                             "KVCache.commit: committing past the cache capacity.")
        return eqx.tree_at(lambda c: c.index, self, index)

    def make_room(self, n: int) -> "KVCache":
        """Slides the window so that n more slots fit: drops the oldest slots if needed."""
        shift = jnp.maximum(self.index + n - self.capacity, 0)

        def slide(buffer):
            return jnp.roll(buffer, -shift, axis=1)

        keys, values = jax.lax.cond(shift > 0, lambda kv: tuple(map(slide, kv)), lambda kv: kv,
                                    (self.keys, self.values))
        return KVCache(keys, values, self.index - shift, self.offset + shift)


def _write_kernel(index_ref, new_ref, buffer_ref, out_ref):
    del buffer_ref  # aliased with out_ref: the slots outside the write keep their contents
    row = index_ref[0] + pl.program_id(1)
    out_ref[pl.ds(row, 1), :] = new_ref[...][None, :]


def write_slots(buffer: Float[Array, "batch capacity heads dim"],
                new: Float[Array, "batch n heads dim"], index: Int[Array, ""], *,
                backend: str) -> Float[Array, "batch capacity heads dim"]:
    """buffer[:, index:index + n] = new, in place when the buffer is donated."""
    if backend != "pallas":
        return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer.dtype), index, 1)
    batch, n, heads, dim = new.shape
    capacity = buffer.shape[1]
    whole = pl.BlockSpec((None, capacity, None, dim), lambda b, t, h: (b, 0, h, 0))
    return pl.pallas_call(
        _write_kernel,
        grid=(batch, n, heads),
        in_specs=[pl.BlockSpec((1,), lambda b, t, h: (0,)),
                  pl.BlockSpec((None, None, None, dim), lambda b, t, h: (b, t, h, 0)), whole],
        out_specs=whole,
        out_shape=jax.ShapeDtypeStruct(buffer.shape, buffer.dtype),
        input_output_aliases={2: 0},
        interpret=jax.default_backend() != "gpu",
        name="kv_cache_write",
        compiler_params=pl_triton.CompilerParams(num_warps=1, num_stages=1),
    )(index.reshape(1), new.astype(buffer.dtype), buffer)


def cached_attention(
    cache: KVCache,
    q: Float[Array, "batch n heads dim"],
    k_new: Float[Array, "batch n kv_heads dim"],
    v_new: Float[Array, "batch n kv_heads dim"],
    *,
    mask: Bool[Array, "n n"] | None = None,
    rope_base: float | None = 10_000.0,
    softcap: float | None = None,
    backend: str = "auto",
) -> tuple[Float[Array, "batch n heads dim"], KVCache]:
    """Attention of n new tokens over the committed slots and themselves; the index stays.

    The new tokens take positions offset + index + [0, n). `mask` [n, n] restricts which new
    tokens see each other (all committed slots are visible); without it the new tokens see each
    other causally by position.
    """
    n, dim = q.shape[1], q.shape[-1]
    name = select_backend(backend, head_dim=dim)
    index = eqx.error_if(cache.index, cache.index + n > cache.capacity,
                         "cached_attention: the new tokens overflow the KV cache; commit fewer "
                         "frames or call make_room first.")
    start = cache.offset + index
    new_positions = start + jnp.arange(n, dtype=jnp.int32)
    if rope_base is not None:
        batch_positions = jnp.broadcast_to(new_positions, (q.shape[0], n))
        k_new = apply_rope(k_new, *rope_cos_sin(batch_positions, dim, rope_base))
    keys = write_slots(cache.keys, k_new, index, backend=name)
    values = write_slots(cache.values, v_new, index, backend=name)
    slot_positions = cache.offset + jnp.arange(cache.capacity, dtype=jnp.int32)
    full_mask = None
    if mask is not None:  # committed slots visible, new slots by `mask`, later slots by kv_length
        slot = jnp.arange(cache.capacity, dtype=jnp.int32) - index  # slot relative to the write
        inside = jnp.take(mask, jnp.clip(slot, 0, n - 1), axis=1)
        full_mask = (slot < 0)[None, :] | inside
    out = rope_attention(
        q, keys, values, q_positions=new_positions, k_positions=slot_positions,
        causal=mask is None, mask=full_mask,
        kv_length=jnp.broadcast_to(index + n, (q.shape[0],)), rope_base=rope_base,
        softcap=softcap, rotate_keys=False, backend=name,
    )
    return out, KVCache(keys, values, cache.index, cache.offset)
