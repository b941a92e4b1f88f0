"""The domain suite (data/suite.py): one tiny episode set per installed domain, read back through
the episodes reader; deterministic for a seed and resumable."""

import os

import numpy as np
import pytest

from data.episode import DataError
from data.episodes import episode_file, npz_episodes
from data.suite import DOMAINS, SuiteSettings, generate_suite, make_env

POINTS = {"cartpole": 2, "pendulum": 1, "acrobot": 2, "mountaincar": 1, "reacher": 2,
          "pusher": 3}
ACTIONS = {"cartpole": ((), np.int32), "acrobot": ((), np.int32), "pendulum": ((1,), np.float32),
           "mountaincar": ((1,), np.float32), "reacher": ((2,), np.float32),
           "pusher": ((7,), np.float32)}


def read_all(folder):
    return {name: dict(np.load(os.path.join(folder, name)))
            for name in sorted(os.listdir(folder)) if name.endswith(".npz")}


@pytest.mark.parametrize("name", list(DOMAINS))
def test_domain_episodes_deterministic_and_resumable(name, tmp_path):
    try:
        make_env(name, 16).close()
    except ImportError as error:
        pytest.skip(str(error))
    settings = SuiteSettings(episodes=2, length=6, size=32, seed=3)
    folder = generate_suite(str(tmp_path / "a"), [name], settings, progress=False)[name]
    episodes = npz_episodes(folder)
    assert [(e.length, e.frame_size, e.state_size) for e in episodes] == [
        (6, (32, 32), 3 * POINTS[name])] * 2
    first = read_all(folder)["episode_000000.npz"]
    shape, dtype = ACTIONS[name]
    assert first["actions"].shape == (6, *shape) and first["actions"].dtype == dtype
    assert first["frames"].dtype == np.uint8 and first["states"].dtype == np.float32
    assert np.ptp(first["states"][:, 0]) + np.ptp(first["states"][:, 1]) > 0  # it moves
    assert np.any(first["frames"][0] != first["frames"][-1])
    planar = name not in ("reacher", "pusher")  # 2-D domains: z = 0
    assert np.all(first["states"][:, 2::3] == 0) == planar

    os.remove(episode_file(folder, 1))  # as if killed before the second episode
    generate_suite(str(tmp_path / "a"), [name], settings, progress=False)
    generate_suite(str(tmp_path / "b"), [name], settings, num_workers=2, progress=False)
    a, b = read_all(folder), read_all(str(tmp_path / "b" / name))
    assert a.keys() == b.keys() == {"episode_000000.npz", "episode_000001.npz"}
    for episode in a:
        for key in ("frames", "actions", "states"):
            np.testing.assert_array_equal(a[episode][key], b[episode][key], err_msg=episode + key)
    assert np.any(a["episode_000000.npz"]["states"] != a["episode_000001.npz"]["states"])
    with pytest.raises(DataError, match="other settings"):
        generate_suite(str(tmp_path / "a"), [name], SuiteSettings(2, 6, 32, seed=4),
                       progress=False)


def test_unknown_domain_is_named():
    with pytest.raises(ValueError, match=r"unknown suite domains \['chess'\]"):
        generate_suite("/nonexistent", ["chess"], SuiteSettings())


def test_frame_skip_repeats_each_recorded_action():
    """frame_skip 3: recorded frame k + 1 is the state after the recorded action k applied three
    times, replayed here on a fresh environment (pendulum: its state is the angle and speed)."""
    try:
        make_env("pendulum", 16).close()
    except ImportError as error:
        pytest.skip(str(error))
    from data.suite import domain_episode
    settings = SuiteSettings(episodes=1, length=5, size=16, seed=1, frame_skip=3)
    _, actions, states = domain_episode("pendulum", 0, settings)
    rng = np.random.default_rng((1, list(DOMAINS).index("pendulum"), 0))
    env = make_env("pendulum", 16)
    env.reset(seed=int(rng.integers(2**31 - 1)))
    tips = []
    for action in actions:
        theta = env.state[0]
        tips.append((-np.sin(theta), np.cos(theta)))
        for _ in range(3):
            env.step(action)
    np.testing.assert_allclose(states[:, :2], np.array(tips), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="frame_skip"):
        SuiteSettings(frame_skip=0)


def test_broken_settings_file_is_named(tmp_path):
    from data.jobs import claim_folder
    (tmp_path / "suite.json").write_text("{broken")
    with pytest.raises(DataError, match=r"suite\.json is not valid JSON"):
        claim_folder(str(tmp_path), "suite.json", {"domain": "pendulum"})
