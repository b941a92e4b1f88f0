"""The Gymnasium environments over imagination: spaces, shapes, determinism, and equality with
`world.imagine` (same key, context and actions) and with whole-sequence decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from core import to_uint8
from dynamics import ActionSpec
from play.env import WorldModelEnv, WorldModelVectorEnv, check_actions
from tests.play_models import CALVIN, tiny_contexts, tiny_world
from world import imagine, replay

SETTINGS = dict(context_frames=4, capacity=8, steps=2)  # one set of compiled shapes for all


@pytest.fixture(scope="module")
def world():
    return tiny_world(CALVIN)


@pytest.fixture(scope="module")
def contexts():
    return tiny_contexts(CALVIN, clips=3, length=12)


def _imagined(world, contexts, clips, horizon, *, seed, decode=True, guidance=1.0):
    """world.imagine replaying the clips' own actions after the context (SETTINGS); decoded
    frames (whole-sequence decoding) from the last context frame on as uint8, and the latents."""
    context, steps, capacity = (SETTINGS[k] for k in ("context_frames", "steps", "capacity"))
    actions = jnp.asarray(contexts.actions[clips])
    latents = world.encode(jnp.asarray(contexts.frames[clips, :context]))
    out = imagine(world, replay(actions, offset=context - 1), latents, horizon,
                  key=jax.random.key(seed), actions=actions[:, :context],
                  has_action=jnp.asarray(contexts.has_action[clips, :context]), steps=steps,
                  capacity=capacity, decode=decode, guidance=guidance)
    frames = np.asarray(to_uint8(out.frames[:, context - 1:])) if decode else None
    return frames, np.asarray(out.latents)


def _assert_frames_match(actual, expected):
    """uint8 frames from two float computations of the same values: equal up to rounding."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_spaces_follow_the_action_layout(world):
    env = WorldModelEnv(world)
    assert env.observation_space.shape == (16, 16, 3) and env.observation_space.dtype == np.uint8
    assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
    assert WorldModelEnv(tiny_world(ActionSpec("discrete", classes=(15,)))).action_space.n == 15
    parts = WorldModelEnv(tiny_world(ActionSpec("multipart", classes=(2, 5)))).action_space
    assert parts.nvec.tolist() == [2, 5]
    vector = WorldModelVectorEnv(world, 3)
    assert vector.action_space.shape == (3, 7) and vector.observation_space.shape == (3, 16, 16, 3)


def test_reset_and_step_shapes_and_info(world, contexts):
    env = WorldModelEnv(world, contexts=contexts, **SETTINGS)
    obs, info = env.reset(seed=1, options={"clip": 2})
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert info == {"frames": 4, "context_length": 4, "clip": 2, "steps": 2}
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (16, 16, 3) and reward == 0.0 and not terminated and not truncated
    assert info["frames"] == 9 and info["context_length"] == 7  # the window holds 8 frames
    assert np.array_equal(env.render(), obs)


def test_same_seed_same_frames_other_seed_other_frames(world, contexts):
    env = WorldModelEnv(world, contexts=contexts, **SETTINGS)
    actions = contexts.actions[0, :4]

    def episode(seed):
        first, _ = env.reset(seed=seed, options={"clip": 1})
        return np.stack([first] + [env.step(a)[0] for a in actions])

    a, b, c = episode(5), episode(5), episode(6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], c[0])  # the context's reconstruction: no noise
    assert not np.array_equal(a[1:], c[1:])
    # Without contexts the first frame is imagined, again deterministically per seed.
    free = WorldModelEnv(world, **SETTINGS)
    np.testing.assert_array_equal(free.reset(seed=2)[0], free.reset(seed=2)[0])
    assert not np.array_equal(free.reset(seed=2)[0], free.reset(seed=3)[0])
    assert free.step(actions[0])[0].shape == (16, 16, 3)


def test_equals_world_imagine_within_and_beyond_the_window(world, contexts):
    """Frames equal `world.imagine(..., decode=True)` with the clip's actions replayed while the
    session fits the window (4 context + 3 frames in 8); beyond it (4 + 8 frames) the latents
    still equal imagine's with the same capacity (the ring buffer slides the same way)."""
    context, horizon = SETTINGS["context_frames"], 8
    env = WorldModelEnv(world, contexts=contexts, **SETTINGS)
    first, _ = env.reset(seed=3, options={"clip": 1})
    frames, latents = [first], []
    for h in range(horizon):
        frames.append(env.step(contexts.actions[1, context - 1 + h])[0])
        latents.append(np.asarray(env.worlds.latents[0]))
    expected_frames, expected_latents = _imagined(world, contexts, [1], horizon, seed=3)
    _assert_frames_match(np.stack(frames[:4]), expected_frames[0, :4])
    np.testing.assert_allclose(np.stack(latents), expected_latents[0], atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_vector_env_equals_batched_imagine(world, contexts, guidance):
    """Each world of the batch gets its own row of the batch's noise, as in `world.imagine` of
    the same batch: the latents match row by row (frames: as the single env above); with action
    guidance as well."""
    env = WorldModelVectorEnv(world, 2, contexts=contexts, guidance=guidance, **SETTINGS)
    first, info = env.reset(seed=7, options={"clips": [2, 0]})
    assert info == {"clips": [2, 0]} and first.shape == (2, 16, 16, 3)
    latents = []
    for h in range(3):
        obs, rewards, terminated, truncated, _ = env.step(contexts.actions[[2, 0], 3 + h])
        latents.append(np.asarray(env.worlds.latents))
    assert obs.shape == (2, 16, 16, 3) and not np.array_equal(obs[0], obs[1])
    assert rewards.tolist() == [0.0, 0.0] and not terminated.any() and not truncated.any()
    _, expected = _imagined(world, contexts, [2, 0], 3, seed=7, decode=False, guidance=guidance)
    np.testing.assert_allclose(np.stack(latents, axis=1), expected, atol=1e-5)


def test_actions_are_checked():
    spec = ActionSpec("multipart", classes=(2, 5))
    assert check_actions(spec, [[1, 4]], 1).dtype == np.int32
    for bad, message in (([[1, 5]], r"0\.\.classes-1"), ([[1, 2, 3]], "shape"),
                         ([[0.5, 1]], "whole numbers")):
        with pytest.raises(ValueError, match=message):
            check_actions(spec, bad, 1)
    with pytest.raises(ValueError, match="finite"):
        check_actions(CALVIN, [[np.nan] * 7], 1)
    env = WorldModelEnv(tiny_world(ActionSpec("discrete", classes=(15,))))
    with pytest.raises(ValueError, match=r"0\.\.classes-1"):
        env.step(15)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(3)


def test_gymnasium_env_checker_accepts_the_env(world, contexts):
    env = WorldModelEnv(world, contexts=contexts, **SETTINGS)
    check_env(env, skip_render_check=True)
