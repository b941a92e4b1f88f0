"""Rewards, continues and task ids of .npz episodes (data/episodes.py) through clips
(data/clips.py), the latents stage's shards (launch/stages.py) and loader batches (data/loader.py).

Episode e (written by `write_episode`) has T_e frames; frame t is filled with 10 * e + t, its
action is t, `rewards[t]` = 10 * e + t + 0.5, `task[t]` = 3 * e + (1 if t >= 4 else 0) and
`continues[t]` = 1 except on ep1's last frame (ep1 ended there; ep0 and ep2 were cut off). With
clip length 4, stride 2 and 3 clips per shard (clip starts: `data.clips.clip_starts`):
    train: ep0 (6 frames) -> starts 0, 2          shard_000000: ep0@0, ep0@2, ep1@0
           ep1 (7 frames) -> starts 0, 2, 3       shard_000001: ep1@2, ep1@3
    eval:  ep2 (5 frames) -> starts 0, 1          shard_000000: ep2@0, ep2@1
"""

import json
import os

import numpy as np
import pytest

from data.clips import ClipId, ClipSettings, ClipStore, open_shard, prepare_clips, read_index
from data.episode import DataError, SkippedDataWarning
from data.episodes import npz_episodes, write_episode
from data.loader import make_loader
from launch.stages import encode_clips

LENGTHS = {"ep0": 6, "ep1": 7, "ep2": 5}
SETTINGS = ClipSettings(length=4, stride=2, clips_per_shard=3)


def rewards_of(e: int, t):
    return 10 * e + np.asarray(t) + 0.5


def task_of(e: int, t):
    return 3 * e + (np.asarray(t) >= 4)


def continues_of(e: int, t):
    return np.where((e == 1) & (np.asarray(t) == LENGTHS["ep1"] - 1), 0.0, 1.0)


ALL = ("ep0", "ep1", "ep2")


def write_episodes(folder, *, rewards=ALL, task=ALL, continues=ALL):
    """The episodes of the module docstring; only those named in `rewards` / `task` /
    `continues` have them."""
    os.makedirs(folder, exist_ok=True)
    for name, length in LENGTHS.items():
        e, t = int(name[-1]), np.arange(length)
        frames = np.broadcast_to((10 * e + t).astype(np.uint8)[:, None, None, None],
                                 (length, 4, 4, 3))
        write_episode(os.path.join(folder, f"{name}.npz"), frames, t.astype(np.int32),
                      rewards=rewards_of(e, t).astype(np.float32) if name in rewards else None,
                      task=task_of(e, t).astype(np.int64) if name in task else None,
                      continues=continues_of(e, t) if name in continues else None)


def prepare(tmp_path, **kwargs) -> ClipStore:
    write_episodes(tmp_path / "eps", **kwargs)
    episodes = npz_episodes(str(tmp_path / "eps"))
    prepare_clips({"train": episodes[:2], "eval": episodes[2:]}, str(tmp_path / "clips"),
                  SETTINGS, progress=False)
    return ClipStore(str(tmp_path / "clips"))


def frame_ids(frames) -> tuple[np.ndarray, np.ndarray]:
    """(episode, frame) per position of frames [..., H, W, 3] of the episodes above."""
    value = np.asarray(frames)[..., 0, 0, 0].astype(np.int64)
    return value // 10, value % 10


def test_episode_chunks_carry_rewards_and_task(tmp_path):
    write_episodes(tmp_path / "eps", rewards=("ep1",), task=("ep0", "ep1"))
    episodes = npz_episodes(str(tmp_path / "eps"))
    assert [(e.has_rewards, e.has_task) for e in episodes] == [(False, True), (True, True),
                                                                (False, False)]
    chunk = episodes[1].read(2, 6)
    assert len(tuple(chunk)) == 2  # still unpacks as (frames, actions)
    assert chunk.rewards.dtype == np.float32 and chunk.task.dtype == np.int32
    np.testing.assert_array_equal(chunk.rewards, [12.5, 13.5, 14.5, 15.5])
    np.testing.assert_array_equal(chunk.task, [3, 3, 4, 4])
    assert episodes[0].read(0, 2).rewards is None
    np.testing.assert_array_equal(episodes[0].read(3, 5).task, [0, 1])
    assert episodes[2].read(0, 1).task is None


def test_rewards_and_task_reach_the_clips(tmp_path):
    clips = prepare(tmp_path)
    plan = clips.index["plan"]
    assert plan["rewards"] is True and plan["task"] is True and plan["continues"] is True
    assert "state_size" not in plan
    shard = open_shard(clips.shard_dir("train", "shard_000001"))  # ep1@2, ep1@3
    assert shard["rewards"].dtype == np.float32 and shard["rewards"].shape == (2, 4)
    assert shard["task"].dtype == np.int32 and shard["task"].shape == (2, 4)
    np.testing.assert_array_equal(shard["rewards"], [[12.5, 13.5, 14.5, 15.5],
                                                     [13.5, 14.5, 15.5, 16.5]])
    np.testing.assert_array_equal(shard["task"], [[3, 3, 4, 4], [3, 4, 4, 4]])
    clip = clips.clip("train", 1)  # ep0@2
    np.testing.assert_array_equal(clip["rewards"], [2.5, 3.5, 4.5, 5.5])
    np.testing.assert_array_equal(clip["task"], [0, 0, 1, 1])
    first = clips.first("eval", 2, 3)  # ep2@0, ep2@1, first 3 frames
    np.testing.assert_array_equal(first["rewards"], [[20.5, 21.5, 22.5], [21.5, 22.5, 23.5]])
    np.testing.assert_array_equal(first["task"], [[6, 6, 6], [6, 6, 6]])
    picked = clips.by_ids("eval", [ClipId("ep2", 1)])
    np.testing.assert_array_equal(picked["rewards"], [[21.5, 22.5, 23.5, 24.5]])
    np.testing.assert_array_equal(picked["task"], [[6, 6, 6, 7]])
    # Every clip: the values of its frames' (episode, frame), whatever the shard.
    for split in clips.splits:
        for position in range(clips.count(split)):
            clip = clips.clip(split, position)
            e, t = frame_ids(clip["frames"])
            np.testing.assert_array_equal(clip["rewards"], rewards_of(e[0], t))
            np.testing.assert_array_equal(clip["task"], task_of(e[0], t))
            np.testing.assert_array_equal(clip["continues"], continues_of(e[0], t))
    assert clips.clip("train", 4)["continues"].tolist() == [1, 1, 1, 0]  # ep1@3 ends the episode


def frame_means(frames):
    """A stand-in encoder: each frame's mean (10 * e + t here) as one latent of one value."""
    return np.asarray(frames, np.float32).mean(axis=(2, 3, 4))[..., None, None]


def test_loader_batches_carry_rewards_and_task(tmp_path):
    clips = prepare(tmp_path)
    latents = str(tmp_path / "latents")
    encode_clips(clips.folder, latents, frame_means, batch=2, progress=False)
    assert set(open_shard(os.path.join(latents, "train", "shard_000000"))) == {
        "latents", "actions", "has_action", "rewards", "task", "continues"}
    for folder, key in ((clips.folder, "frames"), (latents, "latents")):
        loader = make_loader(folder, batch_size=2, seq_lengths=(3,), seed=1, num_threads=1)
        for _ in range(4):
            batch = next(loader)
            assert set(batch) == {key, "actions", "has_action", "rewards", "task", "continues"}
            assert batch["rewards"].dtype == np.float32 and batch["task"].dtype == np.int32
            value = np.asarray(batch[key])[..., 0, 0, 0] if key == "frames" else np.asarray(
                batch[key])[..., 0, 0]
            e, t = value.astype(np.int64) // 10, value.astype(np.int64) % 10
            np.testing.assert_array_equal(batch["actions"], t)
            np.testing.assert_array_equal(batch["rewards"], 10 * e + t + 0.5)
            np.testing.assert_array_equal(batch["task"], 3 * e + (t >= 4))
            np.testing.assert_array_equal(batch["continues"], continues_of(e, t))


def test_mixed_presence_warns_and_stores_none(tmp_path):
    with pytest.warns(UserWarning, match=r"some episodes have `rewards` and some \(e\.g\. ep2\) "
                                         r"do not; the clips store no `rewards`"):
        clips = prepare(tmp_path, rewards=("ep0", "ep1"))
    assert "rewards" not in clips.index["plan"] and clips.index["plan"]["task"] is True
    shard = open_shard(clips.shard_dir("eval", "shard_000000"))
    assert "rewards" not in shard
    np.testing.assert_array_equal(shard["task"], [[6, 6, 6, 6], [6, 6, 6, 7]])


def test_without_rewards_or_task_batches_are_as_before(tmp_path):
    clips = prepare(tmp_path, rewards=(), task=(), continues=())
    assert not {"rewards", "task", "continues"} & set(clips.index["plan"])
    latents = str(tmp_path / "latents")
    encode_clips(clips.folder, latents, frame_means, batch=2, progress=False)
    for folder, key in ((clips.folder, "frames"), (latents, "latents")):
        batch = next(make_loader(folder, batch_size=2, seq_lengths=(3,), num_threads=1))
        assert set(batch) == {key, "actions", "has_action"}


def test_clip_folders_from_before_rewards_stay_readable_and_resume(tmp_path):
    clips = prepare(tmp_path)
    index = read_index(clips.folder)  # make it look as written before rewards and task existed
    del index["plan"]["rewards"], index["plan"]["task"], index["plan"]["continues"]
    with open(os.path.join(clips.folder, "index.json"), "w") as f:
        json.dump(index, f)
    for split, name in (("train", "shard_000000"), ("train", "shard_000001"),
                        ("eval", "shard_000000")):
        for key in ("rewards", "task", "continues"):
            os.remove(os.path.join(clips.shard_dir(split, name), f"{key}.npy"))
    os.rename(clips.shard_dir("eval", "shard_000000"), str(tmp_path / "gone"))  # to resume
    episodes = npz_episodes(str(tmp_path / "eps"))
    prepare_clips({"train": episodes[:2], "eval": episodes[2:]}, clips.folder, SETTINGS,
                  progress=False)  # resumes with the old plan: no plan error, no rewards
    store = ClipStore(clips.folder)
    assert not {"rewards", "task", "continues"} & set(store.index["plan"])
    assert set(store.clip("eval", 1)) == {"frames", "actions", "has_action"}
    assert frame_ids(store.clip("eval", 1)["frames"])[1].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("key, value, message", [
    ("rewards", np.zeros(5, np.float32),
     r"ep1\.npz: `rewards` is float32 \(5,\); it must be float \[T\] \(rewards\[t\] earned by "
     r"actions\[t\]\) with T = 7, or be left out"),
    ("rewards", np.zeros((7, 1), np.float32), r"ep1\.npz: `rewards` is float32 \(7, 1\)"),
    ("rewards", np.arange(7), r"ep1\.npz: `rewards` is int64 \(7,\); it must be float"),
    ("rewards", np.array([0, 1, np.nan, 3, np.inf, 5, 6], np.float32),
     r"ep1\.npz: non-finite rewards \(in float32\) at frames \[2, 4\] \(2 of 7\); fix them, "
     r"or leave "
     r"`rewards` out"),
    ("rewards", np.full(7, -1e39), r"ep1\.npz: non-finite rewards \(in float32\) at frames "
                                   r"\[0, 1, 2, 3, 4\] \(7 of 7\)"),
    ("task", np.zeros(8, np.int32), r"ep1\.npz: `task` is int32 \(8,\); it must be int \[T\] "
                                    r"\(a task id per frame\) with T = 7"),
    ("task", np.zeros(7, np.float32), r"ep1\.npz: `task` is float32 \(7,\)"),
    ("task", np.array([0, 0, -1, 0, 0, 0, 0]),
     r"ep1\.npz: task ids outside 0 \.\. 2147483647 at frames \[2\] \(1 of 7\)"),
    ("continues", np.ones(7, np.int32), r"ep1\.npz: `continues` is int32 \(7,\); it must be "
                                        r"float \[T\] \(1, or 0 on the last frame where the "
                                        r"episode ended\) with T = 7"),
    ("continues", np.array([1, 1, 0, 1, 1, 0.5, 0], np.float32),
     r"ep1\.npz: continues other than 1 \(0 is allowed on the last frame only\) at frames "
     r"\[2, 5\] \(2 of 7\); fix them, or leave `continues` out"),
])
def test_bad_rewards_continues_and_task_name_the_file(tmp_path, key, value, message):
    write_episodes(tmp_path)
    t = np.arange(7)
    good = {"frames": np.zeros((7, 4, 4, 3), np.uint8), "rewards": rewards_of(1, t),
            "task": task_of(1, t)}
    np.savez(tmp_path / "ep1.npz", **(good | {key: value}))
    with pytest.raises(DataError, match=message) as caught:
        npz_episodes(str(tmp_path))
    assert "\n" not in str(caught.value)
    with pytest.warns(SkippedDataWarning, match=r"skipped 1 of 3 episode files.*ep1\.npz"):
        kept = npz_episodes(str(tmp_path), skip_bad=True)
    assert [e.name for e in kept] == ["ep0", "ep2"]


def test_extra_arrays_join_the_batches_cut_to_the_same_window(tmp_path):
    clips = prepare(tmp_path)
    ids = clips.ids("train")  # a value per clip frame: 100 * (clip start) + frame
    extra = np.array([[100.0 * start + t for t in range(start, start + 4)] for _, start in ids])
    loader = make_loader(clips.folder, batch_size=2, seq_lengths=(3,), seed=1, num_threads=1,
                         extra={"returns": extra})
    for _ in range(4):
        batch = next(loader)
        e, t = frame_ids(batch["frames"])
        start = (batch["returns"][:, 0] // 100).astype(int)
        np.testing.assert_array_equal(batch["returns"], 100 * start[:, None] + t)
        assert all(ClipId(f"ep{a}", b) in ids for a, b in zip(e[:, 0], start, strict=True))
    with pytest.raises(ValueError, match=r"extra array 'returns' is \(5, 3\); it needs one row "
                                         r"per clip of split 'train' and one value per frame: "
                                         r"\(5, 4, \.\.\.\)"):
        make_loader(clips.folder, batch_size=2, extra={"returns": extra[:, :3]})
