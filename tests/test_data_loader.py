"""The grain loader: alignment, mixed lengths, shuffling, per-process shards, exact restore."""

import collections
import json
import os
import sys

import numpy as np
import pytest

from data.clips import ClipSettings, prepare_clips
from data.episode import DataError
from data.loader import make_loader
from tests.test_data_clips import make_episodes


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    """5 episodes x 3 clips of 8 frames; action[0] is 100 * ep + t, the frame value that mod 256."""
    root = tmp_path_factory.mktemp("loader")
    episodes = make_episodes(root / "eps", lengths=(24,) * 5)
    settings = ClipSettings(length=8, stride=8, clips_per_shard=4)
    prepare_clips({"train": episodes}, str(root / "clips"), settings, progress=False)
    return str(root / "clips")


def clip_ids(batch):
    """(episode, first frame in the episode) of each row, decoded from its actions."""
    return [(int(a) // 100, int(a) % 100) for a in batch["actions"][:, 0, 0]]


def test_batches_are_aligned_windows_of_clips(clips_dir):
    loader = make_loader(clips_dir, batch_size=3, seq_lengths=(5,), seed=0)
    for _ in range(6):
        batch = next(loader)
        assert batch["frames"].shape == (3, 5, 8, 8, 3) and batch["frames"].dtype == np.uint8
        assert batch["actions"].shape == (3, 5, 2) and batch["actions"].dtype == np.float32
        assert batch["has_action"].all()
        first = batch["actions"][:, :1, 0]
        np.testing.assert_array_equal(batch["actions"][..., 0], first + np.arange(5))
        np.testing.assert_array_equal(batch["frames"][:, :, 0, 0, 0], (first + np.arange(5)) % 256)
        np.testing.assert_array_equal(batch["actions"][..., 1], -batch["actions"][..., 0])
        offset_in_clip = (first[:, 0] % 100) % 8  # episodes are 24 = 3 x 8 frames
        assert np.all(offset_in_clip <= 8 - 5)


def test_mixed_sequence_lengths(clips_dir):
    loader = make_loader(clips_dir, batch_size=2, seq_lengths=(8, 3), length_weights=(1, 3))
    lengths = collections.Counter(next(loader)["frames"].shape[1] for _ in range(200))
    assert set(lengths) == {3, 8} and 120 < lengths[3] < 180


def test_one_epoch_is_a_permutation_and_processes_are_disjoint(clips_dir):
    def epoch(process_index, process_count):
        loader = make_loader(
            clips_dir, batch_size=1, seed=5, process_index=process_index,
            process_count=process_count,
        )  # fmt: skip
        count = 15 // process_count + (process_index < 15 % process_count)
        return [clip_ids(next(loader))[0] for _ in range(count)]

    everything = epoch(0, 1)
    assert sorted(everything) == [(e, s) for e in range(5) for s in (0, 8, 16)]
    assert everything != sorted(everything)  # shuffled
    first, second = epoch(0, 2), epoch(1, 2)
    assert len(first) == 8 and len(second) == 7
    assert set(first).isdisjoint(second) and sorted(first + second) == sorted(everything)


def test_restored_iterator_continues_with_identical_batches(clips_dir):
    kwargs = dict(batch_size=4, seq_lengths=(8, 4), seed=7)
    loader = make_loader(clips_dir, **kwargs)
    for _ in range(5):  # past the first epoch of 15 clips
        next(loader)
    state = json.loads(json.dumps(loader.get_state()))
    expected = [next(loader) for _ in range(3)]
    restored = make_loader(clips_dir, **kwargs)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_loader_errors(clips_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="prepare clips first"):
        make_loader(str(tmp_path), batch_size=1)
    with pytest.raises(DataError, match="no split 'eval'"):
        make_loader(clips_dir, "eval", batch_size=1)
    with pytest.raises(ValueError, match=r"must lie in 1\.\.8"):
        make_loader(clips_dir, batch_size=1, seq_lengths=(9,))
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        make_loader(clips_dir, batch_size=16)
    with open(os.path.join(clips_dir, "index.json")) as f:
        index = json.load(f)
    index["complete"] = False
    os.makedirs(tmp_path / "unfinished")
    with open(tmp_path / "unfinished" / "index.json", "w") as f:
        json.dump(index, f)
    with pytest.raises(DataError, match="did not finish"):
        make_loader(str(tmp_path / "unfinished"), batch_size=1)
    monkeypatch.setitem(sys.modules, "grain", None)
    with pytest.raises(ImportError, match=r"needs grain \(pip install"):
        make_loader(clips_dir, batch_size=1)
