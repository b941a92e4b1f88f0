"""The state probe (launch/probe.py) and the states the readers attach to episodes and clips."""

import json
import os
import types

import numpy as np
import pytest

from data.calvin import CALVIN_STATE_SIZE, calvin_episodes, frame_path
from data.clips import ClipSettings, open_shard, prepare_clips, read_index
from data.episode import DataError
from data.episodes import npz_episodes, write_episode
from launch.evaluators import probe_evaluator
from launch.probe import (
    ALPHAS,
    colour_moments,
    fit_probe,
    fitting_clips,
    point_errors_cm,
    probe_metrics,
)


def squares(centres, colours, size=16, half=2, background=(0.5, 0.5, 0.5)):
    """Frames [N, size, size, 3]: square j (side 2 * half) of colour colours[j] centred at
    pixel centres[:, j] (row, column; integer), on a plain background."""
    frames = np.broadcast_to(np.asarray(background, np.float64),
                             (len(centres), size, size, 3)).copy()
    for n, points in enumerate(centres):
        for (row, col), colour in zip(points, colours, strict=True):
            frames[n, row - half:row + half, col - half:col + half] = colour
    return frames


def test_colour_moments_by_hand():
    """A red 4x4 square in a grey 16x16 frame with the palette (grey, red): the red mass is
    16/256 and its centroid the square's centre in [-1, 1] image coordinates."""
    frame = squares(np.array([[[5, 10]]]), [(1.0, 0.0, 0.0)])
    features = colour_moments(frame, np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]))[0]
    mass, mass_x, mass_y, x, y = features.reshape(5, 2)
    coordinate = lambda pixel: -1 + 2 * pixel / 15  # linspace(-1, 1, 16)
    np.testing.assert_allclose(mass, [240 / 256, 16 / 256], atol=1e-12)
    np.testing.assert_allclose([x[1], y[1]], [coordinate(9.5), coordinate(4.5)], atol=1e-12)
    np.testing.assert_allclose([mass_x[1], mass_y[1]], mass[1] * np.array([x[1], y[1]]),
                               atol=1e-12)
    np.testing.assert_allclose(colour_moments((frame * 255).astype(np.uint8),
                                              np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]))[0],
                               features, atol=2e-3)


def two_squares(colours, frames=500, seed=0):
    """A red-ish and a blue square (`colours`) at random non-overlapping positions whose pixel
    positions are the states through a known linear map (1 pixel = 2 cm): (frames, states [N, 6],
    the generator for further noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(3, 14, (4 * frames, 2, 2))  # [frame, square, (row, column)]
    apart = np.abs(centres[:, 0] - centres[:, 1]).max(axis=1) >= 4  # squares do not overlap
    centres = centres[apart][:frames]
    # point j: x = 0.02 * column, y = 0.3 - 0.02 * row, z = 0.01 * row + 0.05 (metres)
    rows, cols = centres[..., 0].astype(np.float64), centres[..., 1].astype(np.float64)
    states = np.stack([0.02 * cols, 0.3 - 0.02 * rows, 0.01 * rows + 0.05], axis=-1)
    return squares(centres, colours), states.reshape(frames, 6), rng


def test_probe_recovers_a_known_linear_map():
    """The probe, fitted on 300 frames of `two_squares`, reads the positions of 200 frames it
    never saw back to well under a pixel's worth."""
    frames, states, rng = two_squares([(0.9, 0.1, 0.1), (0.1, 0.2, 0.9)])
    frames += rng.normal(0, 0.01, frames.shape)  # sensor noise
    probe = fit_probe(frames[:300], states[:300], colours=4, clip_of_frame=np.arange(300) // 10)
    errors = point_errors_cm(probe(frames[300:]), states[300:])
    assert errors.shape == (200, 2) and errors.mean() < 0.3 and errors.max() < 1.0
    guess = point_errors_cm(np.broadcast_to(states[:300].mean(0), (200, 6)), states[300:])
    assert guess.mean() > 5  # the positions do vary: a constant guess is far off
    assert fit_probe(frames[:300], states[:300], colours=4).alpha in ALPHAS


def test_probe_fits_the_noisy_copies_too():
    """fit_probe(noise=s) is ridge regression on the frames' features and those of the frames
    plus N(0, s^2) noise (the same seeded draws, clipped to [0, 1]), standardised together: the
    same read-out as a direct least-squares solve on the stacked, alpha-augmented system. And
    the copies pay off where a square's colour is close to the background's: on frames with
    pixel noise of the same size the probe fitted with them reads that square better."""
    frames, states, rng = two_squares([(0.54, 0.5, 0.5), (0.1, 0.2, 0.9)])
    frames += rng.normal(0, 0.005, frames.shape)
    train, targets = frames[:300], states[:300]
    probe = fit_probe(train, targets, colours=4, alphas=(1e-3,), noise=0.03, seed=3)
    noisy = np.clip(train + np.random.default_rng(3).normal(0.0, 0.03, train.shape), 0, 1)
    raw = np.concatenate([colour_moments(train, probe.palette),
                          colour_moments(noisy, probe.palette)])
    np.testing.assert_allclose(probe.mean, raw.mean(0), atol=1e-12)
    features = np.clip((raw - probe.mean) / probe.scale, -10, 10)
    design = np.concatenate([features - features.mean(0),
                             np.sqrt(1e-3 * len(features)) * np.eye(features.shape[1])])
    answer = np.concatenate([np.concatenate([targets, targets]) - targets.mean(0),
                             np.zeros((features.shape[1], 6))])
    weights = np.linalg.lstsq(design, answer, rcond=None)[0]
    np.testing.assert_allclose(probe.weights, weights, atol=1e-6)
    test = np.clip(frames[300:] + rng.normal(0, 0.03, frames[300:].shape), 0, 1)
    plain = fit_probe(train, targets, colours=4, clip_of_frame=np.arange(300) // 10, noise=0.0)
    robust = fit_probe(train, targets, colours=4, clip_of_frame=np.arange(300) // 10)
    faint = [point_errors_cm(p(test), states[300:])[:, 0].mean() for p in (plain, robust)]
    assert faint[1] < 0.85 * faint[0]
    with pytest.raises(ValueError, match="noise"):
        fit_probe(train, targets, colours=4, noise=-0.01)
    with pytest.raises(ValueError, match="300 frames, 299 states"):
        fit_probe(train, targets[:299], colours=4)


def test_probe_metrics_by_hand():
    """An exact probe (brightness of channel k = 0.5 + state k) and imagined frames whose encoded
    positions are off by known amounts: every per-step error is hand-computable."""
    rollouts, context, horizon = 2, 2, 3
    # Point 0 (end effector): the mean brightness of channel k minus 0.5 is its coordinate k;
    # point 1 (a block): the probe always says (10 cm, 0, 0).
    def probe(frames):
        xyz = frames.mean(axis=(-3, -2)) - 0.5
        return np.concatenate([xyz, np.broadcast_to([0.1, 0.0, 0.0], xyz.shape)], axis=-1)

    states = np.zeros((rollouts, context + horizon, 6))
    states[..., 0] = np.arange(context + horizon) * 0.01  # end effector moves 1 cm per step in x
    states[..., 3] = 0.1  # the block sits at x = 10 cm (what the probe reads for it)
    frames = lambda xyz: np.broadcast_to(0.5 + xyz[..., None, None, :], (*xyz.shape[:-1], 4, 4, 3))
    truth = frames(states[..., :3])
    imagined = truth.copy()
    imagined[:, context:] = frames(states[:, context:, :3] + [0.0, 0.03, 0.04])  # 5 cm off
    shuffled = frames(np.zeros_like(states[..., :3]))  # the arm stays at the origin
    metrics = probe_metrics(probe, truth, imagined, shuffled, truth, states, context=context)
    np.testing.assert_allclose(metrics["rollout.probe_error_cm"], [5.0] * horizon, atol=1e-9)
    np.testing.assert_allclose(metrics["rollout.probe_error_cm_copy_last"], [1.0, 2.0, 3.0],
                               atol=1e-9)  # the last context frame has x = 1 cm
    np.testing.assert_allclose(metrics["rollout.probe_error_cm_shuffled_actions"],
                               [2.0, 3.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(metrics["rollout.probe_block_error_cm"], [0.0] * horizon,
                               atol=1e-9)
    assert metrics["probe.real_error_cm"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["probe.real_block_error_cm"] == pytest.approx(0.0, abs=1e-9)
    one_point = probe_metrics(lambda frames: probe(frames)[..., :3], truth, imagined, shuffled,
                              truth, states[..., :3], context=context)
    assert not any("block" in key for key in one_point)


def test_probe_evaluator_gives_no_keys_without_states():
    assert probe_evaluator(types.SimpleNamespace(states=None)) == {}


def write_stateful_episodes(folder, count=3, length=10):
    os.makedirs(folder, exist_ok=True)
    for e in range(count):
        rng = np.random.default_rng(e)
        write_episode(os.path.join(folder, f"episode_{e:06d}.npz"),
                      rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
                      rng.normal(size=(length, 2)).astype(np.float32),
                      rng.normal(size=(length, 6)).astype(np.float32))


def test_episode_folder_states_reach_the_clips_and_the_fitting_set(tmp_path):
    write_stateful_episodes(tmp_path / "eps")
    episodes = npz_episodes(str(tmp_path / "eps"))
    assert [e.state_size for e in episodes] == [6, 6, 6]
    chunk = episodes[1].read(2, 5)
    assert len(tuple(chunk)) == 2  # unpacks as (frames, actions), as before
    want = np.load(tmp_path / "eps" / "episode_000001.npz")["states"][2:5]
    np.testing.assert_array_equal(chunk.states, want)
    clips = str(tmp_path / "clips")
    index = prepare_clips({"train": episodes[:2], "eval": episodes[2:]}, clips,
                          ClipSettings(length=4, stride=4), progress=False)
    assert index["plan"]["state_size"] == 6
    shard = open_shard(os.path.join(clips, "eval", "shard_000000"))
    source = np.load(tmp_path / "eps" / "episode_000002.npz")["states"]
    np.testing.assert_array_equal(shard["states"], [source[0:4], source[4:8], source[6:10]])
    fit = fitting_clips(clips, skip_eval=1, max_frames=10)
    assert (fit["eval_frames"], fit["train_frames"]) == (8, 2)
    np.testing.assert_array_equal(fit["states"][:8], source[[4, 5, 6, 7, 6, 7, 8, 9]])
    np.testing.assert_array_equal(fit["clip"], [0] * 4 + [1] * 4 + [2] * 2)

    np.savez(tmp_path / "eps" / "episode_000009.npz", frames=np.zeros((10, 8, 8, 3), np.uint8),
             states=np.zeros((10, 4)))
    with pytest.raises(DataError, match=r"episode_000009\.npz: `states` is float64 \(10, 4\)"):
        npz_episodes(str(tmp_path / "eps"))


def test_clip_folders_from_before_states_stay_readable_and_resume(tmp_path):
    write_stateful_episodes(tmp_path / "eps")
    episodes = npz_episodes(str(tmp_path / "eps"))
    clips = str(tmp_path / "clips")
    splits = {"train": episodes[:2], "eval": episodes[2:]}
    settings = ClipSettings(length=4, stride=4)
    prepare_clips(splits, clips, settings, progress=False)
    index_path = os.path.join(clips, "index.json")
    index = read_index(clips)  # make it look as written before states existed
    del index["plan"]["state_size"]
    with open(index_path, "w") as f:
        json.dump(index, f)
    for split in ("train", "eval"):
        os.remove(os.path.join(clips, split, "shard_000000", "states.npy"))
    prepare_clips(splits, clips, settings, progress=False)  # resumes, no plan error
    assert "state_size" not in read_index(clips)["plan"]
    assert "states" not in open_shard(os.path.join(clips, "eval", "shard_000000"))


def test_calvin_reader_states_match_the_episode_files(tmp_path):
    pytest.importorskip("pybullet")
    from data.sim_demos import SimSettings, generate_calvin_dataset

    root = str(tmp_path / "sim")
    generate_calvin_dataset(root, SimSettings(2, 1, 8, 32), progress=False)
    train = calvin_episodes(root, frame_size=(32, 32))
    assert [e.state_size for e in train] == [CALVIN_STATE_SIZE] * 2 == [12, 12]
    chunk = train[1].read(3, 7)
    for row, frame_id in enumerate(range(11, 15)):
        with np.load(frame_path(os.path.join(root, "training"), frame_id)) as npz:
            robot, scene = npz["robot_obs"], npz["scene_obs"]
        want = np.concatenate([robot[:3], scene[6:9], scene[12:15], scene[18:21]])
        np.testing.assert_allclose(chunk.states[row], want, rtol=1e-6)
    # blocks rest on the table top; the end effector is above it
    assert np.all(np.abs(chunk.states[:, 5::3] - 0.654) < 0.01)
    assert np.all(chunk.states[:, 2] > 0.65)
