"""Reader for "bring your own data": a folder of .npz episodes.

Each `<name>.npz` holds `frames` (uint8 [T, H, W, 3]) and optionally `actions` (float32 [T, A]
continuous, int32 [T] discrete or int32 [T, P] multi-part), where `actions[t]` is the action taken
after seeing `frames[t]`. Files are read with `allow_pickle=False`. All episodes must share one
frame size and one action layout; episodes without actions are allowed (stored as unlabeled).

Generators (CoinRun, Craftax) write this format with `write_episode` as `episode_%06d.npz`,
compressed, and resume with `pending_episodes`.
"""

import dataclasses
import os

import numpy as np

from data.episode import (
    NPZ_READ_ERRORS,
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

    def read(self, start: int, stop: int) -> EpisodeChunk:
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                frames = npz["frames"][start:stop]
                actions = npz["actions"][start:stop] if self.action_layout is not None else None
        except NPZ_READ_ERRORS as e:
            raise DataError(
                f"{self.path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or "
                "truncated: write it again, or pass skip_bad=True to leave it out"
            ) from e
        if actions is not None:
            actions = actions.astype(self.action_layout.dtype)
        return EpisodeChunk(frames, actions)


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
    return NpzEpisode(path, name, frame_shape[0], tuple(frame_shape[1:3]), spec)


def npz_episodes(folder: str, *, skip_bad: bool = False) -> list[NpzEpisode]:
    """The episodes of a folder of .npz files, sorted by file name, checked from headers only.

    Raises DataError for a missing or empty folder and for any bad file (unreadable, no uint8
    `frames`, action count != frame count, frame size different from the first file's), unless
    `skip_bad`, which leaves bad files out and warns once with their count.
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

    def describe(file_name, episodes):
        path = os.path.join(folder, file_name)
        episode = _describe(path, file_name[: -len(".npz")])
        if episodes and episode.frame_size != episodes[0].frame_size:
            raise DataError(
                f"{path}: frames are {episode.frame_size[0]}x{episode.frame_size[1]} but "
                f"{episodes[0].frame_size[0]}x{episodes[0].frame_size[1]} in "
                f"{episodes[0].path}; resize all episodes to one size"
            )
        return episode

    return keep_good(names, describe, skip_bad=skip_bad, what="episode files", where=folder)


def episode_file(folder: str, index: int) -> str:
    """Where generators write episode `index` of `folder`."""
    return os.path.join(folder, f"episode_{index:06d}.npz")


def write_episode(path: str, frames: np.ndarray, actions: np.ndarray | None = None) -> None:
    """Writes one compressed episode file atomically: to a temporary name that does not end in
    .npz (so no reader lists it), then renamed into place."""
    arrays = {"frames": frames} if actions is None else {"frames": frames, "actions": actions}
    temp = path + ".tmp"
    with open(temp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(temp, path)


def pending_episodes(folder: str, settings_file: str, settings: dict, count: int) -> list[int]:
    """Claims `folder` for a resumable generator (`data.jobs.claim_folder`) and returns the
    indices in [0, count) whose episode file is not written yet."""
    claim_folder(folder, settings_file, settings)
    return [k for k in range(count) if not os.path.exists(episode_file(folder, k))]
