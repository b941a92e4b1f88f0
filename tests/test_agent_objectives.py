"""The agent's distributions and objectives against closed forms, float64 numpy references,
Monte-Carlo estimates and hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.distributions import Binned, Bins, Categorical, Multipart, symexp, symlog
from agent.objectives import lambda_returns, pmpo_loss


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logits(key, *shape):
    return 2.0 * jax.random.normal(jax.random.key(key), shape)


def test_categorical_matches_numpy():
    p, q = logits(0, 5, 7), logits(1, 5, 7)
    action = jnp.array([0, 3, 6, 2, 2], jnp.int32)
    lp, lq = np_log_softmax(p), np_log_softmax(q)
    dist = Categorical(p)
    np.testing.assert_allclose(dist.log_prob(action), lp[np.arange(5), np.asarray(action)],
                               rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), -(np.exp(lp) * lp).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(dist.kl(Categorical(q)), (np.exp(lp) * (lp - lq)).sum(-1),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(dist.mode(), np.argmax(np.asarray(p), -1))


def test_categorical_samples_follow_the_probabilities():
    dist = Categorical(jnp.log(jnp.array([0.5, 0.3, 0.2])))
    draws = jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), 20000))
    freq = np.bincount(np.asarray(draws), minlength=3) / 20000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.015)  # 4 standard errors


def test_multipart_is_the_sum_of_its_parts():
    a, b = logits(2, 4, 121), logits(3, 4, 2)
    c, d = logits(4, 4, 121), logits(5, 4, 2)
    action = jnp.array([[0, 1], [120, 0], [7, 1], [60, 0]], jnp.int32)
    dist = Multipart((Categorical(a), Categorical(b)))
    other = Multipart((Categorical(c), Categorical(d)))
    la, lb = np_log_softmax(a), np_log_softmax(b)
    rows = np.arange(4)
    want = la[rows, action[:, 0]] + lb[rows, action[:, 1]]
    np.testing.assert_allclose(dist.log_prob(action), want, rtol=1e-5)
    np.testing.assert_allclose(dist.kl(other), Categorical(a).kl(Categorical(c))
                               + Categorical(b).kl(Categorical(d)), rtol=1e-5)
    assert dist.sample(jax.random.key(0)).shape == (4, 2)


def test_binned_density_integrates_to_one_and_is_exact():
    # One dimension on [-2, 1] with 3 bins of width 1: densities p_i / 1.
    probs = np.array([0.2, 0.5, 0.3])
    dist = Binned(jnp.log(jnp.asarray(probs, jnp.float32))[None], low=(-2.0,), high=(1.0,))
    for x, p in ((-1.5, 0.2), (-0.01, 0.5), (0.0, 0.3), (0.99, 0.3), (5.0, 0.3), (-9.0, 0.2)):
        np.testing.assert_allclose(dist.log_prob(jnp.array([x])), math.log(p), rtol=1e-5)
    # Two dimensions, width 0.5 on [-1, 1]: a fine Riemann sum of the density is 1.
    dist2 = Binned(logits(6, 2, 4), low=(-1.0, -1.0), high=(1.0, 1.0))
    grid = jnp.linspace(-1.0, 1.0, 201)[:-1] + 0.005
    xs = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    total = float(jnp.sum(jnp.exp(jax.vmap(dist2.log_prob)(xs))) * 0.01 ** 2)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_binned_entropy_and_kl_match_monte_carlo():
    low, high = (-1.0, 0.0, -3.0), (1.0, 0.5, 3.0)
    p = Binned(logits(7, 3, 11), low=low, high=high)
    q = Binned(logits(8, 3, 11), low=low, high=high)
    x = jax.vmap(p.sample)(jax.random.split(jax.random.key(1), 40000))  # [n, 3]
    assert np.all(np.asarray(x) >= np.asarray(low)) and np.all(np.asarray(x) <= np.asarray(high))
    lp, lq = jax.vmap(p.log_prob)(x), jax.vmap(q.log_prob)(x)
    kl_mc, kl_se = float(jnp.mean(lp - lq)), float(jnp.std(lp - lq)) / 200
    ent_mc, ent_se = float(-jnp.mean(lp)), float(jnp.std(lp)) / 200
    assert abs(float(p.kl(q)) - kl_mc) < 4 * kl_se
    assert abs(float(p.entropy()) - ent_mc) < 4 * ent_se
    # Closed form of the KL: the per-dimension categorical KLs, in float64.
    lp64, lq64 = np_log_softmax(p.logits), np_log_softmax(q.logits)
    np.testing.assert_allclose(p.kl(q), (np.exp(lp64) * (lp64 - lq64)).sum(), rtol=1e-4)


def test_binned_mode_is_the_centre_of_the_likeliest_bin():
    dist = Binned(jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])), low=(0.0, -3.0),
                  high=(3.0, 3.0))
    np.testing.assert_allclose(dist.mode(), [1.5, -2.0], rtol=1e-6)


def test_symlog_symexp_are_inverse():
    x = jnp.array([-1e4, -3.0, -0.5, 0.0, 0.25, 7.0, 1e5])
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5)
    np.testing.assert_allclose(symlog(jnp.array([math.e - 1.0])), [1.0], rtol=1e-6)


def test_two_hot_by_hand():
    bins = Bins(-1.0, 1.0, 3)  # centres -1, 0, 1 in symlog space
    np.testing.assert_allclose(bins.two_hot(symexp(jnp.array(0.25))), [0.0, 0.75, 0.25],
                               atol=1e-6)
    np.testing.assert_allclose(bins.two_hot(jnp.array(-100.0)), [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(bins.two_hot(jnp.array(100.0)), [0.0, 0.0, 1.0], atol=1e-6)


def test_two_hot_round_trips_through_decode():
    bins = Bins()
    y = jnp.array([-250.0, -1.0, 0.0, 0.003, 1.0, 12.5, 1000.0])
    target = bins.two_hot(y)
    np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.sum(np.asarray(target) * bins.centres, -1), symlog(y), atol=1e-5)
    # Logits that put (almost) exactly the two-hot mass decode to y by the mean.
    np.testing.assert_allclose(bins.decode(jnp.log(target + 1e-30)), y, rtol=1e-4, atol=1e-4)


def test_decode_by_mode_ignores_spread_mass():
    bins = Bins(-2.0, 2.0, 5)  # centres -2..2
    probs = jnp.array([0.3, 0.0, 0.4, 0.0, 0.3])  # mean 0 as well, but mode is bin 2
    assert float(bins.decode(jnp.log(probs + 1e-30), how="mode")) == 0.0
    probs = jnp.array([0.35, 0.0, 0.3, 0.0, 0.35])  # spread mass: the mean is 0, the mode -2
    mode = bins.decode(jnp.log(probs + 1e-30), how="mode")
    np.testing.assert_allclose(mode, symexp(jnp.array(-2.0)), rtol=1e-6)


def test_hl_gauss_matches_the_normal_cdf():
    bins = Bins(-3.0, 3.0, 7)
    y, sigma = symexp(jnp.array(0.3)), 0.6
    got = np.asarray(bins.hl_gauss(y, sigma))
    edges = np.arange(-3.5, 4.0, 1.0)
    cdf = np.array([0.5 * (1 + math.erf((e - 0.3) / (sigma * math.sqrt(2)))) for e in edges])
    want = np.diff(cdf) / (cdf[-1] - cdf[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Far from the edges the expectation is symlog(y) (the Gaussian is symmetric).
    wide = Bins()
    np.testing.assert_allclose(np.sum(np.asarray(wide.hl_gauss(jnp.array(3.0))) * wide.centres),
                               symlog(jnp.array(3.0)), atol=1e-5)


def np_lambda_returns(r, v, c, gamma, lam):
    out, ret = np.zeros(len(r)), v[-1]
    for t in reversed(range(len(r))):
        ret = r[t] + gamma * c[t] * ((1 - lam) * v[t + 1] + lam * ret)
        out[t] = ret
    return out


def test_lambda_returns_by_hand_and_limits():
    r, v, c = jnp.array([1.0, 2.0]), jnp.array([10.0, 20.0, 30.0]), jnp.array([1.0, 1.0])
    # R_1 = 2 + 0.5 (0.5 * 30 + 0.5 * 30) = 17; R_0 = 1 + 0.5 (0.5 * 20 + 0.5 * 17) = 10.25
    np.testing.assert_allclose(lambda_returns(r, v, c, gamma=0.5, lam=0.5), [10.25, 17.0])
    # lambda = 0: one-step targets; lambda = 1: discounted rewards plus the discounted tail.
    np.testing.assert_allclose(lambda_returns(r, v, c, gamma=0.5, lam=0.0), [11.0, 17.0])
    np.testing.assert_allclose(lambda_returns(r, v, c, gamma=0.5, lam=1.0),
                               [1 + 0.5 * 2 + 0.25 * 30, 2 + 0.5 * 30])
    # An episode end cuts everything after it.
    np.testing.assert_allclose(lambda_returns(r, v, jnp.array([0.0, 1.0]), gamma=0.5, lam=0.5),
                               [1.0, 17.0])


def test_lambda_returns_match_numpy_on_batches():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 9)), rng.normal(size=(3, 10))
    c = (rng.uniform(size=(3, 9)) > 0.1).astype(np.float64)
    got = lambda_returns(jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32),
                         jnp.asarray(c, jnp.float32), gamma=0.997, lam=0.95)
    want = np.stack([np_lambda_returns(r[i], v[i], c[i], 0.997, 0.95) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one step more"):
        lambda_returns(jnp.zeros(3), jnp.zeros(3), jnp.ones(3))


def test_pmpo_loss_matches_the_formula_and_its_gradient():
    rng = np.random.default_rng(1)
    logp, adv, kl = rng.normal(size=12), rng.normal(size=12), rng.uniform(size=12)
    valid = np.ones(12, bool)
    valid[[2, 7]] = False
    adv[3] = 0.0  # neither set
    alpha, beta = 0.3, 0.2
    pos, neg = valid & (adv > 0), valid & (adv < 0)
    want = ((1 - alpha) * logp[neg].mean() - alpha * logp[pos].mean() + beta * kl[valid].mean())
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    loss, metrics = pmpo_loss(as32(logp), as32(adv), as32(kl), jnp.asarray(valid), alpha=alpha,
                              beta=beta)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["positive_fraction"], pos.sum() / valid.sum(), rtol=1e-6)
    grad = jax.grad(lambda lp: pmpo_loss(lp, as32(adv), as32(kl), jnp.asarray(valid),
                                         alpha=alpha, beta=beta)[0])(as32(logp))
    want_grad = np.where(pos, -alpha / pos.sum(), 0.0) + np.where(neg, (1 - alpha) / neg.sum(), 0)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)
