"""Reader for "bring your own data": a folder of .npz episodes.

Each `<name>.npz` holds `frames` (uint8 [T, H, W, 3]) and optionally:
- `actions` (float32 [T, A] continuous, int32 [T] discrete or int32 [T, P] multi-part), where
  `actions[t]` is the action taken after seeing `frames[t]`;
- `states` (float [T, 3 * P]: xyz in metres of P points, the controlled one first;
  `data.episode` describes the layout);
- `rewards` (float [T], finite): `rewards[t]` is the reward earned by `actions[t]`;
- `continues` (float [T], each 1 except a 0 on the last frame where the episode ended there: the
  game is over after `actions[T - 1]`; leave 1 where a time limit or the recording cut it off);
- `task` (int [T], each >= 0): a task id per frame, e.g. which task a demonstration was doing.
States, rewards and continues are read as float32, task ids as int32. Files are read with
`allow_pickle=False`. All episodes must share one frame size and one action layout; episodes
without actions are allowed (stored as unlabeled). Clips store each optional array only when
every episode has it (`data.clips`).

Generators (CoinRun, Craftax) write this format with `write_episode` as `episode_%06d.npz`,
compressed, and resume with `pending_episodes`.
"""

import collections
import dataclasses
import os
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from data.episode import (
    FRAME_ARRAYS,
    NPZ_READ_ERRORS,
    POINT_DIMS,
    ActionLayout,
    DataError,
    EpisodeChunk,
    frame_array_shapes,
    keep_good,
    npz_member_shapes,
)
from data.jobs import claim_folder


@dataclasses.dataclass(frozen=True)
class NpzEpisode:
    """One episode file; `read` loads it and slices [start, stop)."""

    path: str
    name: str
    length: int
    frame_size: tuple[int, int]
    action_layout: ActionLayout | None
    state_size: int | None = None
    has_rewards: bool = False
    has_continues: bool = False
    has_task: bool = False
    read_chunk: ClassVar[None] = None  # every read decompresses the whole array: read at once

    def source(self, frame: int) -> str:
        return self.path

    def read(self, start: int, stop: int) -> EpisodeChunk:
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                frames = npz["frames"][start:stop]
                actions = npz["actions"][start:stop] if self.action_layout is not None else None
                optional = {key: npz[key][start:stop].astype(FRAME_ARRAYS[key])
                            for key in frame_array_shapes(self)}
        except NPZ_READ_ERRORS as e:
            raise _unreadable(self.path, e) from e
        if actions is not None:
            actions = actions.astype(self.action_layout.dtype)
        return EpisodeChunk(frames, actions, **optional)


def _unreadable(path: str, error: Exception) -> DataError:
    return DataError(
        f"{path}: cannot read ({type(error).__name__}: {error}); the file is corrupt or "
        "truncated: write it again, or pass skip_bad=True to leave it out"
    )


@dataclasses.dataclass(frozen=True)
class _FrameArrayRule:
    """What an optional per-frame array of an episode file must be: `form` (for messages), a
    dtype of `family`, a per-frame shape that `step_ok` accepts and, where values can be bad,
    `bad(values)` -> a bool per frame, described by `bad_what`."""

    form: str
    family: type
    step_ok: Callable[[tuple[int, ...]], bool]
    bad: Callable[[np.ndarray], np.ndarray] | None = None
    bad_what: str = ""


def _is_last(values: np.ndarray) -> np.ndarray:
    return np.arange(len(values)) == len(values) - 1


_INT32_MAX, _FLOAT32_MAX = int(np.iinfo(np.int32).max), float(np.finfo(np.float32).max)
FILE_FRAME_ARRAYS = {
    "states": _FrameArrayRule(
        "float [T, 3 * P] (xyz of P points per frame)", np.floating,
        lambda step: len(step) == 1 and step[0] > 0 and step[0] % POINT_DIMS == 0),
    "rewards": _FrameArrayRule(
        "float [T] (rewards[t] earned by actions[t])", np.floating, lambda step: step == (),
        lambda values: ~(np.abs(values) <= _FLOAT32_MAX), "non-finite rewards (in float32)"),
    "continues": _FrameArrayRule(
        "float [T] (1, or 0 on the last frame where the episode ended)", np.floating,
        lambda step: step == (),
        lambda values: ~((values == 1) | ((values == 0) & _is_last(values))),
        "continues other than 1 (0 is allowed on the last frame only)"),
    "task": _FrameArrayRule(
        "int [T] (a task id per frame)", np.integer, lambda step: step == (),
        lambda values: (values < 0) | (values > _INT32_MAX), f"task ids outside 0 .. {_INT32_MAX}"),
}


def _check_frame_array(path: str, shapes: dict, key: str, length: int) -> tuple[int, ...]:
    """The per-frame shape of the file's optional array `key` (see `FILE_FRAME_ARRAYS`);
    DataError naming the file if its dtype, shape or values are wrong."""
    rule, (shape, dtype) = FILE_FRAME_ARRAYS[key], shapes[key]
    if (shape[:1] != (length,) or not rule.step_ok(shape[1:])
            or not np.issubdtype(dtype, rule.family)):
        raise DataError(
            f"{path}: `{key}` is {dtype} {shape}; it must be {rule.form} with T = {length}, or "
            "be left out"
        )
    if rule.bad is not None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                bad = np.flatnonzero(rule.bad(npz[key]))
        except NPZ_READ_ERRORS as e:
            raise _unreadable(path, e) from e
        if bad.size:
            raise DataError(
                f"{path}: {rule.bad_what} at frames {bad[:5].tolist()} ({bad.size} of {length}); "
                f"fix them, or leave `{key}` out"
            )
    return shape[1:]


def _describe(path: str, name: str) -> NpzEpisode:
    """Checks one file's headers and returns its episode (DataError naming the file if bad)."""
    try:
        shapes = npz_member_shapes(path)
    except NPZ_READ_ERRORS as e:
        raise DataError(
            f"{path}: not a readable .npz ({type(e).__name__}: {e}); the file is corrupt or "
            "truncated: write it again, or pass skip_bad=True to leave it out"
        ) from e
    if "frames" not in shapes:
        raise DataError(
            f"{path}: no `frames` array (found {sorted(shapes)}); save frames as uint8 "
            "[T, H, W, 3] under the key `frames`"
        )
    frame_shape, frame_dtype = shapes["frames"]
    if frame_dtype != np.uint8 or len(frame_shape) != 4 or frame_shape[3] != 3:
        raise DataError(
            f"{path}: `frames` is {frame_dtype} {frame_shape}; it must be uint8 [T, H, W, 3] "
            "(RGB, values 0..255)"
        )
    if frame_shape[0] == 0:
        raise DataError(
            f"{path}: `frames` holds no frames; an episode needs at least one: write it again, "
            "or pass skip_bad=True to leave it out"
        )
    spec = None
    if "actions" in shapes:
        action_shape, action_dtype = shapes["actions"]
        if action_shape[:1] != frame_shape[:1]:
            raise DataError(
                f"{path}: {action_shape[0] if action_shape else 0} actions for {frame_shape[0]} "
                "frames; there must be one action per frame (actions[t] is taken after "
                "frames[t]; pad the last one if your data has T-1 actions)"
            )
        try:
            spec = ActionLayout.infer(action_dtype, action_shape[1:])
        except ValueError as e:
            raise DataError(f"{path}: {e}") from e
    found = {key: _check_frame_array(path, shapes, key, frame_shape[0])
             for key in FILE_FRAME_ARRAYS if key in shapes}
    return NpzEpisode(path, name, frame_shape[0], tuple(frame_shape[1:3]), spec,
                      state_size=found["states"][0] if "states" in found else None,
                      has_rewards="rewards" in found, has_continues="continues" in found,
                      has_task="task" in found)


def npz_episodes(folder: str, *, skip_bad: bool = False) -> list[NpzEpisode]:
    """The episodes of a folder of .npz files, sorted by file name, checked without reading
    frames.

    Raises DataError for a missing or empty folder and for any bad file (unreadable, no uint8
    `frames`, no frames, action count != frame count, optional arrays of the wrong dtype, shape
    or length, non-finite rewards, task ids outside 0 .. 2**31 - 1, a frame size other than the
    one most files have; on a tie, the first file's), unless `skip_bad`, which leaves bad files
    out and warns once with their count. Reads the headers, plus the values of `rewards` and
    `task`.
    """
    if not os.path.isdir(folder):
        raise DataError(
            f"{folder}: no such folder; point the data path at a folder of .npz episodes"
        )
    names = sorted(f for f in os.listdir(folder) if f.endswith(".npz"))
    if not names:
        raise DataError(
            f"{folder}: no .npz episodes in it; save each episode with "
            "np.savez(path, frames=..., actions=...)"
        )
    described = []  # per file: its episode, or the DataError that describing it raised
    for name in names:
        try:
            described.append(_describe(os.path.join(folder, name), name[: -len(".npz")]))
        except DataError as error:
            described.append(error)
    episodes = [e for e in described if isinstance(e, NpzEpisode)]
    expected = _common_frame_size(episodes)

    def check(item, _):
        if isinstance(item, DataError):
            raise item
        if item.frame_size != expected:
            example = next(e for e in episodes if e.frame_size == expected)
            count = sum(e.frame_size == expected for e in episodes)
            raise DataError(
                f"{item.path}: frames are {_size(item.frame_size)} but {_size(expected)} in "
                f"{count} of the {len(names)} files (e.g. {example.path}); resize all episodes "
                "to one size"
            )
        return item

    return keep_good(described, check, skip_bad=skip_bad, what="episode files", where=folder)


def _size(frame_size: tuple[int, int]) -> str:
    return f"{frame_size[0]}x{frame_size[1]}"


def _common_frame_size(episodes: list[NpzEpisode]) -> tuple[int, int] | None:
    """The frame size most episodes have; a tie goes to the size found first (name order)."""
    counts = collections.Counter(e.frame_size for e in episodes)  # insertion (name) order
    return max(counts, key=counts.get) if counts else None


def episode_file(folder: str, index: int) -> str:
    """Where generators write episode `index` of `folder`."""
    return os.path.join(folder, f"episode_{index:06d}.npz")


def write_episode(path: str, frames: np.ndarray, actions: np.ndarray | None = None,
                  states: np.ndarray | None = None, *, rewards: np.ndarray | None = None,
                  continues: np.ndarray | None = None, task: np.ndarray | None = None) -> None:
    """Writes one compressed episode file atomically: to a temporary name that does not end in
    .npz (so no reader lists it), then renamed into place. Arrays given as None are left out."""
    arrays = {"frames": frames, "actions": actions, "states": states, "rewards": rewards,
              "continues": continues, "task": task}
    arrays = {key: value for key, value in arrays.items() if value is not None}
    temp = path + ".tmp"
    with open(temp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(temp, path)


def pending_episodes(folder: str, settings_file: str, settings: dict, count: int) -> list[int]:
    """Claims `folder` for a resumable generator (`data.jobs.claim_folder`) and returns the
    indices in [0, count) whose episode file is not written yet."""
    claim_folder(folder, settings_file, settings)
    return [k for k in range(count) if not os.path.exists(episode_file(folder, k))]
