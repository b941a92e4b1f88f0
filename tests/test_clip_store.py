"""ClipStore (data/clips.py) over a small prepared folder, and the eval's pairing by clip id.

Episode e has frames filled with 10 * e + t at frame t and discrete action t. With clip length 3,
stride 2 and 2 clips per shard (clip starts: `data.clips.clip_starts`):
    train: ep0 (5 frames) -> starts 0, 2                  shard_000000: ep0@0, ep0@2
    eval:  ep1 (7 frames) -> starts 0, 2, 4               shard_000000: ep1@0, ep1@2
           ep2 (4 frames) -> starts 0, 1 (the last, T - L) shard_000001: ep1@4, ep2@0
                                                          shard_000002: ep2@1
"""

import dataclasses
import os

import numpy as np
import pytest

from data.clips import ClipId, ClipSettings, ClipStore, prepare_clips, save_shard, write_json
from data.episode import ActionLayout, DataError, EpisodeChunk
from launch.evaluate import eval_clip_pairs
from launch.stages import encode_clips

DISCRETE = ActionLayout("discrete", ())
EVAL_IDS = [ClipId("ep1", 0), ClipId("ep1", 2), ClipId("ep1", 4), ClipId("ep2", 0),
            ClipId("ep2", 1)]


@dataclasses.dataclass(frozen=True)
class Counting:
    """An EpisodeRef whose frame t holds 10 * e + t everywhere and whose action t is t."""

    name: str
    length: int
    frame_size: tuple[int, int] = (2, 2)
    action_layout: ActionLayout = DISCRETE

    def read(self, start: int, stop: int) -> EpisodeChunk:
        values = 10 * int(self.name[-1]) + np.arange(start, stop)
        frames = np.broadcast_to(values[:, None, None, None], (stop - start, 2, 2, 3))
        return EpisodeChunk(frames.astype(np.uint8), np.arange(start, stop, dtype=np.int32))


@pytest.fixture
def clips(tmp_path) -> ClipStore:
    splits = {"train": [Counting("ep0", 5)], "eval": [Counting("ep1", 7), Counting("ep2", 4)]}
    prepare_clips(splits, str(tmp_path / "clips"), ClipSettings(3, 2, clips_per_shard=2),
                  progress=False)
    return ClipStore(str(tmp_path / "clips"))


def first_values(frames: np.ndarray) -> list[list[int]]:
    return frames[:, :, 0, 0, 0].tolist()


def test_layout_and_ids(clips):
    assert clips.splits == ["train", "eval"] and clips.clip_length == 3
    assert clips.action_layout == DISCRETE
    assert clips.shards("eval") == [("shard_000000", 2), ("shard_000001", 2),
                                    ("shard_000002", 1)]
    assert clips.count("train") == 2 and clips.count("eval") == 5
    assert clips.ids("train") == [ClipId("ep0", 0), ClipId("ep0", 2)]
    assert clips.ids("eval") == EVAL_IDS
    assert clips.shard_ids("eval", "shard_000001") == EVAL_IDS[2:4]
    with pytest.raises(DataError, match=r"clips: no split 'test' \(has \['eval', 'train'\]\)"):
        clips.shards("test")


def test_clip_by_position(clips):
    clip = clips.clip("eval", 3)  # ep2@0
    assert clip["frames"][:, 0, 0, 0].tolist() == [20, 21, 22]
    assert clip["actions"].tolist() == [0, 1, 2] and clip["has_action"].all()
    assert clips.clip("eval", 4)["frames"][:, 1, 1, 2].tolist() == [21, 22, 23]  # ep2@1
    assert clips.clip("train", 1)["actions"].tolist() == [2, 3, 4]  # ep0@2
    with pytest.raises(IndexError, match="has 5 clips, no clip 5"):
        clips.clip("eval", 5)


def test_first_clips_cut_to_length(clips):
    first = clips.first("eval", 3, 2)
    assert first["frames"].shape == (3, 2, 2, 2, 3)
    assert first_values(first["frames"]) == [[10, 11], [12, 13], [14, 15]]
    assert first["actions"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert clips.first_ids("eval", 3) == EVAL_IDS[:3]
    assert first_values(clips.first("eval", 9)["frames"]) == [
        [10, 11, 12], [12, 13, 14], [14, 15, 16], [20, 21, 22], [21, 22, 23]]
    assert clips.first_ids("eval", 9) == EVAL_IDS


def test_clips_by_id(clips):
    picked = clips.by_ids("eval", [ClipId("ep2", 1), ClipId("ep1", 0), ClipId("ep2", 1)], 3)
    assert first_values(picked["frames"]) == [[21, 22, 23], [10, 11, 12], [21, 22, 23]]
    assert picked["actions"].tolist() == [[1, 2, 3], [0, 1, 2], [1, 2, 3]]
    with pytest.raises(DataError, match=r"no clip of episode 'ep1' starting at frame 1 \(1 of "
                                        r"the 2"):
        clips.by_ids("eval", [ClipId("ep1", 0), ClipId("ep1", 1)])


def frame_means(frames):
    """A stand-in encoder: each frame's mean as one latent of one value."""
    return np.asarray(frames, np.float32).mean(axis=(2, 3, 4))[..., None, None]


def test_encoded_folder_keeps_ids_and_stats(clips, tmp_path):
    encode_clips(clips.folder, str(tmp_path / "latents"), frame_means, batch=1, progress=False)
    latents = ClipStore(str(tmp_path / "latents"))
    assert latents.ids("eval") == EVAL_IDS and latents.ids("train") == clips.ids("train")
    np.testing.assert_array_equal(latents.clip("eval", 4)["latents"][:, 0, 0], [21, 22, 23])
    # Training latents: ep0@0 (0, 1, 2) and ep0@2 (2, 3, 4): mean 2, variance 10 / 6.
    stats = latents.index["latent_stats"]
    np.testing.assert_allclose([stats["mean"], stats["std"]], [2.0, np.sqrt(10 / 6)])


def write_latents(folder, clips: ClipStore, ids: list[ClipId]):
    """A latent folder holding `ids` in that order, in one eval shard; latent of frame t of
    clip (e, s) = 10 * e + s + t, what the frame clip holds."""
    values = np.array([[10 * int(i.episode[-1]) + i.start + t for t in range(3)] for i in ids]
                      ).reshape(len(ids), 3)
    save_shard(os.path.join(folder, "eval", "shard_000000"), {
        "latents": values[:, :, None, None].astype(np.float32),
        "actions": np.zeros((len(ids), 3), np.int32), "has_action": np.ones((len(ids), 3), bool)},
        {"episode": [i.episode for i in ids], "start": [i.start for i in ids]})
    write_json(os.path.join(folder, "index.json"),
               dict(clips.index, shards={"eval": [["shard_000000", len(ids)]]}))


def test_eval_pairs_frames_with_shuffled_latents_by_id(clips, tmp_path):
    shuffled = [EVAL_IDS[i] for i in (4, 0, 3, 2, 1)]
    write_latents(str(tmp_path / "latents"), clips, shuffled)
    frames, latents = eval_clip_pairs(clips.folder, str(tmp_path / "latents"), 3, 2)
    assert latents["latents"][:, :, 0, 0].tolist() == [[21, 22], [10, 11], [20, 21]]
    assert first_values(frames["frames"]) == [[21, 22], [10, 11], [20, 21]]


def test_eval_names_a_latent_clip_without_frames(clips, tmp_path):
    write_latents(str(tmp_path / "latents"), clips, [EVAL_IDS[0], ClipId("ep9", 0)])
    with pytest.raises(DataError, match=r"no clip of episode 'ep9' starting at frame 0.* "
                                        r"the latents were encoded from other clips"):
        eval_clip_pairs(clips.folder, str(tmp_path / "latents"), 2, 3)
    write_latents(str(tmp_path / "empty"), clips, [])
    with pytest.raises(DataError, match="no eval clips"):
        eval_clip_pairs(clips.folder, str(tmp_path / "empty"), 2, 3)
