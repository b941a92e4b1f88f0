"""`rope_attention` (xla backend) and the Attention module against the float64 reference."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import Attention, causal_mask
from kernels import apply_rope, rope_attention, rope_cos_sin
from tests.reference import attention64, rope64

CASES = [  # batch, q_len, kv_len, heads, kv_heads, dim
    (2, 24, 24, 4, 4, 16),
    (1, 40, 40, 4, 2, 32),
    (3, 7, 68, 8, 2, 8),
    (2, 1, 13, 4, 1, 16),
]


def _inputs(seed, b, lq, lk, h, hkv, d, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=s) for s in ((b, lq, h, d), (b, lk, hkv, d), (b, lk, hkv, d)))
    return (jnp.asarray(x, dtype) for x in (q, k, v))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", ["plain", "causal", "mask_softcap", "kv_length"])
def test_matches_float64_reference(case, variant):
    b, lq, lk = case[:3]
    q, k, v = _inputs(zlib.crc32(repr((case, variant)).encode()), *case)
    q_pos = jnp.arange(lk - lq, lk, dtype=jnp.int32)  # queries are the last lq keys
    k_pos = jnp.arange(lk, dtype=jnp.int32)
    kw = {}
    if variant == "causal":
        kw = {"causal": True}
    if variant == "mask_softcap":
        rng = np.random.default_rng(1)
        kw = {"mask": jnp.asarray(rng.random((b, lq, lk)) < 0.7), "softcap": 2.0}
    if variant == "kv_length":
        kw = {"kv_length": jnp.asarray(np.arange(b) % lk + 1, jnp.int32), "causal": True}
    got = rope_attention(q, k, v, q_positions=q_pos, k_positions=k_pos, backend="xla", **kw)
    want = attention64(q, k, v, q_pos=q_pos, k_pos=k_pos, **kw)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_gradients_match_float64_finite_differences():
    q, k, v = _inputs(3, 1, 5, 6, 2, 1, 4)
    pos_q, pos_k = jnp.arange(1, 6, dtype=jnp.int32), jnp.arange(6, dtype=jnp.int32)

    def loss(q, k, v):
        out = rope_attention(q, k, v, q_positions=pos_q, k_positions=pos_k, causal=True,
                             softcap=3.0, backend="xla")
        return jnp.sum(out * jnp.cos(out))

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    ref = lambda q, k, v: np.sum((o := attention64(q, k, v, q_pos=pos_q, k_pos=pos_k, causal=True,
                                                   softcap=3.0)) * np.cos(o))
    args = [np.asarray(a, np.float64) for a in (q, k, v)]
    for i, grad in enumerate(grads):
        numeric = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            up, down = [a.copy() for a in args], [a.copy() for a in args]
            up[i][idx] += 1e-6
            down[i][idx] -= 1e-6
            numeric[idx] = (ref(*up) - ref(*down)) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_gqa_equals_mha_with_repeated_kv():
    q, k, v = _inputs(4, 2, 9, 9, 8, 2, 16)
    pos = jnp.arange(9, dtype=jnp.int32)
    gqa = rope_attention(q, k, v, q_positions=pos, k_positions=pos, causal=True)
    mha = rope_attention(q, jnp.repeat(k, 4, axis=2), jnp.repeat(v, 4, axis=2),
                         q_positions=pos, k_positions=pos, causal=True)
    np.testing.assert_allclose(gqa, mha, rtol=1e-6, atol=1e-6)


def test_masked_keys_get_exactly_zero_weight():
    q, k, v = _inputs(5, 2, 6, 10, 4, 2, 8)
    pos_q, pos_k = jnp.arange(6, dtype=jnp.int32), jnp.arange(10, dtype=jnp.int32)
    mask = jnp.asarray(np.random.default_rng(0).random((2, 6, 10)) < 0.5).at[:, :, 0].set(True)
    out = rope_attention(q, k, v, q_positions=pos_q, k_positions=pos_k, mask=mask)
    # Huge values at keys no query sees must not change a single bit of the output.
    unseen = ~jnp.any(mask, axis=1)  # [batch, kv_len]
    v_poisoned = jnp.where(unseen[:, :, None, None], 1e30, v)
    k_poisoned = jnp.where(unseen[:, :, None, None], 1e3, k)
    out2 = rope_attention(q, k_poisoned, v_poisoned, q_positions=pos_q, k_positions=pos_k,
                          mask=mask)
    assert bool(jnp.any(unseen))
    np.testing.assert_array_equal(out, out2)


def test_query_that_sees_nothing_returns_zeros():
    q, k, v = _inputs(6, 1, 3, 4, 2, 2, 8)
    mask = jnp.asarray([[[True] * 4, [False] * 4, [True, False, False, False]]])
    pos = jnp.arange(4, dtype=jnp.int32)
    out = rope_attention(q, k, v, q_positions=pos[:3], k_positions=pos, mask=mask)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    np.testing.assert_allclose(out[0, 2], v[0, 0], rtol=1e-6)


def test_softcap_bounds_logits():
    """With a cap c, attention weights of any two visible keys differ by at most exp(2c)."""
    q, k, v = _inputs(7, 1, 1, 2, 1, 1, 4)
    q, k = q * 100.0, k.at[0, 1].multiply(-1.0) * 100.0  # logits ~ +-1e4 before capping
    v = jnp.asarray([[[[1.0, 0, 0, 0]], [[0.0, 1, 0, 0]]]])
    pos = jnp.zeros((2,), jnp.int32)
    out = rope_attention(q, k, v, q_positions=pos[:1], k_positions=pos, softcap=1.0)
    w = np.asarray(out[0, 0, 0, :2], np.float64)
    assert w.min() > 0 and w.max() / w.min() <= np.exp(2.0) * (1 + 1e-5)
    uncapped = rope_attention(q, k, v, q_positions=pos[:1], k_positions=pos)
    assert float(jnp.min(uncapped[0, 0, 0, :2])) < 1e-6  # without the cap one key takes all


def test_rope_relative_positions_and_identity():
    rng = np.random.default_rng(8)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))

    def logit(pq, pk):
        rq = apply_rope(q, *rope_cos_sin(jnp.asarray([[pq]], jnp.int32), 16, 10_000.0))
        rk = apply_rope(k, *rope_cos_sin(jnp.asarray([[pk]], jnp.int32), 16, 10_000.0))
        return float(jnp.sum(rq * rk))

    for shift in (1, 17, 300):
        assert logit(5 + shift, 2 + shift) == pytest.approx(logit(5, 2), rel=1e-4, abs=1e-4)
    assert logit(5, 2) != pytest.approx(logit(5, 3), rel=1e-3)
    zero = jnp.zeros((1, 1), jnp.int32)
    np.testing.assert_array_equal(apply_rope(q, *rope_cos_sin(zero, 16, 10_000.0)), q)
    pos = jnp.asarray([[0, 3, 1000]], jnp.int32)
    x = jnp.asarray(rng.normal(size=(1, 3, 2, 16)), jnp.float32)
    np.testing.assert_allclose(apply_rope(x, *rope_cos_sin(pos, 16, 10_000.0)),
                               rope64(x, pos, 10_000.0), rtol=1e-4, atol=1e-4)


def test_attention_module_matches_reference_and_backend_errors():
    attn = Attention(32, 4, kv_heads=2, softcap=5.0, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 6, 32)), jnp.float32)
    pos = jnp.arange(6, dtype=jnp.int32)
    mask = jnp.asarray(causal_mask(6))
    q, k, v = attn.project(x)
    want = attention64(q, k, v, q_pos=pos, k_pos=pos, mask=mask, softcap=5.0)
    got = attn(x, positions=pos, mask=mask)
    np.testing.assert_allclose(got, np.asarray(attn.merge(jnp.asarray(want, jnp.float32))),
                               rtol=1e-5, atol=1e-5)
    # QK-norm: q and k heads have unit RMS before rotation.
    np.testing.assert_allclose(jnp.mean(q**2, -1), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="Unknown attention backend 'tpu'"):
        rope_attention(q, k, v, q_positions=pos, k_positions=pos, backend="tpu")
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        Attention(32, 4, kv_heads=3, key=jax.random.key(0))
