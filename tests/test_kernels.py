"""Pallas and cuDNN backends against the float64 reference, the KV cache, and CUDA lowering.

Pallas runs in interpret mode on CPU; `test_pallas_lowers_for_cuda` runs the real Pallas->Triton
lowering for an H100 so that GPU-only compile errors show up on a CPU machine.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import block_causal_mask
from kernels import KVCache, cached_attention, rope_attention
from kernels.flash import pallas_attention
from tests.reference import attention64

ON_GPU = jax.default_backend() == "gpu"
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}  # max abs error relative to max |reference|


def _inputs(seed, b, lq, lk, h, hkv, d, dtype):
    rng = np.random.default_rng(seed)
    shapes = ((b, lq, h, d), (b, lk, hkv, d), (b, lk, hkv, d))
    return tuple(jnp.asarray(rng.normal(size=s), dtype) for s in shapes)


def _close(got, want, dtype):
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= TOLERANCE[dtype] * scale


CASES = [  # b, lq, lk, h, hkv, d, options
    (2, 24, 24, 4, 4, 32, {"causal": True}),
    (1, 40, 40, 4, 2, 64, {"softcap": 5.0, "mask": 0.6}),
    (2, 5, 68, 8, 2, 32, {"causal": True, "kv_length": (60, 17)}),
    (1, 17, 17, 4, 1, 32, {"causal": True, "softcap": 2.0, "mask": 0.8}),
]
BACKENDS = ["pallas"] + (["cudnn"] if ON_GPU else [])


def _case_args(case, seed, dtype):
    b, lq, lk, h, hkv, d, options = case
    q, k, v = _inputs(seed, b, lq, lk, h, hkv, d, dtype)
    kw = dict(options)
    if "mask" in kw:
        kw["mask"] = jnp.asarray(np.random.default_rng(seed).random((b, lq, lk)) < kw["mask"])
    if "kv_length" in kw:
        kw["kv_length"] = jnp.asarray(kw["kv_length"], jnp.int32)
    pos = {"q_positions": jnp.arange(lk - lq, lk, dtype=jnp.int32),
           "k_positions": jnp.arange(lk, dtype=jnp.int32)}
    return (q, k, v), pos, kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_float64(backend, dtype, case):
    if backend == "cudnn" and "softcap" in CASES[case][-1]:
        pytest.skip("cudnn has no soft-capping")
    (q, k, v), pos, kw = _case_args(CASES[case], case, dtype)
    out = rope_attention(q, k, v, backend=backend, **pos, **kw)
    assert out.dtype == dtype and out.shape == q.shape
    want = attention64(q, k, v, q_pos=pos["q_positions"], k_pos=pos["k_positions"], **kw)
    _close(out, want, dtype)


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_pallas_gradients_match_xla(case):
    """The custom VJP (dq kernel, dk/dv kernel, GQA sums) against autodiff of the reference."""
    (q, k, v), pos, kw = _case_args(CASES[case], 10 + case, jnp.float32)
    w = jnp.asarray(np.random.default_rng(case).normal(size=q.shape), jnp.float32)

    def loss(backend, q, k, v):
        return jnp.sum(w * rope_attention(q, k, v, backend=backend, **pos, **kw))

    got = jax.grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_pallas_bf16_gradients_close_to_float32():
    """bf16 inputs through the custom VJP: gradients within 5% (of the largest entry) of the
    float32 reference gradients of the same values."""
    (q, k, v), pos, kw = _case_args(CASES[1], 20, jnp.bfloat16)
    w = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)

    def loss(backend, q, k, v):
        out = rope_attention(q, k, v, backend=backend, **pos, **kw)
        return jnp.sum(w * out.astype(jnp.float32))

    got = jax.grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2))(q, k, v)
    as32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(*as32)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == jnp.bfloat16
        _close(g, np.asarray(r, np.float64), jnp.bfloat16)


def test_pallas_rejects_unsupported_head_dim():
    q = jnp.ones((1, 4, 2, 24))
    pos = jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        rope_attention(q, q, q, q_positions=pos, k_positions=pos, backend="pallas")


def _frame_inputs(frames=4, tokens=3, heads=4, kv_heads=2, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, frames * tokens)
    q = jnp.asarray(rng.normal(size=(*shape, heads, dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*shape, kv_heads, dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(*shape, kv_heads, dim)), jnp.float32)
    return q, k, v


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_cache_frame_by_frame_equals_full_attention(backend):
    frames, tokens = 4, 3
    q, k, v = _frame_inputs(frames, tokens)
    pos = jnp.arange(frames * tokens, dtype=jnp.int32)
    full = rope_attention(q, k, v, q_positions=pos, k_positions=pos, softcap=4.0, backend="xla",
                          mask=jnp.asarray(block_causal_mask(frames, tokens)))
    within = jnp.ones((tokens, tokens), bool)
    cache = KVCache.create(2, 16, 2, 32)
    step = jax.jit(lambda c, q, k, v: cached_attention(c, q, k, v, mask=within, softcap=4.0,
                                                       backend=backend), donate_argnums=0)
    for t in range(frames):
        frame = slice(t * tokens, (t + 1) * tokens)
        for _ in range(2):  # a repeated (denoising) write of the same frame changes nothing
            out, cache = step(cache, q[:, frame], k[:, frame], v[:, frame])
        np.testing.assert_allclose(out, full[:, frame], rtol=2e-5, atol=2e-5)
        cache = cache.commit(tokens)
    assert int(cache.index) == frames * tokens


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_uncommitted_writes_leave_committed_slots(backend):
    q, k, v = _frame_inputs(frames=3, tokens=2)
    cache = KVCache.create(2, 8, 2, 32)
    _, cache = cached_attention(cache, q[:, :2], k[:, :2], v[:, :2], backend=backend)
    cache = cache.commit(2)
    committed = np.asarray(cache.keys[:, :2]), np.asarray(cache.values[:, :2])
    for t in (1, 2):  # overwrite the scratch slots with different frames
        _, cache = cached_attention(cache, q[:, 2 * t:2 * t + 2], k[:, 2 * t:2 * t + 2],
                                    v[:, 2 * t:2 * t + 2], backend=backend)
    np.testing.assert_array_equal(cache.keys[:, :2], committed[0])
    np.testing.assert_array_equal(cache.values[:, :2], committed[1])
    np.testing.assert_array_equal(cache.values[:, 2:4], v[:, 4:6])
    assert int(cache.index) == 2
    assert not np.any(np.asarray(cache.values[:, 4:]))


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_donated_cache_is_updated_in_place(backend):
    q, k, v = _frame_inputs(frames=1, tokens=2)
    cache = KVCache.create(2, 8, 2, 32)
    step = jax.jit(lambda c, q, k, v: cached_attention(c, q, k, v, backend=backend),
                   donate_argnums=0)
    _, cache = step(cache, q, k, v)  # compile once; buffers below are the steady state
    pointers = cache.keys.unsafe_buffer_pointer(), cache.values.unsafe_buffer_pointer()
    _, cache = step(cache, q, k, v)
    assert (cache.keys.unsafe_buffer_pointer(), cache.values.unsafe_buffer_pointer()) == pointers


def test_cache_overflow_raises():
    q, k, v = _frame_inputs(frames=1, tokens=3)
    cache = KVCache.create(2, 4, 2, 32).commit(2)
    with pytest.raises(Exception, match="overflow the KV cache"):
        jax.block_until_ready(eqx.filter_jit(cached_attention)(cache, q, k, v))
    with pytest.raises(Exception, match="past the cache capacity"):
        jax.block_until_ready(eqx.filter_jit(lambda c: c.commit(3))(cache))


def test_make_room_slides_window_and_keeps_relative_positions():
    """A full cache slides: the oldest slots go, positions keep counting, outputs match a
    reference that sees only the most recent slots."""
    q, k, v = _frame_inputs(frames=5, tokens=1, seed=3)
    cache = KVCache.create(2, 3, 2, 32)
    for t in range(5):
        cache = cache.make_room(1)
        out, cache = cached_attention(cache, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
        cache = cache.commit(1)
    assert int(cache.index) == 3 and int(cache.offset) == 2
    pos = jnp.arange(2, 5, dtype=jnp.int32)
    want = rope_attention(q[:, 4:5], k[:, 2:5], v[:, 2:5], q_positions=pos[-1:], k_positions=pos)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)


def test_pallas_lowers_for_cuda():
    """Forward, backward (dq, dk/dv) and the in-place cache write lower through Pallas' Triton
    path for CUDA (compute capability 9.0 is assumed when no GPU is present)."""

    def loss(q, k, v, pos, mask, kv_len):
        out = pallas_attention(q, k, v, q_positions=pos, k_positions=pos, causal=True, mask=mask,
                               kv_length=kv_len, rope_base=1e4, softcap=50.0, scale=0.125,
                               interpret=False)
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    for dtype, mask in ((jnp.bfloat16, None), (jnp.float32, jax.ShapeDtypeStruct((2, 40, 40),
                                                                                 jnp.bool_))):
        q = jax.ShapeDtypeStruct((2, 40, 4, 64), dtype)
        kv = jax.ShapeDtypeStruct((2, 40, 2, 64), dtype)
        pos = jax.ShapeDtypeStruct((2, 40), jnp.int32)
        text = grad.trace(q, kv, kv, pos, mask, jax.ShapeDtypeStruct((2,), jnp.int32)).lower(
            lowering_platforms=("cuda",)).as_text()
        for kernel in ("rope_flash_forward", "rope_flash_dq", "rope_flash_dkv"):
            assert kernel in text
