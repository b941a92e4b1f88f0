"""Source readers (episodes folder, CALVIN) and resizing, on fixtures written in tmp_path."""

import os

import numpy as np
import pytest

from data.calvin import calvin_episodes, frame_path, read_language_annotations, write_segments
from data.episode import ActionLayout, DataError, SkippedDataWarning, read_episode
from data.episodes import npz_episodes
from data.images import area_weights, resize_frames


def write_episode(folder, name, length, size=(8, 8), actions="continuous"):
    """Frame t of episode e is filled with (100 * e + t) % 256; its action holds 100 * e + t."""
    values = 100 * int(name[-1]) + np.arange(length)
    pixels = (values % 256).astype(np.uint8)
    arrays = {"frames": np.broadcast_to(pixels[:, None, None, None], (length, *size, 3))}
    if actions == "continuous":
        arrays["actions"] = np.stack([values, -values], 1).astype(np.float32)
    elif actions == "discrete":
        arrays["actions"] = values.astype(np.int32)
    np.savez(os.path.join(folder, f"{name}.npz"), **arrays)


def test_episodes_folder_frames_and_actions_aligned(tmp_path):
    write_episode(tmp_path, "ep1", 5)
    write_episode(tmp_path, "ep2", 7)
    episodes = npz_episodes(str(tmp_path))
    assert [(e.name, e.length, e.frame_size) for e in episodes] == [
        ("ep1", 5, (8, 8)),
        ("ep2", 7, (8, 8)),
    ]
    assert episodes[0].action_layout == ActionLayout("continuous", (2,))
    frames, actions = episodes[1].read(2, 6)
    assert frames.shape == (4, 8, 8, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [202, 203, 204, 205])
    np.testing.assert_array_equal(actions, [[202, -202], [203, -203], [204, -204], [205, -205]])
    assert actions.dtype == np.float32


def test_episodes_folder_action_kinds(tmp_path):
    write_episode(tmp_path, "ep1", 4, actions="discrete")
    write_episode(tmp_path, "ep2", 4, actions=None)
    discrete, unlabeled = npz_episodes(str(tmp_path))
    assert discrete.action_layout == ActionLayout("discrete", ())
    np.testing.assert_array_equal(read_episode(discrete).actions, [100, 101, 102, 103])
    assert unlabeled.action_layout is None and read_episode(unlabeled).actions is None
    assert ActionLayout.infer(np.int64, (3,)) == ActionLayout("multipart", (3,))


def test_episodes_folder_errors_name_file_and_fix(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        npz_episodes(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"no \.npz episodes"):
        npz_episodes(str(tmp_path))
    write_episode(tmp_path, "ep1", 5)
    np.savez(
        tmp_path / "ep2.npz", frames=np.zeros((5, 8, 8, 3), np.uint8), actions=np.zeros((4, 2))
    )
    with pytest.raises(DataError, match=r"ep2\.npz: 4 actions for 5 frames"):
        npz_episodes(str(tmp_path))
    os.remove(tmp_path / "ep2.npz")
    write_episode(tmp_path, "ep3", 5, size=(9, 8))
    with pytest.raises(DataError, match=r"ep3\.npz: frames are 9x8 but 8x8 in .*ep1\.npz"):
        npz_episodes(str(tmp_path))
    os.remove(tmp_path / "ep3.npz")
    np.savez(tmp_path / "ep4.npz", frames=np.zeros((5, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"ep4\.npz: `frames` is float32"):
        npz_episodes(str(tmp_path))
    os.remove(tmp_path / "ep4.npz")
    valid = (tmp_path / "ep1.npz").read_bytes()
    (tmp_path / "ep5.npz").write_bytes(valid[: len(valid) // 2])
    with pytest.raises(DataError, match=r"ep5\.npz: not a readable \.npz.*corrupt or truncated"):
        npz_episodes(str(tmp_path))
    (tmp_path / "ep6.npz").write_bytes(b"garbage")
    with pytest.warns(SkippedDataWarning, match=r"skipped 2 of 3 episode files"):
        assert [e.name for e in npz_episodes(str(tmp_path), skip_bad=True)] == ["ep1"]
    os.remove(tmp_path / "ep1.npz")
    with pytest.warns(SkippedDataWarning, match=r"skipped 2 of 2"), pytest.raises(
            DataError, match=r"every one of the episode files was bad and skipped"):
        npz_episodes(str(tmp_path), skip_bad=True)


def write_calvin(root, split, segments, size=(200, 200)):
    """Frame id i: rgb_static filled with i % 256, rel_actions float64 i / 1000 * (1..7)."""
    split_dir = os.path.join(root, split)
    os.makedirs(split_dir, exist_ok=True)
    for first, last in segments:
        for i in range(first, last + 1):
            np.savez(
                frame_path(split_dir, i),
                rgb_static=np.full((*size, 3), i % 256, np.uint8),
                rel_actions=i / 1000 * np.arange(1, 8, dtype=np.float64),
                robot_obs=np.zeros(15),
            )
    write_segments(split_dir, np.array(segments))
    return split_dir


def test_calvin_segments_are_episodes_with_aligned_actions(tmp_path):
    write_calvin(tmp_path, "training", [(5, 12), (20, 24)])
    first, second = calvin_episodes(str(tmp_path))
    assert (first.name, first.length, second.name, second.length) == (
        "training/0000005-0000012",
        8,
        "training/0000020-0000024",
        5,
    )
    frames, actions = first.read(2, 5)  # frame ids 7, 8, 9
    assert frames.shape == (3, 200, 200, 3)
    np.testing.assert_array_equal(frames[:, 100, 100, 0], [7, 8, 9])
    assert actions.dtype == np.float32
    np.testing.assert_allclose(actions, np.array([7, 8, 9])[:, None] / 1000 * np.arange(1, 8))


def test_calvin_language_annotations_optional(tmp_path):
    write_calvin(tmp_path, "training", [(0, 3)])
    assert read_language_annotations(str(tmp_path)) == []
    os.makedirs(tmp_path / "training" / "lang_annotations")
    content = {
        "info": {"indx": [(0, 2), (1, 3)]},
        "language": {"task": ["push", "lift"], "ann": ["push the block", "lift it"]},
    }
    np.save(tmp_path / "training" / "lang_annotations" / "auto_lang_ann.npy", content)
    annotations = read_language_annotations(str(tmp_path))
    assert [(a.first_id, a.last_id, a.task, a.text) for a in annotations] == [
        (0, 2, "push", "push the block"),
        (1, 3, "lift", "lift it"),
    ]


def test_calvin_errors_name_file_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"training: no such folder.*CALVIN dataset root"):
        calvin_episodes(str(tmp_path))
    split_dir = tmp_path / "training"
    os.makedirs(split_dir)
    with pytest.raises(DataError, match=r"ep_start_end_ids\.npy: missing"):
        calvin_episodes(str(tmp_path))
    write_segments(str(split_dir), np.zeros((0, 2)))
    with pytest.raises(DataError, match="non-empty int"):
        calvin_episodes(str(tmp_path))
    write_calvin(tmp_path, "training", [(0, 3), (4, 6)])
    os.remove(frame_path(str(split_dir), 5))
    with pytest.raises(DataError, match=r"episode_0000005\.npz: missing frame file"):
        calvin_episodes(str(tmp_path))
    with pytest.warns(SkippedDataWarning, match="skipped 1 of 2 CALVIN segments"):
        assert [e.length for e in calvin_episodes(str(tmp_path), skip_bad=True)] == [4]
    write_calvin(tmp_path, "validation", [(0, 1)], size=(84, 84))
    with pytest.raises(DataError, match=r"episode_0000000\.npz: rgb_static is \(84, 84, 3\)"):
        calvin_episodes(str(tmp_path), "validation")
    (episode,) = calvin_episodes(str(tmp_path), "validation", frame_size=(84, 84))
    broken = frame_path(str(tmp_path / "validation"), 1)
    with open(broken, "rb") as f:
        valid = f.read()
    with open(broken, "wb") as f:
        f.write(valid[:1000])
    with pytest.raises(DataError, match=r"episode_0000001\.npz: cannot read.*corrupt"):
        episode.read(0, 2)


def test_area_resize_matches_hand_computation():
    np.testing.assert_allclose(area_weights(5, 3)[0], [0.6, 0.4, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(area_weights(5, 3).sum(1), 1.0, rtol=1e-6)
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(3, -1) * 10
    halved = resize_frames(image, (2, 2))
    block_means = image[0, :, :, 0].reshape(2, 2, 2, 2).mean((1, 3))
    np.testing.assert_array_equal(halved[0, :, :, 0], np.rint(block_means))
    constant = np.full((2, 200, 200, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_frames(constant, (64, 64)), 77)
    assert resize_frames(image, (4, 4)) is image
