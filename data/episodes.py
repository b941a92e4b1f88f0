"""Reader for "bring your own data": a folder of .npz episodes.

Each `<name>.npz` holds `frames` (uint8 [T, H, W, 3]) and optionally `actions` (float32 [T, A]
continuous, int32 [T] discrete or int32 [T, P] multi-part), where `actions[t]` is the action taken
after seeing `frames[t]`, and optionally `states` (float [T, 3 * P]: xyz in metres of P points,
the controlled one first; `data.episode` describes the layout). Files are read with
`allow_pickle=False`. All episodes must share one
frame size and one action layout; episodes without actions are allowed (stored as unlabeled).

Generators (CoinRun, Craftax) write this format with `write_episode` as `episode_%06d.npz`,
compressed, and resume with `pending_episodes`.
"""

import collections
import dataclasses
import os
from typing import ClassVar

import numpy as np

from data.episode import (
    NPZ_READ_ERRORS,
    POINT_DIMS,
    ActionLayout,
    DataError,
    EpisodeChunk,
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
    read_chunk: ClassVar[None] = None  # every read decompresses the whole array: read at once

    def source(self, frame: int) -> str:
        return self.path

    def read(self, start: int, stop: int) -> EpisodeChunk:
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                frames = npz["frames"][start:stop]
                actions = npz["actions"][start:stop] if self.action_layout is not None else None
                states = (npz["states"][start:stop].astype(np.float32) if self.state_size
                          else None)
        except NPZ_READ_ERRORS as e:
            raise DataError(
                f"{self.path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or "
                "truncated: write it again, or pass skip_bad=True to leave it out"
            ) from e
        if actions is not None:
            actions = actions.astype(self.action_layout.dtype)
        return EpisodeChunk(frames, actions, states)


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
    return NpzEpisode(path, name, frame_shape[0], tuple(frame_shape[1:3]), spec,
                      _state_size(path, shapes, frame_shape[0]))


def _state_size(path: str, shapes: dict, length: int) -> int | None:
    if "states" not in shapes:
        return None
    shape, dtype = shapes["states"]
    if (len(shape) != 2 or shape[0] != length or shape[1] % POINT_DIMS or not shape[1]
            or not np.issubdtype(dtype, np.floating)):
        raise DataError(
            f"{path}: `states` is {dtype} {shape}; it must be float [T, 3 * P] with T = {length} "
            "(xyz of P points per frame), or be left out"
        )
    return shape[1]


def npz_episodes(folder: str, *, skip_bad: bool = False) -> list[NpzEpisode]:
    """The episodes of a folder of .npz files, sorted by file name, checked from headers only.

    Raises DataError for a missing or empty folder and for any bad file (unreadable, no uint8
    `frames`, no frames, action count != frame count, a frame size other than the one most files
    have; on a tie, the first file's), unless `skip_bad`, which leaves bad files out and warns
    once with their count.
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
                  states: np.ndarray | None = None) -> None:
    """Writes one compressed episode file atomically: to a temporary name that does not end in
    .npz (so no reader lists it), then renamed into place."""
    arrays = {"frames": frames, "actions": actions, "states": states}
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
