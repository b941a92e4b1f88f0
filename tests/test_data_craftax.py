"""Craftax generator: .npz episodes starting at the documented world, ending at the player's
death or max_length, independent of batching, resumable; install message when missing."""

import os
import sys

import numpy as np
import pytest

from data.craftax import CRAFTAX_ACTIONS, CRAFTAX_FRAME_SIZE, CraftaxSettings, generate_craftax
from data.episode import DataError
from data.episodes import npz_episodes


def test_missing_craftax_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "craftax", None)
    with pytest.raises(ImportError, match="pip install craftax"):
        generate_craftax(str(tmp_path), CraftaxSettings(episodes=1))


def test_craftax_episodes_start_end_and_resume(tmp_path):
    pytest.importorskip("craftax")
    import jax

    from data.craftax import craftax_env

    # Seed 0: episode 1's player dies at its 50th action; the others reach max_length.
    settings = CraftaxSettings(episodes=3, max_length=60, seed=0)
    generate_craftax(str(tmp_path), settings, batch=2, progress=False)
    episodes = npz_episodes(str(tmp_path))
    assert [e.length for e in episodes] == [60, 50, 60]
    assert {e.frame_size for e in episodes} == {CRAFTAX_FRAME_SIZE[True]} == {(63, 63)}
    frames, actions = episodes[1].read(0, 50)
    assert frames.dtype == np.uint8 and actions.dtype == np.int32
    assert actions.min() >= 0 and actions.max() < CRAFTAX_ACTIONS[True] == 17
    assert np.mean(actions[1:] == actions[:-1]) > 0.5  # sticky: repeats with p = 0.75 (+1/17)

    # frames[0] is the fresh world, seen before actions[0] (the world key is documented). Full
    # replays of actions through env.step match too, but compiling the step costs ~20 s here.
    env = craftax_env(classic=True)
    assert env.num_actions == CRAFTAX_ACTIONS[True]
    key = jax.random.fold_in(jax.random.key(0), 1)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        observation, _ = env.reset(jax.random.fold_in(key, 0), env.default_params)
    np.testing.assert_array_equal(np.round(np.asarray(observation) * 255), frames[0])

    before = [e.read(0, e.length) for e in episodes]
    for k in (0, 2):  # as if interrupted; redone together, batched unlike the first time
        os.remove(tmp_path / f"episode_00000{k}.npz")
    generate_craftax(str(tmp_path), settings, batch=2, progress=False)
    for episode, (frames, actions) in zip(npz_episodes(str(tmp_path)), before, strict=True):
        np.testing.assert_array_equal(episode.read(0, episode.length).frames, frames)
        np.testing.assert_array_equal(episode.read(0, episode.length).actions, actions)
    with pytest.raises(DataError, match="other settings"):
        generate_craftax(str(tmp_path), CraftaxSettings(episodes=3, max_length=60, seed=1))
