"""Image conversion and metrics against hand computations."""

import jax.numpy as jnp
import numpy as np

from core import laplacian, psnr, ssim, to_float, to_uint8


def test_uint8_round_trip():
    frames = jnp.asarray(np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, -1))
    assert to_float(frames).dtype == jnp.float32 and float(to_float(frames).max()) == 1.0
    np.testing.assert_array_equal(to_uint8(to_float(frames)), frames)


def test_psnr_matches_formula():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 8, 8, 3))
    b = np.clip(a + rng.normal(scale=0.05, size=a.shape), 0, 1)
    want = -10 * np.log10(np.mean((a - b) ** 2, axis=(-3, -2, -1)))
    got = psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.random((4, 32, 32, 3)), jnp.float32)
    np.testing.assert_allclose(ssim(a, a), 1.0, rtol=1e-5)
    noisy = jnp.clip(a + 0.2 * jnp.asarray(rng.normal(size=a.shape), jnp.float32), 0, 1)
    assert float(jnp.max(ssim(a, noisy))) < 0.9


def test_laplacian_is_the_five_point_stencil_on_the_interior():
    """Against a float64 loop over the interior pixels, and closed forms: zero on a linear ramp
    (x + 2y), 2 + 2 = 4 on x^2 + y^2."""
    rng = np.random.default_rng(2)
    a = rng.random((2, 5, 6, 3))
    want = np.zeros((2, 3, 4, 3))
    for i in range(1, 4):
        for j in range(1, 5):
            want[:, i - 1, j - 1] = (a[:, i - 1, j] + a[:, i + 1, j] + a[:, i, j - 1]
                                     + a[:, i, j + 1] - 4 * a[:, i, j])
    got = laplacian(jnp.asarray(a, jnp.float32))
    assert got.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    y, x = np.mgrid[:6, :7].astype(np.float32)
    ramp, bowl = (jnp.asarray(np.stack([f] * 3, -1)) for f in (x + 2 * y, x**2 + y**2))
    np.testing.assert_allclose(laplacian(ramp), 0.0, atol=1e-5)
    np.testing.assert_allclose(laplacian(bowl), 4.0, atol=1e-4)
