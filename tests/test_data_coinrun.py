"""CoinRun generator: .npz episodes whose actions replay to the stored frames, rewards and ends,
deterministic over worker counts, resumable; the scripted player's mix; and the install message
when procgen is missing."""

import os
import sys

import numpy as np
import pytest

from data.coinrun import (
    COINRUN_ACTIONS,
    RIGHT,
    RIGHT_UP,
    CoinRunSettings,
    RunRight,
    generate_coinrun,
)
from data.episode import ActionLayout, DataError, read_episode
from data.sources import episode_splits


def test_missing_procgen_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "procgen", None)
    with pytest.raises(
        ImportError, match=r"pip install --no-deps procgen-mirror gym3 gym==0\.26\.2"
    ):
        generate_coinrun(str(tmp_path), CoinRunSettings(episodes=1))
    assert not os.listdir(tmp_path)  # nothing claimed before the check


def read_all(folder):
    return {
        name: dict(np.load(os.path.join(folder, name)))
        for name in sorted(os.listdir(folder))
        if name.endswith(".npz")
    }


def test_coinrun_episodes_replay_deterministic_resumable(tmp_path):
    procgen = pytest.importorskip("procgen")
    settings = CoinRunSettings(episodes=3, max_length=1000, seed=5)
    generate_coinrun(str(tmp_path / "a"), settings, progress=False)
    splits = episode_splits("coinrun", str(tmp_path / "a"), eval_fraction=0.34)
    episodes = sorted(splits["train"] + splits["eval"], key=lambda e: e.name)
    assert [e.name for e in episodes] == ["episode_000000", "episode_000001", "episode_000002"]
    assert {e.action_layout for e in episodes} == {ActionLayout("discrete", ())}
    assert {e.frame_size for e in episodes} == {(64, 64)}

    for k, episode in enumerate(episodes):
        frames, actions = read_episode(episode)
        assert frames.dtype == np.uint8 and actions.dtype == np.int32
        assert 1 < len(frames) <= 1000 and len(actions) == len(frames)
        # Level and actions are the documented draws of default_rng((seed, k)) ...
        rng = np.random.default_rng((5, k))
        level = int(rng.integers(2**31 - 1))
        np.testing.assert_array_equal(actions, rng.integers(COINRUN_ACTIONS, size=len(actions)))
        # ... and actions[t], taken after frames[t], leads to frames[t + 1].
        env = procgen.ProcgenGym3Env(num=1, env_name="coinrun", start_level=level, num_levels=1)
        _, observation, _ = env.observe()
        np.testing.assert_array_equal(observation["rgb"][0], frames[0])
        for t in range(len(frames) - 1):
            env.act(actions[t : t + 1])
            _, observation, first = env.observe()
            assert not first[0]
            np.testing.assert_array_equal(observation["rgb"][0], frames[t + 1], err_msg=str(t))
        if len(frames) < 1000:  # ended by the game: the last action starts the next level
            env.act(actions[-1:])
            assert env.observe()[2][0]

    os.remove(tmp_path / "a" / "episode_000001.npz")  # as if interrupted
    generate_coinrun(str(tmp_path / "a"), settings, progress=False)
    generate_coinrun(str(tmp_path / "b"), settings, num_workers=2, progress=False)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 3
    for name in a:
        for key in ("frames", "actions"):
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=name + key)
    with pytest.raises(DataError, match="other settings"):
        generate_coinrun(str(tmp_path / "a"), CoinRunSettings(episodes=3, seed=6))


def test_level_pool_cycles_through_levels():
    own = CoinRunSettings(seed=3)
    pooled = CoinRunSettings(seed=3, levels=2)
    pool = np.random.default_rng(3).integers(2**31 - 1, size=2)
    for k in range(5):
        fresh = np.random.default_rng((3, k))
        first_draw, first_action = int(fresh.integers(2**31 - 1)), fresh.integers(COINRUN_ACTIONS)
        assert own.level(k, np.random.default_rng((3, k))) == first_draw
        rng = np.random.default_rng((3, k))
        assert pooled.level(k, rng) == pool[k % 2]
        # The episode's own first draw is consumed either way: its actions are the same draws.
        assert rng.integers(COINRUN_ACTIONS) == first_action


def test_pooled_episodes_replay_their_level(tmp_path):
    pytest.importorskip("procgen")
    generate_coinrun(str(tmp_path), CoinRunSettings(episodes=3, max_length=4, levels=2),
                     progress=False)
    first = [read_all(tmp_path)[f"episode_{k:06d}.npz"]["frames"][0] for k in range(3)]
    np.testing.assert_array_equal(first[0], first[2])  # episodes 0 and 2 play level pool[0]
    assert np.abs(first[0].astype(int) - first[1]).mean() > 1  # episode 1 another level


def test_level_setting_is_checked_and_recorded_only_when_set():
    recorded = CoinRunSettings(seed=1).recorded()
    assert "levels" not in recorded and "scripted_fraction" not in recorded  # older folders resume
    assert CoinRunSettings(seed=1, levels=4).recorded()["levels"] == 4
    assert CoinRunSettings(scripted_fraction=0.5).recorded()["scripted_fraction"] == 0.5
    with pytest.raises(ValueError, match="levels must be >= 0"):
        CoinRunSettings(levels=-1)
    with pytest.raises(ValueError, match=r"scripted_fraction must be in \[0, 1\]"):
        CoinRunSettings(scripted_fraction=1.5)


def test_the_scripted_player_runs_right_in_bursts_with_its_share_of_noise():
    steps = 20_000
    clean = RunRight(np.random.default_rng(0), noise=0.0)
    actions = np.array([clean() for _ in range(steps)])
    assert set(actions.tolist()) == {RIGHT, RIGHT_UP}
    assert abs(np.mean(actions == RIGHT_UP) - 0.5) < 0.02  # each burst: either, equally likely
    runs = np.diff(np.flatnonzero(np.diff(actions) != 0))  # lengths of runs of one action
    assert runs.min() >= 1 and np.mean(runs) > 2  # bursts of 1-7 steps (two can join)
    noisy = RunRight(np.random.default_rng(1), noise=0.4)
    actions = np.array([noisy() for _ in range(steps)])
    # 60% scripted (7 or 8) + 40% uniform over 15 actions.
    np.testing.assert_allclose(np.mean(actions == 0), 0.4 / COINRUN_ACTIONS, atol=0.006)
    np.testing.assert_allclose(np.mean((actions == RIGHT) | (actions == RIGHT_UP)),
                               0.6 + 0.4 * 2 / COINRUN_ACTIONS, atol=0.015)


def test_scripted_episodes_replay_to_their_frames_and_procgen_rewards(tmp_path):
    procgen = pytest.importorskip("procgen")
    settings = CoinRunSettings(episodes=6, max_length=300, seed=2, scripted_fraction=0.5)
    generate_coinrun(str(tmp_path), settings, progress=False)
    episodes = read_all(tmp_path)
    scripted = [np.random.default_rng((2, k, 1)).random() < 0.5 for k in range(6)]
    assert 0 < sum(scripted) < 6  # both kinds in the mix (documented draws)
    for k, episode in enumerate(episodes.values()):
        actions, rewards = episode["actions"], episode["rewards"]
        assert rewards.dtype == np.float32 and rewards.shape == actions.shape
        rng = np.random.default_rng((2, k))
        level = int(rng.integers(2**31 - 1))
        right = np.mean((actions == RIGHT) | (actions == RIGHT_UP))
        if scripted[k]:
            assert right > 0.3 + 0.7 * 2 / COINRUN_ACTIONS - 0.1  # noise is at most 70%
        else:
            np.testing.assert_array_equal(actions, rng.integers(COINRUN_ACTIONS, size=len(actions)))
        env = procgen.ProcgenGym3Env(num=1, env_name="coinrun", start_level=level, num_levels=1)
        ended = False
        for t in range(len(actions) - (len(actions) == 300)):  # a 300th action was never taken
            env.act(actions[t:t + 1])
            reward, observation, first = env.observe()
            assert rewards[t] == reward[0], (k, t)
            ended = bool(first[0])
            if not ended:
                np.testing.assert_array_equal(observation["rgb"][0], episode["frames"][t + 1])
        assert ended or len(actions) == 300
        expected = np.ones(len(actions), np.float32)
        expected[-1] = 0.0 if ended else 1.0  # 0 only where the game itself ended
        np.testing.assert_array_equal(episode["continues"], expected, err_msg=str(k))
        assert set(np.unique(rewards)) <= {0.0, 10.0} and np.count_nonzero(rewards[:-1]) == 0
    assert any(e["rewards"].sum() == 10 for e in episodes.values())  # a coin was reached
