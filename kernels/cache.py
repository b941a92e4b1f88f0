"""Fixed-size ring-buffer KV cache for autoregressive generation, and attention through it.

Layout: `keys`, `values` [batch, capacity, kv_heads, dim] (distinct buffers; keys stored already
rotated at their absolute positions), `index` int32 = tokens held (committed, <= capacity) and
`offset` int32 = absolute position of the oldest held token. Absolute position p lives in slot
p % capacity, so the held tokens are positions [offset, offset + index) in the slots from
offset % capacity on, wrapping past the end of the buffer; each slot's absolute position is
`slot_positions()`.

`cached_attention` writes n new tokens (positions offset + index + [0, n)) into their slots **in
place** and attends over the held tokens and themselves without moving the index, so every
denoising step of a frame rewrites the same scratch slots; `commit(n)` keeps them once the frame
is final. Writing past the capacity is a runtime error (eqx.error_if); `make_room(n)` drops the
oldest held tokens instead, in O(1): it only advances `offset` and lowers `index`, the buffers
stay where they are and the next write reuses the dropped slots. Shapes never depend on the
index, so nothing recompiles as the context grows or the ring wraps.

Visibility is expressed by slot position, so every attention backend sees exactly the keys of a
sliding window over the last `capacity` tokens: a slot is visible iff its position lies in
[offset, offset + index + n) (slots not yet filled, or dropped, hold positions past the newest
token), causally by position among the new tokens or by the caller's [n, n] mask. `kv_length`
bounds the key loop at the highest visible slot + 1: index + n while the cache fills from slot 0,
the whole capacity once it has wrapped.
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
    """One attention layer's ring-buffer cache (see module docstring)."""

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

    def write_slot(self) -> Int[Array, ""]:
        """The slot of the next new token (absolute position offset + index)."""
        return (self.offset + self.index) % self.capacity

    def slot_positions(self) -> Int[Array, " capacity"]:
        """Absolute position of each slot: the one in [offset, offset + capacity) that it holds
        or will hold next (held tokens first, then the slots the next writes go to)."""
        slots = jnp.arange(self.capacity, dtype=jnp.int32)
        return self.offset + (slots - self.offset) % self.capacity

    def commit(self, n: int) -> "KVCache":
        """Keeps the n tokens written last: the index moves past them."""
        index = eqx.error_if(self.index + n, self.index + n > self.capacity,
                             "KVCache.commit: committing past the cache capacity; call "
                             "make_room(n) before writing the tokens.")
        return eqx.tree_at(lambda c: c.index, self, index)

    def make_room(self, n: int) -> "KVCache":
        """Drops the oldest held tokens so that n more fit; the buffers do not move."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"KVCache.make_room: n={n} must be in 0..capacity={self.capacity}.")
        drop = jnp.maximum(self.index + n - self.capacity, 0)
        return KVCache(self.keys, self.values, self.index - drop, self.offset + drop)


def _write_kernel(slot_ref, new_ref, buffer_ref, out_ref):
    del buffer_ref  # aliased with out_ref: the slots outside the write keep their contents
    row = (slot_ref[0] + pl.program_id(1)) % out_ref.shape[0]
    out_ref[pl.ds(row, 1), :] = new_ref[...][None, :]


def write_slots(buffer: Float[Array, "batch capacity heads dim"],
                new: Float[Array, "batch n heads dim"], slot: Int[Array, ""], *,
                backend: str) -> Float[Array, "batch capacity heads dim"]:
    """buffer[:, (slot + i) % capacity] = new[:, i] for i < n, in place when the buffer is
    donated (n <= capacity)."""
    batch, n, heads, dim = new.shape
    capacity = buffer.shape[1]
    if backend != "pallas":
        rows = (slot + jnp.arange(n, dtype=jnp.int32)) % capacity
        return buffer.at[:, rows].set(new.astype(buffer.dtype), unique_indices=True,
                                      mode="promise_in_bounds")
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
    )(slot.reshape(1), new.astype(buffer.dtype), buffer)


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
    """Attention of n new tokens over the held tokens and themselves; the index stays.

    The new tokens take positions offset + index + [0, n). `mask` [n, n] restricts which new
    tokens see each other (all held tokens are visible); without it the new tokens see each
    other causally by position.
    """
    batch, n, _, dim = q.shape
    name = select_backend(backend, head_dim=dim)
    index = eqx.error_if(cache.index, cache.index + n > cache.capacity,
                         "cached_attention: the new tokens overflow the KV cache; commit fewer "
                         "frames or call make_room first.")
    cache = KVCache(cache.keys, cache.values, index, cache.offset)
    new_positions = cache.offset + index + jnp.arange(n, dtype=jnp.int32)
    if rope_base is not None:
        batch_positions = jnp.broadcast_to(new_positions, (batch, n))
        k_new = apply_rope(k_new, *rope_cos_sin(batch_positions, dim, rope_base))
    slot = cache.write_slot()
    keys = write_slots(cache.keys, k_new, slot, backend=name)
    values = write_slots(cache.values, v_new, slot, backend=name)
    slot_positions = cache.slot_positions()
    age = slot_positions - cache.offset  # 0 for the oldest held token, index for the first new
    visible_length = index + n
    full_mask = None
    if mask is not None:  # held slots visible, new slots by `mask`, the rest by position
        inside = jnp.take(mask, jnp.clip(age - index, 0, n - 1), axis=1)
        full_mask = (age < index)[None, :] | (inside & (age < visible_length)[None, :])
    kv_length = jnp.minimum(cache.offset % cache.capacity + visible_length, cache.capacity)
    out = rope_attention(
        q, keys, values, q_positions=new_positions, k_positions=slot_positions,
        causal=mask is None, mask=full_mask, kv_length=jnp.broadcast_to(kv_length, (batch,)),
        rope_base=rope_base, softcap=softcap, rotate_keys=False, backend=name,
    )
    return out, KVCache(keys, values, cache.index, cache.offset)
