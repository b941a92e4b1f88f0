"""CALVIN in its real on-disk format: reader, and the writer the embedded simulator uses.

A split folder (`training/` or `validation/`) holds one `episode_%07d.npz` per 30 Hz frame,
numbered globally, and `ep_start_end_ids.npy`: int [N, 2] inclusive start/end frame ids of
contiguous segments. Each segment is one episode. Per frame we read `rgb_static` (uint8
200x200x3) as the frame and `rel_actions` (7-D: position change / 0.02 m and euler change /
0.05 rad clipped to [-1, 1], gripper +-1; float64 in real files) as the continuous action taken
after that frame. Language annotations (`lang_annotations/auto_lang_ann.npy`) are optional.

States: when the frame files hold `robot_obs` (15 values, the first three the tool centre point's
xyz in metres) and `scene_obs` (24: six articulated parts, then xyz and euler of the red, blue and
pink blocks), each frame's state is float32 [12]: tcp xyz, red xyz, blue xyz, pink xyz
(`CALVIN_STATE_INDICES`; the layout of `data.episode`'s states).
"""

import dataclasses
import os

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

CALVIN_FRAME_SIZE = (200, 200)
CALVIN_ACTIONS = ActionLayout("continuous", (7,))
SEGMENTS_FILE = "ep_start_end_ids.npy"
LANGUAGE_FILE = os.path.join("lang_annotations", "auto_lang_ann.npy")
# Where each state value sits in concatenate([robot_obs, scene_obs]): tcp, red, blue, pink xyz.
ROBOT_OBS_SIZE, SCENE_OBS_SIZE = 15, 24
CALVIN_STATE_INDICES = (*range(3), *(ROBOT_OBS_SIZE + 6 + 6 * block + axis
                                    for block in range(3) for axis in range(POINT_DIMS)))
CALVIN_STATE_SIZE = len(CALVIN_STATE_INDICES)


def frame_path(split_dir: str, frame_id: int) -> str:
    return os.path.join(split_dir, f"episode_{frame_id:07d}.npz")


@dataclasses.dataclass(frozen=True)
class CalvinEpisode:
    """One contiguous segment [first_id, last_id] (inclusive) of a CALVIN split."""

    split_dir: str
    first_id: int
    last_id: int
    frame_size: tuple[int, int] = CALVIN_FRAME_SIZE
    action_layout: ActionLayout = CALVIN_ACTIONS
    state_size: int | None = None  # CALVIN_STATE_SIZE when the files hold robot/scene_obs

    @property
    def name(self) -> str:
        return f"{os.path.basename(self.split_dir)}/{self.first_id:07d}-{self.last_id:07d}"

    @property
    def length(self) -> int:
        return self.last_id - self.first_id + 1

    def source(self, frame: int) -> str:
        return frame_path(self.split_dir, self.first_id + frame)

    def read(self, start: int, stop: int) -> EpisodeChunk:
        frames = np.empty((stop - start, *self.frame_size, 3), np.uint8)
        actions = np.empty((stop - start, 7), np.float32)
        states = np.empty((stop - start, self.state_size or 0), np.float32)
        for i, frame_id in enumerate(range(self.first_id + start, self.first_id + stop)):
            frames[i], actions[i], states[i] = _read_frame(frame_path(self.split_dir, frame_id),
                                                           self)
        return EpisodeChunk(frames, actions, states if self.state_size else None)


def _read_frame(path: str, episode: CalvinEpisode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            image, action = npz["rgb_static"], npz["rel_actions"]
            state = (np.concatenate([npz["robot_obs"], npz["scene_obs"]])[
                list(CALVIN_STATE_INDICES)] if episode.state_size else np.zeros(0))
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing frame file; the download is incomplete") from e
    except NPZ_READ_ERRORS as e:
        raise DataError(
            f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or truncated: "
            "download it again, or pass skip_bad=True to leave its clips out"
        ) from e
    if image.shape != (*episode.frame_size, 3) or image.dtype != np.uint8:
        raise DataError(
            f"{path}: rgb_static is {image.dtype} {image.shape}, expected uint8 "
            f"{(*episode.frame_size, 3)}; pass the right frame_size for this dataset"
        )
    if action.shape != (7,):
        raise DataError(f"{path}: rel_actions has shape {action.shape}, expected (7,)")
    return image, action, state


def calvin_episodes(
    root: str,
    split: str = "training",
    *,
    frame_size: tuple[int, int] = CALVIN_FRAME_SIZE,
    skip_bad: bool = False,
) -> list[CalvinEpisode]:
    """The segments of `root/split` as episodes, checked from the segment list and file names.

    Raises DataError for a missing split folder or segment file, no segments, a segment whose
    frame files are missing, or a first frame whose `rgb_static` is not `frame_size`; with
    `skip_bad`, bad segments are left out with one warning counting them.
    """
    split_dir = os.path.join(root, split)
    segments_path = os.path.join(split_dir, SEGMENTS_FILE)
    if not os.path.isdir(split_dir):
        raise DataError(
            f"{split_dir}: no such folder; point the data path at a CALVIN dataset root (the "
            "folder holding training/ and validation/, e.g. task_D_D or calvin_debug_dataset)"
        )
    if not os.path.isfile(segments_path):
        raise DataError(
            f"{segments_path}: missing; a CALVIN split lists its segments there (int [N, 2] "
            "inclusive frame ids)"
        )
    segments = np.load(segments_path, allow_pickle=False)
    if segments.ndim != 2 or segments.shape[1] != 2 or len(segments) == 0:
        raise DataError(
            f"{segments_path}: holds {segments.shape}, expected a non-empty int [N, 2] list of "
            "inclusive (start, end) frame ids"
        )
    present = set(os.listdir(split_dir))

    def describe(segment, _):
        episode = CalvinEpisode(split_dir, int(segment[0]), int(segment[1]), tuple(frame_size))
        return _check_segment(episode, present)

    return keep_good(segments.tolist(), describe, skip_bad=skip_bad, what="CALVIN segments",
                     where=split_dir)


def _check_segment(episode: CalvinEpisode, present: set[str]) -> CalvinEpisode:
    """The episode, with its state size from the first frame's members; DataError if bad."""
    if episode.last_id < episode.first_id:
        raise DataError(
            f"{os.path.join(episode.split_dir, SEGMENTS_FILE)}: segment {episode.first_id}.."
            f"{episode.last_id} ends before it starts"
        )
    for frame_id in range(episode.first_id, episode.last_id + 1):
        path = frame_path(episode.split_dir, frame_id)
        if os.path.basename(path) not in present:
            raise DataError(
                f"{path}: missing frame file of segment {episode.first_id}..{episode.last_id}; "
                "the download is incomplete (download it again, or pass skip_bad=True)"
            )
    first = frame_path(episode.split_dir, episode.first_id)
    try:
        members = npz_member_shapes(first)
        shape, _ = members["rgb_static"]
    except NPZ_READ_ERRORS as e:
        raise DataError(
            f"{first}: no readable rgb_static ({type(e).__name__}: {e}); the file is corrupt "
            "or truncated: download it again, or pass skip_bad=True"
        ) from e
    if shape != (*episode.frame_size, 3):
        raise DataError(
            f"{first}: rgb_static is {shape}, expected {(*episode.frame_size, 3)}; pass the "
            "right frame_size for this dataset"
        )
    observed = (members.get("robot_obs", ((),))[0], members.get("scene_obs", ((),))[0])
    if observed == ((ROBOT_OBS_SIZE,), (SCENE_OBS_SIZE,)):
        return dataclasses.replace(episode, state_size=CALVIN_STATE_SIZE)
    return episode


@dataclasses.dataclass(frozen=True)
class LanguageAnnotation:
    """An instruction covering frames first_id..last_id (inclusive, global ids)."""

    first_id: int
    last_id: int
    task: str
    text: str


def read_language_annotations(root: str, split: str = "training") -> list[LanguageAnnotation]:
    """CALVIN's `lang_annotations/auto_lang_ann.npy`, or [] when the split has none.

    That file is a pickled dict (CALVIN's own format), so it is unpickled: only read it from a
    dataset you trust. Nothing else in this package reads pickles.
    """
    path = os.path.join(root, split, LANGUAGE_FILE)
    if not os.path.isfile(path):
        return []
    try:
        content = np.load(path, allow_pickle=True).item()
        spans, tasks, texts = (
            content["info"]["indx"],
            content["language"]["task"],
            content["language"]["ann"],
        )
    except (*NPZ_READ_ERRORS, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not a CALVIN language annotation file ({type(e).__name__}: {e}); expected "
            "a dict with info.indx, language.task and language.ann"
        ) from e
    return [
        LanguageAnnotation(int(a), int(b), str(task), str(text))
        for (a, b), task, text in zip(spans, tasks, texts, strict=True)
    ]


def write_calvin_frame(split_dir: str, frame_id: int, **arrays: np.ndarray) -> None:
    """Writes one frame file atomically (temp file, then rename), as CALVIN stores it."""
    path = frame_path(split_dir, frame_id)
    temp = path + ".tmp.npz"
    np.savez(temp, **arrays)
    os.replace(temp, path)


def write_segments(split_dir: str, segments: np.ndarray) -> None:
    """Writes `ep_start_end_ids.npy` (int64 [N, 2], inclusive ids) atomically."""
    temp = os.path.join(split_dir, SEGMENTS_FILE + ".tmp.npy")
    np.save(temp, np.asarray(segments, np.int64).reshape(-1, 2))
    os.replace(temp, os.path.join(split_dir, SEGMENTS_FILE))
