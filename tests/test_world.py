"""WorldModel save/load by named leaves, and imagination with a policy in the loop."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import ActionSpec, Dynamics, DynamicsConfig, align_actions, generate
from tokenizer import Tokenizer, TokenizerConfig
from world import Sampling, WorldModel, imagine, imagine_step, replay

TOKENIZER = TokenizerConfig(image_size=(16, 16), patch=4, n_latents=4, latent_dim=8, enc_width=32,
                            enc_depth=2, enc_heads=2, enc_kv_heads=1, dec_width=32, dec_depth=2,
                            dec_heads=2, dec_kv_heads=1)
DYNAMICS = DynamicsConfig(latent_tokens=4, latent_dim=8, action=ActionSpec("continuous", dim=2),
                          width=32, depth=2, heads=2, time_every=2, registers=1, k_max=4,
                          latent_mean=0.1, latent_std=0.5)


def _world(seed=0, **dynamics):
    keys = jax.random.split(jax.random.key(seed))
    config = DYNAMICS if not dynamics else DynamicsConfig(**{**DYNAMICS.__dict__, **dynamics})
    return WorldModel(Tokenizer(TOKENIZER, key=keys[0]), Dynamics(config, key=keys[1]))


def _clip(b=2, t=10):
    rng = np.random.default_rng(0)
    latents = jnp.asarray(np.tanh(rng.normal(size=(b, t, 4, 8))), jnp.float32)
    actions = jnp.asarray(rng.uniform(-1, 1, size=(b, t, 2)), jnp.float32)
    return latents, actions


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_save_and_load_round_trip(tmp_path):
    world = _world()
    world.save(str(tmp_path), step=7)
    loaded = WorldModel.load(str(tmp_path))
    _leaves_equal(loaded, world)
    assert loaded.dynamics.config == world.dynamics.config  # action layout, latent stats
    assert loaded.tokenizer.config == world.tokenizer.config
    with open(tmp_path / "dynamics" / "header.json") as f:
        header = json.load(f)
    assert header["step"] == 7 and header["config"]["latent_std"] == 0.5
    assert header["config"]["action"] == {"kind": "continuous", "dim": 2, "classes": []}
    names = np.load(tmp_path / "dynamics" / "weights.npz").files
    assert ".transformer.blocks[0].attn.q_proj.weight" in names


def test_workdir_layout_and_older_workdir_message(tmp_path):
    world = _world()
    world.save(str(tmp_path / "run" / "models"))
    _leaves_equal(WorldModel.load(str(tmp_path / "run")), world)
    old = tmp_path / "old"
    os.makedirs(old / "tokenizer" / "500")
    (old / "config.json").write_text(json.dumps({"name": "calvin", "variant": "small"}))
    with pytest.raises(FileNotFoundError, match=r"configs/calvin.py:small .*"
                       r"--config.stages=tokenizer,dynamics"):
        WorldModel.load(str(old))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        WorldModel.load(str(tmp_path / "missing"))


def test_new_parameters_load_by_name(tmp_path):
    """Weights saved without agent tokens: strict loading names the missing leaf; strict=False
    keeps every saved weight and initialises only the new one."""
    world = _world()
    world.save(str(tmp_path))
    with pytest.raises(ValueError, match=r"missing \['.agent'\], unexpected \[\]"):
        WorldModel.load(str(tmp_path), agent_tokens=2)
    loaded = WorldModel.load(str(tmp_path), strict=False, agent_tokens=2)
    assert loaded.dynamics.agent.shape == (2, 32)
    fresh = Dynamics(loaded.dynamics.config, key=jax.random.key(0))
    np.testing.assert_array_equal(loaded.dynamics.agent, fresh.agent)
    np.testing.assert_array_equal(loaded.dynamics.readout.weight, world.dynamics.readout.weight)


def test_corrupt_or_mismatched_weights_are_named(tmp_path):
    _world().save(str(tmp_path / "a"))
    _world(width=64, heads=2).save(str(tmp_path / "b"))
    shutil.copy(tmp_path / "b" / "dynamics" / "weights.npz",
                tmp_path / "a" / "dynamics" / "weights.npz")
    with pytest.raises(ValueError, match="does not match the hash"):
        WorldModel.load(str(tmp_path / "a"))
    header = json.loads((tmp_path / "b" / "dynamics" / "header.json").read_text())
    header["config"]["width"] = 32
    (tmp_path / "b" / "dynamics" / "header.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"\.registers stored \(1, 64\), expected \(1, 32\)"):
        WorldModel.load(str(tmp_path / "b"))


def test_sampling_settings_travel_with_the_model(tmp_path):
    """`sampling` saves and loads with the model, comes from a workdir's config.json `eval`, and
    is what `imagine` samples with unless told otherwise: the same frames as `generate` with
    those settings spelled out."""
    regressor = Sampling(steps=1, context_signal=1.0, guidance=1.0)
    world = _world(seed=1)
    world = WorldModel(world.tokenizer, world.dynamics, regressor)
    world.save(str(tmp_path / "saved"))
    assert WorldModel.load(str(tmp_path / "saved")).sampling == regressor
    world.save(str(tmp_path / "run" / "models"))
    os.remove(tmp_path / "run" / "models" / "sampling.json")
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"eval": {"sampling_steps": 2, "context_signal": 0.8, "action_guidance": 1.5}}))
    assert WorldModel.load(str(tmp_path / "run")).sampling == Sampling(2, 0.8, 1.5)
    assert Sampling(2, 0.8, 1.5).override(context_signal=1.0) == Sampling(2, 1.0, 1.5)
    assert Sampling(2, 0.8, 1.5).override(3, None, 0.0) == Sampling(3, 0.8, 0.0)
    for broken in ('{"steps": 1, "colour": 3}', '{"steps": 0}', "{"):
        (tmp_path / "saved" / "sampling.json").write_text(broken)
        with pytest.raises(ValueError, match=r"saved/sampling.json: not a sampling file"):
            WorldModel.load(str(tmp_path / "saved"))
    latents, actions = _clip()
    out = imagine(world, replay(actions, 2), latents[:, :3], 7, key=jax.random.key(4),
                  actions=actions[:, :3])
    has = jnp.ones(actions.shape[:2], bool)
    want = generate(world.dynamics, latents[:, :3], *align_actions(actions, has),
                    key=jax.random.key(4), steps=1, context_signal=1.0)
    np.testing.assert_allclose(out.latents, want, rtol=1e-6, atol=1e-6)
    default = generate(world.dynamics, latents[:, :3], *align_actions(actions, has),
                       key=jax.random.key(4))
    assert not np.allclose(want, default, atol=1e-3)  # the settings do change the frames


@pytest.mark.parametrize(("capacity", "guidance"), [(None, 1.0), (5, 1.0), (5, 1.5)])
def test_replaying_policy_reproduces_generate(capacity, guidance):
    """A policy that replays the clip's actions gives what `generate` gives with them (with
    action guidance too)."""
    world, (latents, actions) = _world(seed=1), _clip()
    context, horizon = 3, 7
    out = imagine(world, replay(actions, context - 1), latents[:, :context], horizon,
                  key=jax.random.key(4), actions=actions[:, :context], capacity=capacity,
                  guidance=guidance)
    has = jnp.ones(actions.shape[:2], bool)
    want = generate(world.dynamics, latents[:, :context], *align_actions(actions, has),
                    key=jax.random.key(4), capacity=capacity, guidance=guidance)
    np.testing.assert_allclose(out.latents, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.actions, actions[:, context - 1:context - 1 + horizon])
    np.testing.assert_array_equal(out.seen.step, np.arange(horizon))
    np.testing.assert_allclose(out.seen.latents[:, 1:], out.latents[:, :-1])
    np.testing.assert_array_equal(out.seen.latents[:, 0], latents[:, context - 1])


def test_policy_reads_features_and_compiles_once():
    """A policy acting on the agent tokens' features; at a fixed cache capacity the per-frame
    step compiles once for any horizon, and the actions depend on what the policy saw."""
    world, (latents, _) = _world(seed=2, agent_tokens=2), _clip()

    def policy(frame, key):
        mean = jnp.mean(frame.features["agent"], axis=(1, 2))
        return jnp.stack([jnp.tanh(mean), jax.random.uniform(key, mean.shape)], axis=-1)

    imagine(world, policy, latents[:, :2], 2, key=jax.random.key(0), capacity=8)
    compiled = imagine_step._cache_size()
    out = imagine(world, policy, latents[:, :2], 6, key=jax.random.key(0), capacity=8,
                  decode=True)
    assert imagine_step._cache_size() == compiled
    assert out.frames.shape == (2, 8, 16, 16, 3) and out.latents.shape == (2, 6, 4, 8)
    want = np.tanh(np.mean(np.asarray(out.seen.features["agent"]), axis=(2, 3)))
    np.testing.assert_allclose(out.actions[..., 0], want, rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.round(np.asarray(out.actions[..., 0]), 6))) > 1


def test_broken_header_is_named(tmp_path):
    _world().save(str(tmp_path))
    (tmp_path / "tokenizer" / "header.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"tokenizer/header.json: not valid JSON"):
        WorldModel.load(str(tmp_path))
