"""Dense layers against float64 numpy formulas, and the runtime shape checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import Attention, Embedding, Linear, RMSNorm, SwiGLU
from kernels import rope_attention


def test_rmsnorm_matches_float64():
    norm = RMSNorm(16, eps=1e-6)
    norm = jax.tree.map(lambda p: p * 0.5 + 0.25, norm)  # non-trivial scale
    x = np.random.default_rng(0).normal(size=(3, 5, 16))
    want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * np.asarray(norm.scale, np.float64)
    np.testing.assert_allclose(norm(jnp.asarray(x, jnp.float32)), want, rtol=2e-6, atol=2e-6)


def test_rmsnorm_keeps_bf16_input_dtype():
    x = jnp.ones((2, 8), jnp.bfloat16) * 3
    y = RMSNorm(8)(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), 1.0, rtol=1e-2)


def test_swiglu_matches_float64():
    mlp = SwiGLU(8, 24, key=jax.random.key(0))
    x = np.random.default_rng(1).normal(size=(4, 8))
    w = np.asarray(mlp.gate_up.weight, np.float64)
    gate, up = np.split(x @ w, 2, axis=-1)
    want = ((gate / (1 + np.exp(-gate))) * up) @ np.asarray(mlp.down.weight, np.float64)
    np.testing.assert_allclose(mlp(jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)


def test_linear_init_and_bias():
    layer = Linear(256, 64, use_bias=True, key=jax.random.key(0))
    assert abs(float(jnp.std(layer.weight)) - 1 / 16) < 0.005
    assert float(jnp.max(jnp.abs(layer.weight))) <= 2 / 16 / 0.87962566 + 1e-6
    zero = Linear(4, 3, init_scale=0.0, key=jax.random.key(0))
    assert not np.any(np.asarray(zero(jnp.ones((2, 4)))))


def test_bf16_compute_dtype():
    layer = Linear(8, 8, compute_dtype="bfloat16", key=jax.random.key(0))
    assert layer.weight.dtype == jnp.float32
    assert layer(jnp.ones((2, 8))).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        Linear(8, 8, compute_dtype="float16", key=jax.random.key(0))


def test_embedding_lookup():
    emb = Embedding(10, 4, key=jax.random.key(0))
    ids = jnp.asarray([[1, 9], [0, 1]], jnp.int32)
    np.testing.assert_array_equal(emb(ids), np.asarray(emb.table)[np.asarray(ids)])


def test_wrong_shapes_raise_clear_errors():
    """jaxtyping + beartype (switched on by pytest) reject wrong ranks, dtypes and sizes."""
    q = jnp.ones((2, 5, 4, 8))
    pos = jnp.arange(5, dtype=jnp.int32)
    with pytest.raises(Exception, match="batch q_len heads dim"):
        rope_attention(q[0], q, q, q_positions=pos, k_positions=pos)  # rank 3 query
    with pytest.raises(Exception, match="kv_len"):
        rope_attention(q, q[:, :3], q, q_positions=pos, k_positions=pos)  # k and v lengths differ
    with pytest.raises(Exception, match="Int"):
        Embedding(10, 4, key=jax.random.key(0))(jnp.ones((3,)))  # float ids
    with pytest.raises(Exception, match="width"):
        Attention(8, 2, key=jax.random.key(0))(jnp.ones((5, 8)), positions=pos)  # no batch axis
