"""Independent float64 numpy references used by several test files."""

import numpy as np


def rope64(x, positions, base):
    """Half-split RoPE of x [..., length, heads, dim] at positions [..., length], in float64."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    freqs = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    angles = np.asarray(positions, np.float64)[..., None] * freqs
    cos, sin = np.cos(angles)[..., None, :], np.sin(angles)[..., None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention64(q, k, v, *, q_pos, k_pos, causal=False, mask=None, kv_length=None,
                rope_base=10_000.0, softcap=None):
    """Loop-free float64 attention with heads repeated for GQA; q [b, lq, h, d]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, h, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    q_pos = np.broadcast_to(q_pos, (b, lq))
    k_pos = np.broadcast_to(k_pos, (b, lk))
    if rope_base is not None:
        q, k = rope64(q, q_pos, rope_base), rope64(k, k_pos, rope_base)
    k = np.repeat(k, h // hkv, axis=2)
    v = np.repeat(v, h // hkv, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    visible = np.ones((b, lq, lk), bool)
    if mask is not None:
        visible &= np.broadcast_to(mask, (b, lq, lk))
    if causal:
        visible &= k_pos[:, None, :] <= q_pos[:, :, None]
    if kv_length is not None:
        visible &= np.arange(lk)[None, None, :] < np.asarray(kv_length)[:, None, None]
    visible = visible[:, None]
    logits = np.where(visible, logits, -np.inf)
    peak = np.max(np.where(visible, logits, -1e300), axis=-1, keepdims=True)
    weights = np.where(visible, np.exp(logits - peak), 0.0)
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)
