"""The agent heads: shapes and starting point per action kind, the action encoding, the config's
checks, and that the policy head learns a mapping from features to actions by cloning."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agent.distributions import Bins
from agent.heads import (
    AgentHeads,
    HeadsConfig,
    encode_action,
    load_heads,
    policy_distribution,
    save_heads,
)
from dynamics.actions import ActionSpec

CONTINUOUS = ActionSpec("continuous", dim=3)
DISCRETE = ActionSpec("discrete", classes=(15,))
MULTIPART = ActionSpec("multipart", classes=(121, 2, 2))
BOX = dict(action_low=(-1.0, -1.0, 0.0), action_high=(1.0, 1.0, 0.5))


def config(spec, **kw):
    extra = BOX if spec.kind == "continuous" else {}
    return HeadsConfig(spec, agent_tokens=2, width=8, hidden=16, mtp=4, bins=Bins(count=31),
                       **extra | kw)


def sample_action(spec, key, batch):
    if spec.kind == "continuous":
        return jax.random.uniform(key, (batch, 3)) * jnp.array([[2.0, 2.0, 0.5]]) - jnp.array(
            [[1.0, 1.0, 0.0]])
    keys = jax.random.split(key, len(spec.classes))
    parts = jnp.stack([jax.random.randint(k, (batch,), 0, n)
                       for k, n in zip(keys, spec.classes, strict=True)], axis=-1)
    return parts[:, 0] if spec.kind == "discrete" else parts


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE, MULTIPART], ids=lambda s: s.kind)
def test_heads_start_uniform_and_at_zero(spec):
    cfg = config(spec)
    heads = AgentHeads(cfg, key=jax.random.key(0))
    features = jax.random.normal(jax.random.key(1), (5, 2, 8))
    action = sample_action(spec, jax.random.key(2), 5)
    assert heads.policy_logits(features).shape == (5, 4, cfg.policy_logits)
    assert heads.reward_logits(features, action).shape == (5, 4, 31)
    # Zero output layers: a uniform policy and rewards / values that decode to 0.
    uniform = {"continuous": -math.log(2.0 * 2.0 * 0.5), "discrete": -math.log(15),
               "multipart": -math.log(121 * 2 * 2)}[spec.kind]
    np.testing.assert_allclose(heads.act(features, offset=3).log_prob(action), uniform, rtol=1e-5)
    np.testing.assert_allclose(cfg.bins.decode(heads.value_logits(features)), 0.0, atol=1e-5)
    np.testing.assert_allclose(cfg.bins.decode(heads.reward_logits(features, action)), 0.0,
                               atol=1e-5)


def test_multipart_logits_split_by_part():
    cfg = config(ActionSpec("multipart", classes=(3, 2)))
    logits = jnp.log(jnp.array([0.2, 0.5, 0.3, 0.9, 0.1]))
    dist = policy_distribution(cfg, logits)
    np.testing.assert_allclose(dist.log_prob(jnp.array([1, 0])), math.log(0.5 * 0.9), rtol=1e-5)


def test_action_encoding():
    np.testing.assert_allclose(
        encode_action(config(CONTINUOUS), jnp.array([[-1.0, 0.0, 0.5]])), [[-1.0, 0.0, 1.0]])
    code = encode_action(config(ActionSpec("multipart", classes=(3, 2))), jnp.array([[2, 0]]))
    np.testing.assert_array_equal(code, [[0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(encode_action(config(DISCRETE), jnp.array([4]))[0],
                                  np.eye(15)[4])


def test_config_names_what_is_wrong():
    with pytest.raises(ValueError, match="action_low < action_high"):
        HeadsConfig(CONTINUOUS, agent_tokens=1, width=8)
    with pytest.raises(ValueError, match="mtp >= 1"):
        HeadsConfig(DISCRETE, agent_tokens=1, width=8, mtp=0)


def test_policy_head_clones_a_feature_to_action_mapping():
    # The demonstrator picks class (feature 0 > 0) + 2 * (feature 1 > 0) of 4 classes.
    cfg = HeadsConfig(ActionSpec("discrete", classes=(4,)), agent_tokens=1, width=8, hidden=32,
                      mtp=1)
    heads = AgentHeads(cfg, key=jax.random.key(0))
    features = jax.random.normal(jax.random.key(1), (512, 1, 8))
    target = ((features[:, 0, 0] > 0).astype(jnp.int32)
              + 2 * (features[:, 0, 1] > 0).astype(jnp.int32))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(heads)

    @jax.jit
    def step(heads, state):
        nll = lambda h: -jnp.mean(h.act(features).log_prob(target))
        grads = jax.grad(nll)(heads)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grads, state)
        return optax.apply_updates(heads, updates), state

    for _ in range(300):
        heads, state = step(heads, state)
    accuracy = float(jnp.mean(heads.act(features).mode() == target))
    assert accuracy > 0.95, accuracy


@pytest.mark.parametrize("spec", [CONTINUOUS, MULTIPART], ids=lambda s: s.kind)
def test_heads_save_and_load_by_name(tmp_path, spec):
    heads = AgentHeads(config(spec), key=jax.random.key(3))
    heads = eqx.tree_at(lambda h: h.value.out.bias, heads, jnp.arange(31.0))
    save_heads(str(tmp_path), heads, step=7)
    loaded = load_heads(str(tmp_path))
    assert loaded.config == heads.config
    for a, b in zip(jax.tree.leaves(heads), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_broken_heads_file_is_named(tmp_path):
    from world.serialise import ModelFileError

    save_heads(str(tmp_path), AgentHeads(config(DISCRETE), key=jax.random.key(0)), step=1)
    (tmp_path / "header.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"header\.json: not valid JSON"):
        load_heads(str(tmp_path))
