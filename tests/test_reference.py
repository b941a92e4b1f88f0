"""The MLP reference (dynamics/reference.py): its action inputs by hand, and on a world with
momentum and a known closed form it learns what copying the previous frame cannot."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dynamics import reference
from dynamics.actions import ActionSpec


def test_action_features_by_hand():
    multi = ActionSpec("multipart", classes=(3, 2))
    got = reference.action_features(jnp.array([[2, 1], [0, 0]]), jnp.array([True, False]), multi)
    np.testing.assert_array_equal(got, [[0, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    cont = ActionSpec("continuous", dim=2)
    got = reference.action_features(jnp.array([[0.5, -1.0]]), jnp.array([True]), cont)
    np.testing.assert_allclose(got, [[0.5, -1.0, 1.0]])


def _momentum_world(rng, clips=96, time=10):
    """z[t] = z[t-1] + (z[t-1] - z[t-2]) + 0.3 a[t] per channel: the motion carries on, and the
    action leading to frame t (model convention) pushes it."""
    a = rng.uniform(-1, 1, (clips, time, 2)).astype(np.float32)
    z = np.zeros((clips, time, 1, 2), np.float32)
    z[:, 0, 0] = rng.uniform(-1, 1, (clips, 2))
    z[:, 1, 0] = z[:, 0, 0] + rng.uniform(-0.2, 0.2, (clips, 2))
    for t in range(2, time):
        z[:, t, 0] = 2 * z[:, t - 1, 0] - z[:, t - 2, 0] + 0.3 * a[:, t]
    return z, a, np.ones((clips, time), bool)


def _fitted_on_momentum():
    """(spec, the reference fitted on the momentum world, held-out clips of that world)."""
    spec = ActionSpec("continuous", dim=2)
    z, a, has = _momentum_world(np.random.default_rng(0))
    model = reference.fit(z, a, has, spec, steps=400, key=jax.random.key(0), batch=128,
                          hidden=64, lr=3e-3)
    return spec, model, _momentum_world(np.random.default_rng(1), clips=32)


def test_reference_learns_momentum_and_the_action():
    spec, model, (zt, at, ht) = _fitted_on_momentum()
    context = 4
    truth = zt[:, context:]
    guess = np.asarray(reference.one_step(model, zt, at, ht, spec, context=context))
    shuffled = np.asarray(reference.one_step(model, zt, np.roll(at, 1, 0), ht, spec,
                                             context=context))
    mse = lambda x: float(np.mean(np.square(x - truth)))
    copy_previous = mse(zt[:, context - 1:-1])
    assert guess.shape == truth.shape
    assert mse(guess) < 0.05 * copy_previous  # it carries the motion on
    assert mse(guess) < 0.2 * mse(shuffled)  # and reads the action


def test_rollout_feeds_its_own_guesses():
    """A reference whose MLP outputs zero guesses z[t - 1]: teacher-forced that is copying the
    previous true frame, in a rollout it is copying the last context frame (hand-computed)."""
    spec = ActionSpec("continuous", dim=2)
    zt, at, ht = _momentum_world(np.random.default_rng(2), clips=4, time=8)
    model = reference.NextLatentMLP(2, 3, hidden=8, key=jax.random.key(0))
    last = model.layers[-1]
    model = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), model,
                        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
    context = 3
    np.testing.assert_array_equal(reference.one_step(model, zt, at, ht, spec, context=context),
                                  zt[:, context - 1:-1])
    np.testing.assert_array_equal(reference.rollout(model, zt, at, ht, spec, context=context),
                                  np.broadcast_to(zt[:, context - 1:context], zt[:, 3:].shape))


def test_reference_rollout_carries_the_motion():
    """Fitted on the momentum world, its rollout stays far closer to the truth than holding the
    last context frame, and its first step is the teacher-forced guess."""
    spec, model, (zt, at, ht) = _fitted_on_momentum()
    context = 4
    rolled = np.asarray(reference.rollout(model, zt, at, ht, spec, context=context))
    forced = np.asarray(reference.one_step(model, zt, at, ht, spec, context=context))
    np.testing.assert_allclose(rolled[:, 0], forced[:, 0], rtol=1e-6, atol=1e-6)
    mse = lambda x: float(np.mean(np.square(x - zt[:, context:])))
    assert mse(rolled) < 0.1 * mse(np.broadcast_to(zt[:, context - 1:context], rolled.shape))
