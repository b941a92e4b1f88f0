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
