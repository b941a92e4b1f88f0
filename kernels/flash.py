"""Pallas RoPE-fused flash attention, forward and backward (custom VJP).

Kernels are written against the Triton Pallas backend (blocked loads, `pl.dot`), so they compile
for NVIDIA GPUs and run on CPU in interpret mode. Layout and tricks:
- grid (batch, head, query block); K/V stay whole in each program and are walked block by block
  with an online softmax; GQA reads K/V head h // group without repeating it in memory;
- RoPE is fused: each program loads the two halves of q (and k) as separate ref slices, rotates
  them with the cos/sin tables of their positions and forms logits as two half-width dots;
- key visibility is `index < kv_len[b]`, `k_pos <= q_pos` when causal, and an optional dense mask;
  the loop over key blocks stops at kv_len, so unused cache slots are never read;
- lengths are padded to power-of-two blocks (Triton needs them); padded keys are invisible;
- the backward pass recomputes probabilities from the saved log-sum-exp: one kernel for dq
  (per query block) and one for dk/dv (per key block and query head; GQA groups are summed after).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from kernels.rope import rope_cos_sin

MIN_BLOCK, MAX_BLOCK = 16, 64
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Static parameters of one flash-attention call."""

    scale: float
    softcap: float | None
    causal: bool
    rotate_k: bool
    has_mask: bool
    block_q: int
    block_k: int
    interpret: bool


def supports_head_dim(dim: int) -> bool:
    """Triton dots need power-of-two operands of at least 16, so each RoPE half must be one."""
    return dim >= 2 * MIN_BLOCK and dim & (dim - 1) == 0


def block_size(length: int) -> int:
    return min(MAX_BLOCK, max(MIN_BLOCK, 1 << (max(length, 1) - 1).bit_length()))


def _rotate(x1, x2, cos, sin):
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


def _unrotate(d1, d2, cos, sin):
    """Transpose of `_rotate`: maps gradients w.r.t. rotated halves back to the inputs."""
    return d1 * cos + d2 * sin, d2 * cos - d1 * sin


def _load_rotated(ref, rows, cos_ref, sin_ref, half, rotate, scale, dtype):
    """Loads rows of a [length, dim] ref, rotates and scales them: two [n, half] halves."""
    x1 = ref[rows, :half].astype(jnp.float32)
    x2 = ref[rows, half:].astype(jnp.float32)
    if rotate:
        x1, x2 = _rotate(x1, x2, cos_ref[rows, :], sin_ref[rows, :])
    return (x1 * scale).astype(dtype), (x2 * scale).astype(dtype)


def _scores(cfg, q1, q2, k1, k2, q_pos, k_pos, k_index, kv_len, mask):
    """Soft-capped logits [bq, bk] and their visibility."""
    s = pl_triton.dot(q1, k1, trans_b=True) + pl_triton.dot(q2, k2, trans_b=True)
    if cfg.softcap is not None:
        s = cfg.softcap * jnp.tanh(s / cfg.softcap)
    visible = k_index[None, :] < kv_len
    if cfg.causal:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    if mask is not None:
        visible = visible & (mask != 0)
    return s, visible


def _key_block(cfg, r, j, q1, q2, q_pos, kv_len):
    """Key block j against a query block: (rows, rotated key halves, logits [bq, bk],
    visibility)."""
    half, bk = r["q"].shape[-1] // 2, cfg.block_k
    rows = pl.ds(j * bk, bk)
    k1, k2 = _load_rotated(r["k"], rows, r["cos_k"], r["sin_k"], half, cfg.rotate_k, 1.0,
                           r["k"].dtype)
    mask = r["mask"][:, rows] if cfg.has_mask else None
    k_index = j * bk + jnp.arange(bk, dtype=jnp.int32)
    s, visible = _scores(cfg, q1, q2, k1, k2, q_pos, r["k_pos"][rows], k_index, kv_len, mask)
    return rows, k1, k2, s, visible


def _softcap_grad(cfg, ds, s):
    if cfg.softcap is None:
        return ds
    return ds * (1.0 - jnp.square(s / cfg.softcap))


def _unpack(cfg, refs, n_in):
    """Splits the kernel's refs into named inputs (mask may be absent) and outputs."""
    names = ["q", "k", "v", "cos_q", "sin_q", "cos_k", "sin_k", "q_pos", "k_pos", "kv_len"]
    names += ["mask"] if cfg.has_mask else []
    extra = n_in - len(names)
    ins = dict(zip(names, refs[: len(names)], strict=True))
    ins["mask"] = ins.get("mask")
    return ins, refs[len(names): len(names) + extra], refs[len(names) + extra:]


def _forward_kernel(*refs, cfg: FlashConfig, n_in: int):
    r, _, (o_ref, lse_ref) = _unpack(cfg, refs, n_in)
    dim = r["q"].shape[-1]
    half, bq, bk, dtype = dim // 2, cfg.block_q, cfg.block_k, r["k"].dtype
    q1, q2 = _load_rotated(r["q"], slice(None), r["cos_q"], r["sin_q"], half, True, cfg.scale,
                           dtype)
    q_pos = r["q_pos"][:]
    kv_len = r["kv_len"][0]

    def body(j, carry):
        m, total, acc = carry
        rows, _, _, s, visible = _key_block(cfg, r, j, q1, q2, q_pos, kv_len)
        s = jnp.where(visible, s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        acc = acc * alpha[:, None] + pl_triton.dot(p.astype(dtype), r["v"][rows, :])
        return m_new, total * alpha + jnp.sum(p, axis=1), acc

    init = (jnp.full((bq,), _NEG, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, dim), jnp.float32))
    m, total, acc = jax.lax.fori_loop(0, pl.cdiv(kv_len, bk), body, init)
    seen = total > 0.0
    total = jnp.where(seen, total, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / total[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(total), -_NEG)


def _dq_kernel(*refs, cfg: FlashConfig, n_in: int):
    r, (do_ref, lse_ref, delta_ref), (dq_ref,) = _unpack(cfg, refs, n_in)
    dim = r["q"].shape[-1]
    half, bk, dtype = dim // 2, cfg.block_k, r["k"].dtype
    q1, q2 = _load_rotated(r["q"], slice(None), r["cos_q"], r["sin_q"], half, True, cfg.scale,
                           dtype)
    q_pos, kv_len = r["q_pos"][:], r["kv_len"][0]
    do, lse, delta = do_ref[...], lse_ref[...], delta_ref[...]

    def body(j, carry):
        d1, d2 = carry
        rows, k1, k2, s, visible = _key_block(cfg, r, j, q1, q2, q_pos, kv_len)
        p = jnp.where(visible, jnp.exp(s - lse[:, None]), 0.0)
        dp = pl_triton.dot(do, r["v"][rows, :], trans_b=True)
        ds = _softcap_grad(cfg, p * (dp - delta[:, None]), s).astype(dtype)
        return d1 + pl_triton.dot(ds, k1), d2 + pl_triton.dot(ds, k2)

    zeros = jnp.zeros((cfg.block_q, half), jnp.float32)
    d1, d2 = jax.lax.fori_loop(0, pl.cdiv(kv_len, bk), body, (zeros, zeros))
    d1, d2 = _unrotate(d1 * cfg.scale, d2 * cfg.scale, r["cos_q"][...], r["sin_q"][...])
    dq_ref[:, :half] = d1.astype(dq_ref.dtype)
    dq_ref[:, half:] = d2.astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: FlashConfig, n_in: int):
    r, (do_ref, lse_ref, delta_ref), (dk_ref, dv_ref) = _unpack(cfg, refs, n_in)
    dim = r["k"].shape[-1]
    half, bq, bk, dtype = dim // 2, cfg.block_q, cfg.block_k, r["k"].dtype
    k1, k2 = _load_rotated(r["k"], slice(None), r["cos_k"], r["sin_k"], half, cfg.rotate_k, 1.0,
                           dtype)
    v = r["v"][...]
    k_pos, kv_len = r["k_pos"][:], r["kv_len"][0]
    k_index = pl.program_id(2) * bk + jnp.arange(bk, dtype=jnp.int32)

    def body(i, carry):
        dk1, dk2, dv = carry
        rows = pl.ds(i * bq, bq)
        q1, q2 = _load_rotated(r["q"], rows, r["cos_q"], r["sin_q"], half, True, cfg.scale, dtype)
        mask = r["mask"][rows, :] if cfg.has_mask else None
        s, visible = _scores(cfg, q1, q2, k1, k2, r["q_pos"][rows], k_pos, k_index, kv_len, mask)
        p = jnp.where(visible, jnp.exp(s - lse_ref[rows][:, None]), 0.0)
        do = do_ref[rows, :]
        dv = dv + pl_triton.dot(p.astype(dtype), do, trans_a=True)
        dp = pl_triton.dot(do, v, trans_b=True)
        ds = _softcap_grad(cfg, p * (dp - delta_ref[rows][:, None]), s).astype(dtype)
        dk1 = dk1 + pl_triton.dot(ds, q1, trans_a=True)
        return dk1, dk2 + pl_triton.dot(ds, q2, trans_a=True), dv

    zeros = jnp.zeros((bk, half), jnp.float32)
    n_q_blocks = r["q"].shape[0] // bq
    dk1, dk2, dv = jax.lax.fori_loop(0, n_q_blocks, body,
                                     (zeros, zeros, jnp.zeros((bk, dim), jnp.float32)))
    if cfg.rotate_k:
        dk1, dk2 = _unrotate(dk1, dk2, r["cos_k"][...], r["sin_k"][...])
    dk_ref[:, :half] = dk1.astype(dk_ref.dtype)
    dk_ref[:, half:] = dk2.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(cfg, q_shape, k_shape, *, per_key_block: bool):
    """BlockSpecs of the shared inputs. Grid (batch, head, block): a query block, or with
    `per_key_block` a key block (then all queries are whole)."""
    _, lq, heads, dim = q_shape
    _, lk, kv_heads, _ = k_shape
    half, group = dim // 2, heads // kv_heads
    bq, bk = cfg.block_q, cfg.block_k
    if per_key_block:
        q_rows, q_block = lq, lambda b, h, j: 0
        k_rows, k_block = bk, lambda b, h, j: j
    else:
        q_rows, q_block = bq, lambda b, h, i: i
        k_rows, k_block = lk, lambda b, h, i: 0
    if cfg.rotate_k:
        k_table = pl.BlockSpec((None, k_rows, half), lambda b, h, x: (b, k_block(b, h, x), 0))
    else:  # a one-block placeholder that is never read
        k_table = pl.BlockSpec((None, bk, half), lambda b, h, x: (b, 0, 0))
    specs = [
        pl.BlockSpec((None, q_rows, None, dim), lambda b, h, x: (b, q_block(b, h, x), h, 0)),
        pl.BlockSpec((None, k_rows, None, dim),
                     lambda b, h, x: (b, k_block(b, h, x), h // group, 0)),
        pl.BlockSpec((None, k_rows, None, dim),
                     lambda b, h, x: (b, k_block(b, h, x), h // group, 0)),
        pl.BlockSpec((None, q_rows, half), lambda b, h, x: (b, q_block(b, h, x), 0)),
        pl.BlockSpec((None, q_rows, half), lambda b, h, x: (b, q_block(b, h, x), 0)),
        k_table,
        k_table,
        pl.BlockSpec((None, q_rows), lambda b, h, x: (b, q_block(b, h, x))),
        pl.BlockSpec((None, k_rows), lambda b, h, x: (b, k_block(b, h, x))),
        pl.BlockSpec((1,), lambda b, h, x: (b,)),
    ]
    if cfg.has_mask:
        specs.append(pl.BlockSpec((None, q_rows, k_rows),
                                  lambda b, h, x: (b, q_block(b, h, x), k_block(b, h, x))))
    return specs


def _row_stat_spec(lq, bq, *, whole: bool):
    if whole:
        return pl.BlockSpec((None, None, lq), lambda b, h, x: (b, h, 0))
    return pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, args, name):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg, n_in=len(args)),
        grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        interpret=cfg.interpret, name=name,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
    )(*args)


def _forward(cfg, inputs):
    q, k = inputs[0], inputs[1]
    batch, lq, heads, dim = q.shape
    grid = (batch, heads, lq // cfg.block_q)
    out_shape = (jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, lq), jnp.float32))
    out_specs = (pl.BlockSpec((None, cfg.block_q, None, dim), lambda b, h, i: (b, i, h, 0)),
                 _row_stat_spec(lq, cfg.block_q, whole=False))
    return _call(_forward_kernel, cfg, grid, _specs(cfg, q.shape, k.shape, per_key_block=False),
                 out_specs, out_shape, inputs, "rope_flash_forward")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def flash_attention(cfg: FlashConfig, *inputs):
    """Padded inputs (q, k, v, cos_q, sin_q, cos_k, sin_k, q_pos, k_pos, kv_len[, mask]) -> out."""
    return _forward(cfg, inputs)[0]


def _flash_fwd(cfg, *inputs):
    out, lse = _forward(cfg, inputs)
    return out, (inputs, out, lse)


def _flash_bwd(cfg, residuals, d_out):
    inputs, out, lse = residuals
    q, k = inputs[0], inputs[1]
    batch, lq, heads, dim = q.shape
    lk, kv_heads = k.shape[1], k.shape[2]
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    extra = (d_out.astype(q.dtype), lse, delta)
    args = (*inputs, *extra)
    q_specs = _specs(cfg, q.shape, k.shape, per_key_block=False)
    row_block = _row_stat_spec(lq, cfg.block_q, whole=False)
    q_block = pl.BlockSpec((None, cfg.block_q, None, dim), lambda b, h, i: (b, i, h, 0))
    dq = _call(_dq_kernel, cfg, (batch, heads, lq // cfg.block_q),
               [*q_specs, q_block, row_block, row_block], q_block,
               jax.ShapeDtypeStruct(q.shape, q.dtype), args, "rope_flash_dq")
    k_specs = _specs(cfg, q.shape, k.shape, per_key_block=True)
    row_whole = _row_stat_spec(lq, cfg.block_q, whole=True)
    q_whole = pl.BlockSpec((None, lq, None, dim), lambda b, h, j: (b, 0, h, 0))
    k_block = pl.BlockSpec((None, cfg.block_k, None, dim), lambda b, h, j: (b, j, h, 0))
    per_head = jax.ShapeDtypeStruct((batch, lk, heads, dim), jnp.float32)
    dk, dv = _call(_dkv_kernel, cfg, (batch, heads, lk // cfg.block_k),
                   [*k_specs, q_whole, row_whole, row_whole], (k_block, k_block),
                   (per_head, per_head), args, "rope_flash_dkv")
    group = heads // kv_heads
    dk = dk.reshape(batch, lk, kv_heads, group, dim).sum(3).astype(k.dtype)
    dv = dv.reshape(batch, lk, kv_heads, group, dim).sum(3).astype(k.dtype)
    return (dq, dk, dv) + (None,) * (len(inputs) - 3)


flash_attention.defvjp(_flash_fwd, _flash_bwd)


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _pad_axis(x, axis: int, length: int, value=0):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def pallas_attention(q, k, v, *, q_positions, k_positions, causal, mask, kv_length, rope_base,
                     softcap, scale, rotate_keys=True, interpret=None):
    """`rope_attention` contract on the Pallas kernels (arguments normalised by the caller)."""
    batch, lq, _, dim = q.shape
    lk = k.shape[1]
    if not supports_head_dim(dim):
        raise ValueError(f"The Pallas attention kernel needs a power-of-two head_dim >= "
                         f"{2 * MIN_BLOCK}, got {dim}; use backend='xla' or 'auto'.")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    cfg = FlashConfig(scale=scale, softcap=softcap, causal=causal,
                      rotate_k=rotate_keys and rope_base is not None, has_mask=mask is not None,
                      block_q=block_size(lq), block_k=block_size(lk), interpret=interpret)
    lq_pad, lk_pad = _round_up(lq, cfg.block_q), _round_up(lk, cfg.block_k)
    half = dim // 2
    if rope_base is None:
        cos_q, sin_q = jnp.ones((batch, lq, half)), jnp.zeros((batch, lq, half))
    else:
        cos_q, sin_q = rope_cos_sin(q_positions, dim, rope_base)
    if cfg.rotate_k:
        cos_k, sin_k = (_pad_axis(t, 1, lk_pad) for t in rope_cos_sin(k_positions, dim, rope_base))
    else:  # keys arrive rotated: a one-block placeholder that the kernels never read
        cos_k = sin_k = jnp.zeros((batch, cfg.block_k, half), jnp.float32)
    valid = jnp.full((batch,), lk, jnp.int32)
    if kv_length is not None:
        valid = jnp.minimum(valid, kv_length.astype(jnp.int32))
    inputs = [
        _pad_axis(q, 1, lq_pad), _pad_axis(k, 1, lk_pad), _pad_axis(v, 1, lk_pad),
        _pad_axis(cos_q, 1, lq_pad), _pad_axis(sin_q, 1, lq_pad), cos_k, sin_k,
        _pad_axis(q_positions, 1, lq_pad), _pad_axis(k_positions, 1, lk_pad), valid,
    ]
    if mask is not None:
        inputs.append(_pad_axis(_pad_axis(mask.astype(jnp.int8), 1, lq_pad), 2, lk_pad))
    return flash_attention(cfg, *inputs)[:, :lq]
