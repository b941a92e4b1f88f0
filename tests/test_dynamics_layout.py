"""Token groups of the dynamics model: layout, the agent-token rule, features out."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.actions import ActionSpec, align_actions
from dynamics.layout import TokenLayout
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.sampler import generate

SIZES = dict(latent_tokens=4, latent_dim=3, action=ActionSpec("continuous", dim=2), width=32,
             depth=4, heads=2, time_every=2, registers=1, k_max=8, pack=2)


def _batch(b=2, t=5):
    rng = np.random.default_rng(0)
    z = jnp.asarray(np.tanh(rng.normal(size=(b, t, 4, 3))), jnp.float32)
    actions = jnp.asarray(rng.uniform(-1, 1, size=(b, t, 2)), jnp.float32)
    tau = jnp.asarray(rng.uniform(0, 1, size=(b, t)), jnp.float32)
    return z, tau, jnp.full((b, t), 0.125), *align_actions(actions, jnp.ones((b, t), bool))


def test_layout_slices_and_mask_by_hand():
    layout = TokenLayout(actions=2, shortcut=1, spatial=3, registers=1, agent=2)
    assert layout.total == 9
    assert [layout.slice(g) for g in ("actions", "shortcut", "spatial", "registers", "agent")] \
        == [slice(0, 2), slice(2, 3), slice(3, 6), slice(6, 7), slice(7, 9)]
    mask = layout.space_mask()
    want = np.ones((9, 9), bool)
    want[:7, 7:] = False  # world-model tokens never read agent tokens; agent tokens read all
    np.testing.assert_array_equal(mask, want)
    assert TokenLayout(actions=1, shortcut=1, spatial=2, registers=0).space_mask() is None
    with pytest.raises(KeyError, match="groups are"):
        layout.slice("policy")


def test_features_per_group():
    model = Dynamics(DynamicsConfig(**SIZES, agent_tokens=3), key=jax.random.key(0))
    out, features = model(*_batch())
    assert out.shape == (2, 5, 4, 3)
    assert {k: v.shape for k, v in features.items()} == {
        "actions": (2, 5, 1, 32), "shortcut": (2, 5, 1, 32), "spatial": (2, 5, 2, 32),
        "registers": (2, 5, 1, 32), "agent": (2, 5, 3, 32)}


def test_agent_tokens_leave_the_world_model_unchanged():
    """Same seed with and without agent tokens: the same predictions (to float32 rounding:
    the matmuls see other shapes), in the training form and through the KV-cached sampler."""
    plain = Dynamics(DynamicsConfig(**SIZES), key=jax.random.key(1))
    agent = Dynamics(DynamicsConfig(**SIZES, agent_tokens=2), key=jax.random.key(1))
    batch = _batch()
    np.testing.assert_allclose(agent(*batch)[0], plain(*batch)[0], rtol=1e-5, atol=1e-5)
    z, _, _, actions, has = batch
    kw = dict(key=jax.random.key(2), steps=2)
    np.testing.assert_allclose(generate(agent, z[:, :2], actions, has, **kw),
                               generate(plain, z[:, :2], actions, has, **kw), rtol=1e-5, atol=1e-5)


def test_agent_tokens_read_everything_and_nothing_reads_them():
    model = Dynamics(DynamicsConfig(**SIZES, agent_tokens=2), key=jax.random.key(3))
    z, tau, d, actions, has = _batch(b=1)

    def agent_at(frame):
        return lambda z: jnp.sum(model(z, tau, d, actions, has)[1]["agent"][:, frame])

    grad = np.abs(np.asarray(jax.grad(agent_at(2))(z))).sum(axis=(0, 2, 3))
    assert np.all(grad[:3] > 0) and np.all(grad[3:] == 0)  # frames 0..2 read, later frames not
    grads = jax.grad(lambda m: jnp.sum(m(z, tau, d, actions, has)[0]))(model)
    assert float(jnp.abs(eqx.filter(grads, eqx.is_array).agent).max()) == 0.0
