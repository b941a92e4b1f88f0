"""Axial transformer: exact causality in time, masks, remat and dtype policy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import AxialTransformer, modality_mask
from core.transformer import commit


def _model(**kw):
    args = dict(width=32, depth=4, heads=4, kv_heads=2, time_every=2, key=jax.random.key(0))
    return AxialTransformer(**(args | kw))


def _x(b=2, t=5, s=3, w=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, s, w)), jnp.float32)


@pytest.mark.parametrize("jit", [False, True])
def test_no_gradient_flows_from_future_frames(jit):
    model, x = _model(), _x()
    y, pullback = jax.vjp(eqx.filter_jit(model) if jit else model, x)
    for t in range(x.shape[1]):
        cotangent = jnp.zeros_like(y).at[:, t].set(jnp.cos(y[:, t]))
        (g,) = pullback(cotangent)
        g = np.asarray(g)
        assert np.all(g[:, t + 1:] == 0.0), f"frame {t} depends on a later frame"
        assert np.any(g[:, t] != 0.0) and (t == 0 or np.any(g[:, :t] != 0.0))


def test_space_mask_blocks_token_groups():
    """Tokens 0-1 ("patches") may not see token 2 ("latent") in any layer."""
    mask = jnp.asarray(modality_mask([2, 1], [[True, False], [True, True]]))
    model, x = _model(), _x()
    g = jax.grad(lambda x: jnp.sum(model(x, space_mask=mask)[:, :, :2]))(x)
    assert np.all(np.asarray(g)[:, :, 2] == 0.0)


def test_time_mask_separates_frames():
    eye = jnp.broadcast_to(jnp.eye(5, dtype=bool), (2, 5, 5))
    model, x = _model(), _x()
    g = jax.grad(lambda x: jnp.sum(model(x, time_mask=eye)[:, 3]))(x)
    g = np.asarray(g)
    assert np.all(np.delete(g, 3, axis=1) == 0.0) and np.any(g[:, 3] != 0.0)


def test_cached_step_equals_full_forward():
    """Prefill 2 frames, then one frame at a time (each written twice, as denoising steps do,
    then committed): every output equals the full causal forward pass."""
    model, x = _model(), _x(t=5)
    full = model(x)
    caches = model.init_caches(batch=2, tokens=3, capacity=8)
    out, caches = model.step(x[:, :2], caches)
    np.testing.assert_allclose(out, full[:, :2], rtol=2e-5, atol=2e-5)
    caches = commit(caches, 2)
    for t in range(2, 5):
        _, caches = model.step(jnp.zeros_like(x[:, t:t + 1]), caches)  # scratch write
        out, caches = model.step(x[:, t:t + 1], caches)
        np.testing.assert_allclose(out, full[:, t:t + 1], rtol=2e-5, atol=2e-5)
        caches = commit(caches, 1)
    assert [int(c.index) for c in caches] == [5, 5]


def test_remat_same_values_and_gradients():
    plain, remat, x = _model(), _model(remat=True), _x()
    loss = lambda m: jnp.mean(m(x) ** 2)
    np.testing.assert_allclose(loss(plain), loss(remat), rtol=1e-6)
    g1, g2 = eqx.filter_grad(loss)(plain), eqx.filter_grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_compute_close_to_f32():
    f32, bf16, x = _model(), _model(compute_dtype="bfloat16"), _x()
    y32, y16 = f32(x), bf16(x)
    assert y16.dtype == jnp.float32  # residual stream keeps the input dtype
    assert float(jnp.max(jnp.abs(y32 - y16))) < 0.1
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(eqx.filter(bf16, eqx.is_array)))


def test_config_errors():
    with pytest.raises(ValueError, match="no time layer"):
        _model(depth=2, time_every=3)
    with pytest.raises(ValueError, match="divisible by heads"):
        _model(width=30)
