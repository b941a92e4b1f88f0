"""Clip preprocessing: cuts episodes into fixed-length clips and owns the on-disk clip format.

On-disk format (no pickles: every array is a plain .npy whose header holds shape and dtype)::

    <out>/index.json                   what is in the folder (below)
    <out>/<split>/shard_000000/
        frames.npy       uint8 [N, L, H, W, 3]
        actions.npy      [N, L, *action shape]; float32 (continuous) or int32 (discrete, multipart)
        has_action.npy   bool [N, L]; False for frames of episodes without actions
        states.npy       float32 [N, L, S], only when every episode has states (layout:
                         data/episode.py; S is the plan's "state_size")
        rewards.npy      float32 [N, L], only when every episode has rewards (`rewards[t]` is
                         earned by `actions[t]`)
        continues.npy    float32 [N, L], only when every episode has them (0 on the frame whose
                         action ended the episode; a clip's only possible 0 is its last frame)
        task.npy         int32 [N, L], only when every episode has task ids
        clips.json       {"episode": [episode name per clip], "start": [first frame per clip]}

`index.json` holds "format" ("dreamer4-clips"), "version", "plan" (settings, frame size, action
layout, "state_size" when the clips store states, "rewards", "continues" and "task": true when
they store those, and per split the episodes with their lengths and the shards with their planned
clip counts), "shards" (per split: [name, clips written]), "skipped" (errors of bad input left out
with skip_bad) and "complete" (true once every shard exists). When only some episodes have one
of the optional arrays, preparation warns and the clips store none of it.

Clip starts in an episode of T frames, for clip length L and stride S: 0, S, 2S, ... while
start + L <= T, plus a last clip starting at T - L when that start is not already there. So with
S <= L every frame is in at least one clip (the last clip may overlap its neighbour more), and with
S > L the frames between clips are dropped. Episodes shorter than L give no clip; the index counts
them and preparation says so. Shards pack consecutive clips of consecutive episodes, at most
`clips_per_shard` each.

Preparation runs shards in parallel processes; each shard is written to a temporary folder and
renamed into place, so a crash never leaves a partial shard, and re-running with the same plan
skips finished shards (a different plan raises instead of mixing two datasets). It writes only
into a folder it made or an empty one, and holds the folder's lock (`<out>/.lock`) while it
writes, so a second preparation of the same folder stops at once instead of deleting the first
one's temporary shards. A folder prepared before clips stored an optional array keeps its plan,
and so stays without it, when re-run.

Reading: `ClipStore(folder)` owns the layout (shards per split, clips by position or by
`ClipId` (episode, start), the first clips of a split); nothing else walks the index's shards.
"""

import bisect
import dataclasses
import functools
import json
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from data.episode import (
    FRAME_ARRAYS,
    SCALAR_FRAME_ARRAYS,
    ActionLayout,
    DataError,
    EpisodeRef,
    SkippableDataError,
    SkippedDataWarning,
    dataset_action_layout,
    dataset_frame_arrays,
)
from data.images import resize_frames
from data.jobs import FolderLock, Progress, check_own_folder, run_jobs

FORMAT = "dreamer4-clips"
VERSION = 1
INDEX_FILE = "index.json"
READ_CHUNK = 256  # frames read and resized at a time, to bound memory on long episodes


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How clips are cut: `length` frames every `stride` frames, resized to `image_size` (H, W;
    None keeps the source size), at most `clips_per_shard` per shard."""

    length: int = 16
    stride: int = 16
    image_size: tuple[int, int] | None = None
    clips_per_shard: int = 64

    def __post_init__(self):
        if self.length < 1 or self.stride < 1 or self.clips_per_shard < 1:
            raise ValueError(f"length, stride and clips_per_shard must be >= 1: {self}")


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to write: (episode, clip starts) pieces, in order."""

    split: str
    name: str
    pieces: tuple[tuple[EpisodeRef, tuple[int, ...]], ...]

    @property
    def clips(self) -> int:
        return sum(len(starts) for _, starts in self.pieces)


def clip_starts(episode_length: int, length: int, stride: int) -> list[int]:
    """First frames of the clips cut from one episode (see the module docstring)."""
    if episode_length < length:
        return []
    starts = list(range(0, episode_length - length + 1, stride))
    if starts[-1] != episode_length - length and stride <= length:
        starts.append(episode_length - length)
    return starts


def hold_out_episodes(
    episodes: Sequence[EpisodeRef], eval_fraction: float, seed: int = 0
) -> dict[str, list[EpisodeRef]]:
    """Splits episodes (never clips) into "train" and "eval"; eval gets round(fraction * N),
    at least one when the fraction is positive, and train keeps at least one."""
    count = len(episodes)
    n_eval = round(count * eval_fraction)
    if eval_fraction > 0:
        n_eval = max(n_eval, 1)
    n_eval = min(n_eval, count - 1) if count > 1 else 0
    held = set(np.random.default_rng(seed).permutation(count)[:n_eval].tolist())
    return {
        "train": [e for i, e in enumerate(episodes) if i not in held],
        "eval": [e for i, e in enumerate(episodes) if i in held],
    }


def plan_shards(
    splits: Mapping[str, Sequence[EpisodeRef]], settings: ClipSettings
) -> list[ShardTask]:
    """Every shard of every split, packing clips in episode order."""
    tasks = []
    for split, episodes in splits.items():
        shards: list[list[tuple[EpisodeRef, tuple[int, ...]]]] = [[]]
        for episode in episodes:
            starts = clip_starts(episode.length, settings.length, settings.stride)
            while starts:
                room = settings.clips_per_shard - sum(len(s) for _, s in shards[-1])
                shards[-1].append((episode, tuple(starts[:room])))
                starts = starts[room:]
                if room == len(shards[-1][-1][1]):
                    shards.append([])
        tasks += [
            ShardTask(split, f"shard_{i:06d}", tuple(pieces))
            for i, pieces in enumerate(s for s in shards if s)
        ]
    return tasks


def _target_frame_size(episodes: Sequence[EpisodeRef], settings: ClipSettings) -> tuple[int, int]:
    if settings.image_size is not None:
        return tuple(settings.image_size)
    sizes = {tuple(e.frame_size) for e in episodes}
    if len(sizes) > 1:
        raise DataError(
            f"episodes have frame sizes {sorted(sizes)}; set image_size to resize them to one"
        )
    return sizes.pop()


def _frame_arrays_of(plan: dict) -> dict[str, tuple[int, ...]]:
    """The optional per-frame arrays (`data.episode.FRAME_ARRAYS`) the plan's clips store, each
    with its shape per frame."""
    stored = {"states": (plan["state_size"],)} if plan.get("state_size") else {}
    return stored | {key: () for key in SCALAR_FRAME_ARRAYS if plan.get(key)}


def _plan_entries(frame_arrays: Mapping[str, tuple[int, ...]]) -> dict:
    """How the plan records the optional per-frame arrays the clips store (`_frame_arrays_of`
    reads them back)."""
    entries = {"state_size": frame_arrays["states"][0]} if "states" in frame_arrays else {}
    return entries | {key: True for key in SCALAR_FRAME_ARRAYS if key in frame_arrays}


def _empty_frame_arrays(lead: tuple[int, ...], frame_arrays: Mapping[str, tuple[int, ...]]
                        ) -> dict[str, np.ndarray]:
    return {key: np.zeros((*lead, *shape), FRAME_ARRAYS[key])
            for key, shape in frame_arrays.items()}


def _read_window(ref: EpisodeRef, start: int, stop: int, frame_size, action_layout,
                 frame_arrays: Mapping[str, tuple[int, ...]]):
    """Frames (resized), actions and the optional per-frame arrays `frame_arrays` (key -> shape
    per frame) of ref[start:stop], read in bounded chunks."""
    frames = np.empty((stop - start, *frame_size, 3), np.uint8)
    actions = np.zeros((stop - start, *action_layout.shape), action_layout.dtype)
    optional = _empty_frame_arrays((stop - start,), frame_arrays)
    chunk_frames = getattr(ref, "read_chunk", READ_CHUNK) or stop - start
    for lo in range(start, stop, chunk_frames):
        hi = min(lo + chunk_frames, stop)
        chunk = ref.read(lo, hi)
        frames[lo - start : hi - start] = resize_frames(chunk.frames, frame_size)
        if chunk.actions is not None:
            actions[lo - start : hi - start] = chunk.actions
        for key, values in optional.items():
            values[lo - start : hi - start] = getattr(chunk, key)
    if ref.action_layout is not None and not np.all(np.isfinite(actions)):
        bad = np.flatnonzero(~np.isfinite(actions.reshape(len(actions), -1)).all(1)) + start
        raise DataError(
            f"{ref.source(int(bad[0]))}: non-finite actions at frames {bad[:5].tolist()} of "
            f"episode {ref.name}; fix or drop them"
        )
    return frames, actions, optional


def write_shard(
    task: ShardTask, out_dir: str, settings: ClipSettings, frame_size, action_layout,
    skip_bad: bool, frame_arrays: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[int, list[str]]:
    """Writes one shard atomically (with `<key>.npy` for each optional per-frame array of
    `frame_arrays`, key -> shape per frame); returns (clips written, errors of skipped
    pieces)."""
    length, frame_arrays = settings.length, frame_arrays or {}
    frames = np.empty((task.clips, length, *frame_size, 3), np.uint8)
    actions = np.zeros((task.clips, length, *action_layout.shape), action_layout.dtype)
    has_action = np.zeros((task.clips, length), bool)
    optional = _empty_frame_arrays((task.clips, length), frame_arrays)
    episode_names, starts, skipped = [], [], []
    for ref, piece_starts in task.pieces:
        try:
            window_frames, window_actions, window_optional = _read_window(
                ref, piece_starts[0], piece_starts[-1] + length, frame_size, action_layout,
                frame_arrays,
            )
        except DataError as e:
            if not skip_bad:
                raise SkippableDataError(str(e)) from e
            skipped.append(str(e))
            continue
        for start in piece_starts:
            row, offset = len(starts), start - piece_starts[0]
            frames[row] = window_frames[offset : offset + length]
            actions[row] = window_actions[offset : offset + length]
            for key, values in optional.items():
                values[row] = window_optional[key][offset : offset + length]
            has_action[row] = ref.action_layout is not None
            episode_names.append(ref.name)
            starts.append(start)
    kept = len(starts)
    arrays = {"frames": frames[:kept], "actions": actions[:kept], "has_action": has_action[:kept]}
    arrays |= {key: values[:kept] for key, values in optional.items()}
    save_shard(os.path.join(out_dir, task.split, task.name), arrays,
               {"episode": episode_names, "start": starts})
    return kept, skipped


def save_shard(final: str, arrays: dict[str, np.ndarray], clips: dict) -> None:
    """Writes `arrays` as .npy files plus `clips` as clips.json into the folder `final`,
    atomically: everything goes to a temporary folder that is renamed into place."""
    temp = f"{final}.tmp-{os.getpid()}"
    os.makedirs(temp)
    for key, value in arrays.items():
        np.save(os.path.join(temp, f"{key}.npy"), value)
    with open(os.path.join(temp, "clips.json"), "w") as f:
        json.dump(clips, f)
    os.rename(temp, final)


def _plan_json(splits, tasks, settings, frame_size, action_layout, frame_arrays) -> dict:
    plan = {
        "settings": dataclasses.asdict(settings),
        "frame_size": list(frame_size),
        "action": action_layout.to_json(),
        **_plan_entries(frame_arrays),
        "splits": {
            split: {
                "episodes": [[e.name, e.length] for e in episodes],
                "short_episodes": sum(e.length < settings.length for e in episodes),
                "shards": [[t.name, t.clips] for t in tasks if t.split == split],
            }
            for split, episodes in splits.items()
        },
    }
    return json.loads(json.dumps(plan))


def write_json(path: str, value: dict) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(temp, path)


def prepare_clips(
    splits: Mapping[str, Sequence[EpisodeRef]],
    out_dir: str,
    settings: ClipSettings,
    *,
    num_workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Cuts the episodes of each split into clip shards under `out_dir`; returns the index.

    Resumable: finished shards of an earlier run with the same plan are kept. Raises DataError
    for bad input (or, with `skip_bad`, leaves it out and warns with the count), when `out_dir`
    holds clips made with a different plan, and when it is a non-empty folder without an index
    (not made by clip preparation).
    """
    episodes = [e for split in splits.values() for e in split]
    if not episodes:
        raise DataError(f"{out_dir}: no episodes to cut into clips; check the data path")
    action_layout = dataset_action_layout(episodes)
    frame_size = _target_frame_size(episodes, settings)
    tasks = plan_shards(splits, settings)
    if not tasks:
        raise DataError(
            f"no episode is at least {settings.length} frames long; lower the clip length"
        )
    short = [e for e in episodes if e.length < settings.length]
    if short:
        print(f"clips: {len(short)} of the {len(episodes)} episodes are shorter than a clip "
              f"({settings.length} frames) and give no clips (e.g. {short[0].name}: "
              f"{short[0].length} frames)", file=sys.stderr, flush=True)
    plan = _plan_json(splits, tasks, settings, frame_size, action_layout,
                      dataset_frame_arrays(episodes))
    check_own_folder(out_dir, INDEX_FILE, "clip preparation",
                     "choose a new or empty output folder for the clips")
    with FolderLock(out_dir):
        return _write_clips(out_dir, splits, tasks, plan, settings, frame_size, action_layout,
                            num_workers=num_workers, skip_bad=skip_bad, progress=progress)


def _write_clips(out_dir, splits, tasks, plan, settings, frame_size, action_layout, *,
                 num_workers, skip_bad, progress) -> dict:
    """prepare_clips once it holds the folder's lock: index, missing shards, finished index."""
    index_path = os.path.join(out_dir, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            existing = json.load(f)["plan"]
        # A folder prepared before clips stored an optional array resumes without it.
        newer = set(_plan_entries(_frame_arrays_of(plan))) - set(existing)
        if existing == {key: value for key, value in plan.items() if key not in newer}:
            plan = existing
        if existing != plan:
            raise DataError(
                f"{out_dir} holds clips prepared with other settings or episodes; use a new "
                "output folder, or delete this one to prepare it again"
            )
    else:
        write_json(
            index_path, {"format": FORMAT, "version": VERSION, "plan": plan, "complete": False}
        )
    for split in splits:
        split_dir = os.path.join(out_dir, split)
        os.makedirs(split_dir, exist_ok=True)
        for entry in os.listdir(split_dir):
            if ".tmp-" in entry:  # left by a crashed run (a live one would hold the lock)
                shutil.rmtree(os.path.join(split_dir, entry))
    pending = [t for t in tasks if not os.path.isdir(os.path.join(out_dir, t.split, t.name))]
    bar = Progress("clips", sum(t.clips for t in tasks), "clips")
    bar.done = sum(t.clips for t in tasks) - sum(t.clips for t in pending)  # resumed
    work = functools.partial(
        write_shard,
        out_dir=out_dir,
        settings=settings,
        frame_size=frame_size,
        action_layout=action_layout,
        skip_bad=skip_bad,
        frame_arrays=_frame_arrays_of(plan),
    )
    skipped = []
    for task, (_, errors) in run_jobs(work, pending, num_workers):
        skipped += errors
        if progress:
            bar.update(task.clips)
    return _finish_index(out_dir, tasks, plan, skipped)


def _finish_index(out_dir: str, tasks: Sequence[ShardTask], plan: dict, skipped) -> dict:
    index_path = os.path.join(out_dir, INDEX_FILE)
    with open(index_path) as f:
        index = json.load(f)
    shards = {split: [] for split in plan["splits"]}
    for task in tasks:
        with open(os.path.join(out_dir, task.split, task.name, "clips.json")) as f:
            shards[task.split].append([task.name, len(json.load(f)["start"])])
    index.update(shards=shards, skipped=index.get("skipped", []) + skipped, complete=True)
    write_json(index_path, index)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} bad episode ranges while writing clips (skip_bad=True); "
            f"first: {skipped[0]}",
            SkippedDataWarning,
            stacklevel=3,
        )
    return index


def read_index(clips_dir: str) -> dict:
    """The index of a finished clip folder (DataError if missing, foreign or unfinished)."""
    path = os.path.join(clips_dir, INDEX_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; prepare clips first (python -m data.prepare)")
    try:
        with open(path) as f:
            index = json.load(f)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error}); delete the clip folder and prepare "
                        "it again") from error
    if not isinstance(index, dict) or (index.get("format"), index.get("version")) != (FORMAT,
                                                                                     VERSION):
        raise DataError(f"{path}: not a {FORMAT} v{VERSION} index")
    if not index.get("complete"):
        raise DataError(
            f"{clips_dir}: preparation did not finish; run it again with the same settings to "
            "complete the missing shards"
        )
    return index


SHARD_ARRAYS = ("frames", "latents", "actions", "has_action", *FRAME_ARRAYS)
# np.load parses each .npy header with ast.literal_eval, and CPython 3.11's parser is not safe to
# run from several threads at once (it raises "SystemError: AST constructor recursion depth
# mismatch"): the loader's threads open shards one at a time.
_OPEN_LOCK = threading.Lock()


def open_shard(shard_dir: str) -> dict[str, np.ndarray]:
    """A shard's arrays, memory-mapped read-only (no pickles allowed), by key (`SHARD_ARRAYS`;
    those the shard holds). Clip shards hold frames (and the optional per-frame arrays that
    every episode has); the latent shards that the launch's latents stage writes in the
    same layout hold latents. DataError naming the file if one is truncated or damaged."""
    arrays = {}
    for key in SHARD_ARRAYS:
        path = os.path.join(shard_dir, f"{key}.npy")
        if not os.path.exists(path):
            continue
        try:
            with _OPEN_LOCK:
                arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DataError(
                f"{path}: cannot read ({type(error).__name__}: {error}); the shard is truncated "
                f"or damaged: delete {shard_dir} and run the stage that wrote it again (it "
                "writes only missing shards)"
            ) from error
    return arrays


class ClipId(NamedTuple):
    """Where a clip comes from: its episode's name and its first frame in that episode."""

    episode: str
    start: int


class ClipStore:
    """A finished clip folder, or a folder in the same layout with other arrays (the launch's
    latents stage writes latents instead of frames): the shards of each split, a clip by
    (split, position), clip ids, the first clips of a split and clips by id.

    `index`: use this index instead of reading the folder's (a folder still being written).
    Positions count the clips of a split in shard order; ids are `ClipId`s from each shard's
    clips.json, so two folders of the same clips pair up by id whatever their order.
    """

    def __init__(self, folder: str, index: dict | None = None):
        self.folder = folder
        self.index = read_index(folder) if index is None else index
        self._positions: dict[str, tuple[list[str], list[int]]] = {}  # names, first positions

    @property
    def splits(self) -> list[str]:
        return list(self.index["shards"])

    @property
    def clip_length(self) -> int:
        return self.index["plan"]["settings"]["length"]

    @property
    def action_layout(self) -> ActionLayout:
        return ActionLayout.from_json(self.index["plan"]["action"])

    def shards(self, split: str) -> list[tuple[str, int]]:
        """(name, clip count) of the split's shards that hold clips, in order."""
        if split not in self.index["shards"]:
            raise DataError(f"{self.folder}: no split {split!r} (has "
                            f"{sorted(self.index['shards'])}); prepare it")
        return [(name, count) for name, count in self.index["shards"][split] if count > 0]

    def shard_dir(self, split: str, name: str) -> str:
        return os.path.join(self.folder, split, name)

    def read_shard(self, split: str, name: str) -> dict[str, np.ndarray]:
        """The shard's arrays, memory-mapped read-only."""
        return open_shard(self.shard_dir(split, name))

    def shard_clips(self, split: str, name: str) -> dict[str, list]:
        """The shard's clips.json: {"episode": [...], "start": [...]}, one entry per clip."""
        with open(os.path.join(self.shard_dir(split, name), "clips.json")) as f:
            return json.load(f)

    def shard_ids(self, split: str, name: str) -> list[ClipId]:
        clips = self.shard_clips(split, name)
        return [ClipId(e, int(s)) for e, s in zip(clips["episode"], clips["start"], strict=True)]

    def count(self, split: str) -> int:
        return sum(count for _, count in self.shards(split))

    def ids(self, split: str) -> list[ClipId]:
        """The ids of every clip of the split, by position."""
        return [i for name, _ in self.shards(split) for i in self.shard_ids(split, name)]

    def clip(self, split: str, position: int) -> dict[str, np.ndarray]:
        """Clip `position` of the split: each array's row, [L, ...] (shards opened once and
        kept memory-mapped)."""
        if split not in self._positions:
            shards = self.shards(split)
            self._positions[split] = ([name for name, _ in shards],
                                      np.cumsum([0] + [n for _, n in shards]).tolist())
        names, offsets = self._positions[split]
        if not 0 <= position < offsets[-1]:
            raise IndexError(f"{self.folder}: split {split!r} has {offsets[-1]} clips, no clip "
                             f"{position}")
        shard = bisect.bisect_right(offsets, position) - 1
        arrays = _cached_shard(self.shard_dir(split, names[shard]))
        return {key: value[position - offsets[shard]] for key, value in arrays.items()}

    def first(self, split: str, count: int, length: int | None = None) -> dict[str, np.ndarray]:
        """The first `count` clips of the split (fewer if it has fewer), each cut to its first
        `length` frames (None: whole), as arrays [n, length, ...]."""
        rows: dict[str, list] = {}
        found = 0
        for name, n in self.shards(split):
            if found >= count:
                break
            for key, value in self.read_shard(split, name).items():
                rows.setdefault(key, []).append(np.asarray(value[:, :length]))
            found += n
        if not rows:
            raise DataError(f"{self.folder}: split {split!r} holds no clips; prepare the data "
                            "with episodes in that split")
        return {key: np.concatenate(value)[:count] for key, value in rows.items()}

    def first_ids(self, split: str, count: int) -> list[ClipId]:
        """The ids of the clips `first(split, count)` returns."""
        ids = []
        for name, _ in self.shards(split):
            if len(ids) >= count:
                break
            ids += self.shard_ids(split, name)
        return ids[:count]

    def by_ids(self, split: str, ids: Sequence[ClipId], length: int | None = None
               ) -> dict[str, np.ndarray]:
        """The clips `ids` of the split in that order, each cut to `length` frames, as arrays
        [len(ids), length, ...]; DataError naming the first id this folder does not hold."""
        where = {}
        for name, _ in self.shards(split):
            for row, clip_id in enumerate(self.shard_ids(split, name)):
                where[clip_id] = (name, row)
        missing = [clip_id for clip_id in ids if clip_id not in where]
        if missing:
            raise DataError(f"{self.folder}: split {split!r} has no clip of episode "
                            f"{missing[0].episode!r} starting at frame {missing[0].start} "
                            f"({len(missing)} of the {len(ids)} clips asked for are missing)")
        opened: dict[str, dict[str, np.ndarray]] = {}
        rows: dict[str, list] = {}
        for clip_id in ids:
            name, row = where[clip_id]
            if name not in opened:
                opened[name] = self.read_shard(split, name)
            for key, value in opened[name].items():
                rows.setdefault(key, []).append(np.asarray(value[row, :length]))
        return {key: np.stack(value) for key, value in rows.items()}


@functools.lru_cache(maxsize=256)
def _cached_shard(shard_dir: str) -> dict[str, np.ndarray]:
    return open_shard(shard_dir)
