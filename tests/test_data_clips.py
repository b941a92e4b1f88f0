"""Clip cutting, the shard format, held-out split and resumable preparation."""

import json
import os

import numpy as np
import pytest

import data.clips
from data.calvin import calvin_episodes, frame_path
from data.clips import (
    ClipSettings,
    clip_starts,
    hold_out_episodes,
    open_shard,
    prepare_clips,
    read_index,
)
from data.episode import DataError, SkippedDataWarning
from data.episodes import npz_episodes
from data.sources import episode_splits
from tests.test_data_sources import write_calvin, write_episode


@pytest.mark.parametrize(
    ("length", "clip", "stride", "want"),
    [
        (10, 4, 4, [0, 4, 6]),  # last clip aligned to the end
        (10, 4, 3, [0, 3, 6]),  # already ends at the end
        (10, 4, 2, [0, 2, 4, 6]),
        (4, 4, 4, [0]),
        (3, 4, 1, []),  # shorter than a clip
        (10, 4, 5, [0, 5]),  # stride > length: frames 4 and 9 dropped
    ],
)
def test_clip_starts(length, clip, stride, want):
    assert clip_starts(length, clip, stride) == want


def test_clip_starts_cover_every_frame_when_stride_fits():
    for length in range(1, 30):
        for clip in range(1, 8):
            for stride in range(1, clip + 1):
                covered = np.zeros(length, bool)
                for start in clip_starts(length, clip, stride):
                    assert start + clip <= length
                    covered[start : start + clip] = True
                assert covered.all() == (length >= clip), (length, clip, stride)


def test_hold_out_is_by_episode_and_deterministic():
    episodes = list(range(20))
    split = hold_out_episodes(episodes, 0.1, seed=3)
    assert len(split["eval"]) == 2 and sorted(split["train"] + split["eval"]) == episodes
    assert hold_out_episodes(episodes, 0.1, seed=3) == split
    assert len(hold_out_episodes(episodes[:3], 0.01)["eval"]) == 1
    assert hold_out_episodes(episodes[:1], 0.5)["eval"] == []


def make_episodes(folder, lengths=(11, 6, 9), unlabeled=()):
    os.makedirs(folder, exist_ok=True)
    for number, length in enumerate(lengths):
        actions = None if number in unlabeled else "continuous"
        write_episode(folder, f"ep{number}", length, size=(8, 8), actions=actions)
    return npz_episodes(str(folder))


def load_split(clips_dir, split):
    """Every clip of a split with its origin, in shard order."""
    index = read_index(str(clips_dir))
    out = {"frames": [], "actions": [], "has_action": [], "origin": []}
    for name, _ in index["shards"][split]:
        shard_dir = os.path.join(clips_dir, split, name)
        for key, value in open_shard(shard_dir).items():
            out[key].append(np.asarray(value))
        with open(os.path.join(shard_dir, "clips.json")) as f:
            info = json.load(f)
        out["origin"] += list(zip(info["episode"], info["start"], strict=True))
    return {k: (np.concatenate(v) if k != "origin" else v) for k, v in out.items()}


def test_prepared_clips_hold_the_right_frames_and_actions(tmp_path):
    episodes = make_episodes(tmp_path / "eps", unlabeled=(1,))
    settings = ClipSettings(length=4, stride=3, image_size=(4, 4), clips_per_shard=2)
    index = prepare_clips({"train": episodes}, str(tmp_path / "clips"), settings, progress=False)
    assert index["complete"] and index["plan"]["action"] == {
        "kind": "continuous",
        "shape": [2],
        "dtype": "float32",
    }
    # ep0 (11 frames): 0, 3, 6, 7; ep1 (6): 0, 2; ep2 (9): 0, 3, 5 -> 9 clips in shards of 2.
    assert [count for _, count in index["shards"]["train"]] == [2, 2, 2, 2, 1]
    clips = load_split(tmp_path / "clips", "train")
    assert clips["origin"] == [
        ("ep0", 0), ("ep0", 3), ("ep0", 6), ("ep0", 7), ("ep1", 0), ("ep1", 2),
        ("ep2", 0), ("ep2", 3), ("ep2", 5),
    ]  # fmt: skip
    assert clips["frames"].shape == (9, 4, 4, 4, 3) and clips["frames"].dtype == np.uint8
    for row, (name, start) in enumerate(clips["origin"]):
        values = 100 * int(name[-1]) + start + np.arange(4)
        np.testing.assert_array_equal(clips["frames"][row, :, 1, 2, 0], values % 256)
        labeled = name != "ep1"
        np.testing.assert_array_equal(clips["has_action"][row], labeled)
        want = np.stack([values, -values], 1) if labeled else np.zeros((4, 2))
        np.testing.assert_array_equal(clips["actions"][row], want)


def test_split_by_episode_and_parallel_equals_serial(tmp_path):
    episodes = make_episodes(tmp_path / "eps", lengths=(8, 8, 8, 8, 8))
    splits = hold_out_episodes(episodes, 0.4, seed=0)
    settings = ClipSettings(length=4, stride=4, clips_per_shard=3)
    prepare_clips(splits, str(tmp_path / "serial"), settings, progress=False)
    prepare_clips(splits, str(tmp_path / "parallel"), settings, num_workers=2, progress=False)
    train, held = (load_split(tmp_path / "serial", s) for s in ("train", "eval"))
    assert {n for n, _ in train["origin"]}.isdisjoint({n for n, _ in held["origin"]})
    assert len(held["origin"]) == 4  # two held-out episodes, two clips each
    parallel = load_split(tmp_path / "parallel", "train")
    for key in ("frames", "actions", "has_action", "origin"):
        np.testing.assert_array_equal(parallel[key], train[key])


def shard_bytes(clips_dir):
    return {
        os.path.relpath(os.path.join(d, f), clips_dir): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(clips_dir)
        for f in files
        if f not in ("index.json", ".lock")  # the lock records who held it and when
    }


def test_resume_after_crash_gives_identical_shards(tmp_path, monkeypatch):
    episodes = make_episodes(tmp_path / "eps", lengths=(12, 12, 12))
    splits = {"train": episodes}
    settings = ClipSettings(length=4, stride=4, clips_per_shard=2)
    prepare_clips(splits, str(tmp_path / "clean"), settings, progress=False)

    real_save, calls = np.save, []

    def crash_on_seventh_array(path, array):
        calls.append(path)
        if len(calls) == 7:  # the first array of the third shard
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(data.clips.np, "save", crash_on_seventh_array)
    with pytest.raises(KeyboardInterrupt):
        prepare_clips(splits, str(tmp_path / "resumed"), settings, progress=False)
    monkeypatch.setattr(data.clips.np, "save", real_save)
    train_dir = tmp_path / "resumed" / "train"
    assert sorted(os.listdir(train_dir))[:2] == ["shard_000000", "shard_000001"]
    assert any(".tmp-" in name for name in os.listdir(train_dir))  # the interrupted shard
    with pytest.raises(DataError, match="did not finish"):
        read_index(str(tmp_path / "resumed"))
    first_shard = train_dir / "shard_000000" / "frames.npy"
    written_before = first_shard.stat().st_mtime_ns

    prepare_clips(splits, str(tmp_path / "resumed"), settings, progress=False)
    assert first_shard.stat().st_mtime_ns == written_before  # finished shards are not redone
    assert not any(".tmp-" in name for name in os.listdir(train_dir))
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "clean")
    assert (
        read_index(str(tmp_path / "resumed"))["shards"]
        == read_index(str(tmp_path / "clean"))["shards"]
    )
    with pytest.raises(DataError, match="prepared with other settings"):
        prepare_clips(splits, str(tmp_path / "resumed"), ClipSettings(length=3), progress=False)


def test_prepare_errors_and_skip(tmp_path):
    write_calvin(tmp_path / "calvin", "training", [(0, 5), (6, 11)], size=(8, 8))
    episodes = calvin_episodes(str(tmp_path / "calvin"), frame_size=(8, 8))
    settings = ClipSettings(length=3, stride=3)
    (tmp_path / "calvin" / "training" / "episode_0000008.npz").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"episode_0000008\.npz: cannot read"):
        prepare_clips({"train": episodes}, str(tmp_path / "a"), settings, progress=False)
    with pytest.warns(SkippedDataWarning, match="skipped 1 bad episode ranges"):
        index = prepare_clips(
            {"train": episodes}, str(tmp_path / "b"), settings, skip_bad=True, progress=False
        )
    assert index["shards"]["train"] == [["shard_000000", 2]] and len(index["skipped"]) == 1
    assert "episode_0000008" in index["skipped"][0]

    np.savez(frame_path(str(tmp_path / "calvin" / "training"), 8),
             rgb_static=np.zeros((8, 8, 3), np.uint8), rel_actions=np.full(7, np.nan))  # fmt: skip
    with pytest.raises(  # the file of the first bad frame, then the episode
        DataError, match=r"training/episode_0000008\.npz: non-finite actions at frames \[2\] of "
        r"episode training/0000006-0000011"
    ):
        prepare_clips({"train": episodes}, str(tmp_path / "c"), settings, progress=False)
    with pytest.raises(DataError, match="at least 20 frames"):
        prepare_clips({"train": episodes}, str(tmp_path / "d"), ClipSettings(20), progress=False)

    os.makedirs(tmp_path / "eps")
    write_episode(tmp_path / "eps", "ep1", 5, actions="discrete")
    discrete = npz_episodes(str(tmp_path / "eps"))
    with pytest.raises(DataError, match="mix action layouts"):
        prepare_clips({"train": episodes + discrete}, str(tmp_path / "e"), settings)


def test_episode_splits_per_format(tmp_path):
    write_calvin(tmp_path / "calvin", "training", [(0, 3), (4, 7), (8, 9)], size=(8, 8))
    held_out = episode_splits(
        "calvin", str(tmp_path / "calvin"), eval_fraction=0.3, frame_size=(8, 8)
    )
    assert (len(held_out["train"]), len(held_out["eval"])) == (2, 1)
    write_calvin(tmp_path / "calvin", "validation", [(0, 4)], size=(8, 8))
    splits = episode_splits("calvin", str(tmp_path / "calvin"), frame_size=(8, 8))
    assert [e.name for e in splits["eval"]] == ["validation/0000000-0000004"]
    assert len(splits["train"]) == 3
    make_episodes(tmp_path / "eps", lengths=(5, 5, 5, 5))
    episodes = episode_splits("episodes", str(tmp_path / "eps"), eval_fraction=0.5)
    assert (len(episodes["train"]), len(episodes["eval"])) == (2, 2)


def test_broken_index_names_the_file(tmp_path):
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(DataError, match=r"index\.json: not valid JSON"):
        read_index(str(tmp_path))
