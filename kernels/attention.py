"""`rope_attention`: the one attention function, dispatched to a backend.

Contract shared by every backend (and tested against the same float64 reference):
- q [batch, q_len, heads, dim]; k, v [batch, kv_len, kv_heads, dim], heads % kv_heads == 0 (GQA:
  query head h reads K/V head h // (heads // kv_heads), nothing repeated in memory);
- q and k arrive un-rotated; with `rope_base` set they are rotated by their integer positions;
- key j is visible to query i iff every given condition holds: `mask[i, j]`, `k_pos[j] <= q_pos[i]`
  when `causal`, and `j < kv_length[b]`. Masked keys get exactly zero weight; a query that sees no
  key returns zeros;
- logits = scale * q.k (scale defaults to dim ** -0.5), soft-capped to cap * tanh(logits / cap);
- softmax in float32, output in q.dtype.
"""

import jax
import jax.numpy as jnp
from absl import logging
from jaxtyping import Array, Bool, Float, Int

from kernels.flash import pallas_attention, supports_head_dim
from kernels.rope import apply_rope, rope_cos_sin

BACKENDS: tuple[str, ...] = ("xla", "cudnn", "pallas")
_MASKED = -1e30


def visibility(
    q_positions: Int[Array, "batch q_len"],
    k_positions: Int[Array, "batch kv_len"],
    *,
    causal: bool,
    mask: Bool[Array, "batch q_len kv_len"] | None,
    kv_length: Int[Array, " batch"] | None,
) -> Bool[Array, "batch q_len kv_len"]:
    """Which key each query may see, combining mask, position causality and valid length."""
    batch, q_len = q_positions.shape
    kv_len = k_positions.shape[1]
    visible = jnp.ones((batch, q_len, kv_len), dtype=bool)
    if mask is not None:
        visible = visible & mask
    if causal:
        visible = visible & (k_positions[:, None, :] <= q_positions[:, :, None])
    if kv_length is not None:
        key_index = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
        visible = visible & (key_index < kv_length.astype(jnp.int32)[:, None, None])
    return visible


def xla_attention(q, k, v, *, q_positions, k_positions, causal, mask, kv_length, rope_base,
                  softcap, scale, rotate_keys=True):
    """Pure-jnp reference backend (arguments already normalised by `rope_attention`)."""
    batch, q_len, heads, dim = q.shape
    kv_heads = k.shape[2]
    visible = visibility(q_positions, k_positions, causal=causal, mask=mask, kv_length=kv_length)
    if rope_base is not None:
        q = apply_rope(q, *rope_cos_sin(q_positions, dim, rope_base))
        if rotate_keys:
            k = apply_rope(k, *rope_cos_sin(k_positions, dim, rope_base))
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    visible = visible[:, None, None, :, :]
    logits = jnp.where(visible, logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(visible, probs, 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(batch, q_len, heads, dim).astype(q.dtype)


def cudnn_attention(q, k, v, *, q_positions, k_positions, causal, mask, kv_length, rope_base,
                    softcap, scale, rotate_keys=True):
    """cuDNN fused attention (jax.nn.dot_product_attention) with RoPE applied by XLA."""
    if softcap is not None:
        raise ValueError("The cudnn backend has no logit soft-capping; use 'pallas' or 'xla'.")
    dim = q.shape[-1]
    if rope_base is not None:
        q = apply_rope(q, *rope_cos_sin(q_positions, dim, rope_base))
        if rotate_keys:
            k = apply_rope(k, *rope_cos_sin(k_positions, dim, rope_base))
    visible = visibility(q_positions, k_positions, causal=causal, mask=mask, kv_length=kv_length)
    out = jax.nn.dot_product_attention(q, k, v, mask=visible[:, None], scale=scale,
                                       implementation="cudnn")
    return jnp.where(jnp.any(visible, axis=-1)[:, :, None, None], out, 0.0).astype(q.dtype)


_IMPLEMENTATIONS = {"xla": xla_attention, "cudnn": cudnn_attention, "pallas": pallas_attention}


def check_backend(backend: str) -> str:
    """`backend` if it names one ("auto" or one of BACKENDS), else a ValueError listing them."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"Unknown attention backend {backend!r}; choose one of {('auto', *BACKENDS)}."
        )
    return backend


def select_backend(backend: str, *, head_dim: int) -> str:
    """Resolves "auto" to the fastest backend that can serve this call; validates names."""
    if check_backend(backend) != "auto":
        return backend
    if jax.default_backend() != "gpu":
        reason = "no GPU (Pallas would run in the slow interpret mode)"
    elif not supports_head_dim(head_dim):
        reason = f"head_dim {head_dim} is not a power of two >= 32 (Pallas kernel limit)"
    else:
        return "pallas"
    logging.log_first_n(logging.INFO, "rope_attention: 'auto' uses 'xla' because %s.", 1, reason)
    return "xla"


def _per_batch(x, batch: int, name: str):
    if x.ndim == 1:
        return jnp.broadcast_to(x[None, :], (batch, x.shape[0]))
    if x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]}, expected {batch}.")
    return x


def rope_attention(
    q: Float[Array, "batch q_len heads dim"],
    k: Float[Array, "batch kv_len kv_heads dim"],
    v: Float[Array, "batch kv_len kv_heads dim"],
    *,
    q_positions: Int[Array, " q_len"] | Int[Array, "batch q_len"],
    k_positions: Int[Array, " kv_len"] | Int[Array, "batch kv_len"],
    causal: bool = False,
    mask: Bool[Array, "q_len kv_len"] | Bool[Array, "batch q_len kv_len"] | None = None,
    kv_length: Int[Array, " batch"] | None = None,
    rope_base: float | None = 10_000.0,
    softcap: float | None = None,
    scale: float | None = None,
    rotate_keys: bool = True,
    backend: str = "auto",
) -> Float[Array, "batch q_len heads dim"]:
    """Multi-head attention with fused RoPE, GQA, masks and soft-capping (see module docstring).

    `rotate_keys=False` means k already carries its rotation (a KV cache stores rotated keys).
    """
    batch, _, heads, dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads}).")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}.")
    name = select_backend(backend, head_dim=dim)
    if mask is not None and mask.ndim == 2:
        mask = jnp.broadcast_to(mask[None], (batch, *mask.shape))
    return _IMPLEMENTATIONS[name](
        q, k, v, q_positions=_per_batch(q_positions, batch, "q_positions"),
        k_positions=_per_batch(k_positions, batch, "k_positions"), causal=causal, mask=mask,
        kv_length=kv_length, rope_base=rope_base, softcap=softcap,
        scale=dim**-0.5 if scale is None else scale, rotate_keys=rotate_keys,
    )
