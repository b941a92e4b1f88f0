"""The episode model every source reader returns, the data errors, and skip bookkeeping.

An episode is a sequence of frames (uint8 [T, H, W, 3]) with optional actions in the dataset
convention: `actions[t]` is the action taken after seeing `frames[t]`. Readers return lazy
`EpisodeRef`s (name, length, frame size, action layout, `read(start, stop)`), so preprocessing can
plan clips from cheap metadata and read each frame range in a worker process.

Action kinds: "continuous" float32 [T, A], "discrete" int32 [T], "multipart" int32 [T, P].

States (optional, where the source has them): float32 [T, 3 * P], the xyz positions in metres of
P points, the controlled point first (a robot's end effector), then the objects it can move
(CALVIN and the simulator: the tool centre point, then the red, blue and pink blocks; 2-D domains
give (x, y) in the image plane and z = 0). A reader that has them sets `state_size` = 3 * P on
its episodes; episodes without states have no such attribute or None.

Rewards (optional): float32 [T], `rewards[t]` the reward earned by `actions[t]`. Continues
(optional): float32 [T], 0 where `actions[t]` ended the episode (the game is over: death, goal),
else 1, so only the last frame can be 0; an episode cut off by a time limit or by the recording
ends with 1 (the game went on). Task (optional): int32 [T], a task id >= 0 per frame (e.g. which
task a demonstration was doing). A reader that has them sets `has_rewards` / `has_continues` /
`has_task` True on its episodes. States, rewards, continues and task are the optional per-frame
arrays (`FRAME_ARRAYS`): chunks carry them, and clips store each one that every episode of the
dataset has.
"""

import dataclasses
import warnings
import zipfile
from collections.abc import Sequence
from typing import Protocol

import numpy as np

ACTION_KINDS = {"continuous": "float32", "discrete": "int32", "multipart": "int32"}
# Errors a damaged or truncated .npz raises while its directory or members are read.
NPZ_READ_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError)


class DataError(ValueError):
    """Bad input data; the message names the file and the fix."""


class SkippableDataError(DataError):
    """A bad input file or range that `skip_bad=True` would leave out (other DataErrors, such as
    a clip folder prepared with other settings, are not helped by skipping)."""


class SkippedDataWarning(UserWarning):
    """Bad files were skipped because the caller asked for it (`skip_bad=True`)."""


@dataclasses.dataclass(frozen=True)
class ActionLayout:
    """Per-step action layout: kind plus the shape of one step's action (no time axis)."""

    kind: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"action kind {self.kind!r} is not one of {sorted(ACTION_KINDS)}")
        rank = {"continuous": 1, "discrete": 0, "multipart": 1}[self.kind]
        if len(self.shape) != rank:
            raise ValueError(f"{self.kind} actions need {rank} axes per step, got {self.shape}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(ACTION_KINDS[self.kind])

    @classmethod
    def infer(cls, dtype: np.dtype, step_shape: tuple[int, ...]) -> "ActionLayout":
        """Kind from an action array's dtype and per-step shape (float -> continuous, ...)."""
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.floating) and len(step_shape) == 1:
            return cls("continuous", tuple(step_shape))
        if np.issubdtype(dtype, np.integer) and len(step_shape) <= 1:
            return cls("discrete" if not step_shape else "multipart", tuple(step_shape))
        raise ValueError(
            f"actions of dtype {dtype} and per-step shape {step_shape} are none of: float [T, A] "
            "continuous, int [T] discrete, int [T, P] multi-part"
        )

    def to_json(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype.name}

    @classmethod
    def from_json(cls, value: dict) -> "ActionLayout":
        return cls(value["kind"], tuple(value["shape"]))


# The layout stored for datasets whose episodes carry no actions at all.
NO_ACTIONS = ActionLayout("continuous", (0,))


POINT_DIMS = 3  # state values per point (xyz)
# The optional per-frame arrays (see the module docstring) and the dtype chunks and clips hold
# them in: states [n, state_size], and one value per frame [n] for SCALAR_FRAME_ARRAYS.
FRAME_ARRAYS = {"states": np.dtype("float32"), "rewards": np.dtype("float32"),
                "continues": np.dtype("float32"), "task": np.dtype("int32")}
# An episode that has one of these sets `has_<key>` True.
SCALAR_FRAME_ARRAYS = ("rewards", "continues", "task")


@dataclasses.dataclass(frozen=True)
class EpisodeChunk:
    """Frames uint8 [n, H, W, 3], their actions ([n, ...] in the spec's dtype, or None) and the
    optional per-frame arrays: states (float32 [n, state_size]), rewards (float32 [n]),
    continues (float32 [n]) and task (int32 [n]), each None where the episode has none. Unpacks
    as `frames, actions`."""

    frames: np.ndarray
    actions: np.ndarray | None
    states: np.ndarray | None = None
    rewards: np.ndarray | None = None
    continues: np.ndarray | None = None
    task: np.ndarray | None = None

    def __iter__(self):
        return iter((self.frames, self.actions))


class EpisodeRef(Protocol):
    """A lazily read episode. Implementations are picklable frozen dataclasses. `source(t)` is
    the file that holds the action of frame t (for messages). Clip preparation reads long
    windows in chunks of `data.clips.READ_CHUNK` frames; a reader whose every read loads its
    whole file (an .npz) sets the class attribute `read_chunk = None` to read a window at once.
    Those whose chunks carry states also have `state_size` (int), those whose chunks carry
    rewards, continues or task ids `has_rewards` / `has_continues` / `has_task` = True (see the
    module docstring)."""

    name: str
    length: int
    frame_size: tuple[int, int]
    action_layout: ActionLayout | None

    def read(self, start: int, stop: int) -> EpisodeChunk: ...

    def source(self, frame: int) -> str: ...


def read_episode(ref: EpisodeRef) -> EpisodeChunk:
    """All frames and actions of an episode."""
    return ref.read(0, ref.length)


def dataset_action_layout(refs: Sequence[EpisodeRef]) -> ActionLayout:
    """The one action layout of a set of episodes (`NO_ACTIONS` if none has actions)."""
    specs = {ref.action_layout for ref in refs if ref.action_layout is not None}
    if len(specs) > 1:
        found = {spec: next(r.name for r in refs if r.action_layout == spec) for spec in specs}
        listing = "; ".join(f"{spec.kind} {spec.shape} in {name}" for spec, name in found.items())
        raise DataError(
            f"episodes mix action layouts ({listing}): every episode with actions must use the "
            "same kind and shape; convert them or prepare them as separate datasets"
        )
    return specs.pop() if specs else NO_ACTIONS


def frame_array_shapes(ref: EpisodeRef) -> dict[str, tuple[int, ...]]:
    """The optional per-frame arrays (`FRAME_ARRAYS`) that `ref`'s chunks carry, each with its
    shape per frame: states (state_size,), and () for rewards, continues and task."""
    shapes = {"states": (ref.state_size,)} if getattr(ref, "state_size", None) else {}
    return shapes | {key: () for key in SCALAR_FRAME_ARRAYS if getattr(ref, f"has_{key}", False)}


def dataset_frame_arrays(refs: Sequence[EpisodeRef]) -> dict[str, tuple[int, ...]]:
    """The optional per-frame arrays that every one of a set of episodes carries, each with its
    one shape per frame (what the clips store). An array that only some episodes carry is left
    out with a warning; DataError if episodes give one array different shapes."""
    per_ref = [frame_array_shapes(ref) for ref in refs]
    common = {}
    for key in FRAME_ARRAYS:
        shapes = {one.get(key) for one in per_ref}
        if None in shapes:
            if len(shapes) > 1:
                missing = next(r.name for r, s in zip(refs, per_ref, strict=True) if key not in s)
                warnings.warn(f"some episodes have `{key}` and some (e.g. {missing}) do not; the "
                              f"clips store no `{key}`", stacklevel=2)
            continue
        if len(shapes) > 1:
            found = {shape: next(r.name for r, s in zip(refs, per_ref, strict=True)
                                 if s[key] == shape) for shape in shapes}
            listing = "; ".join(f"{list(shape)} in {name}" for shape, name in sorted(found.items()))
            raise DataError(f"episodes have `{key}` of different shapes per frame ({listing}); "
                            f"every episode's `{key}` must have the same layout")
        common[key] = shapes.pop()
    return common


def npz_member_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz from its headers, without reading the data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            shapes[member[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return shapes


def keep_good(items: Sequence, describe, *, skip_bad: bool, what: str, where: str) -> list:
    """[describe(item, kept) for item in items], `kept` being the results so far. A DataError
    raises (as a SkippableDataError), or with `skip_bad` leaves its item out (one warning with the
    count of `what` skipped); DataError too if nothing is left."""
    kept, skipped = [], []
    for item in items:
        try:
            kept.append(describe(item, kept))
        except DataError as error:
            if not skip_bad:
                raise SkippableDataError(str(error)) from error
            skipped.append(str(error))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(items)} {what} (skip_bad=True); first: "
                      f"{skipped[0]}", SkippedDataWarning, stacklevel=3)
    if not kept:
        raise DataError(f"{where}: every one of the {what} was bad and skipped; nothing to read")
    return kept


NOISE_ACTIONS = ActionLayout("continuous", (7,))


@dataclasses.dataclass(frozen=True)
class NoiseEpisode:
    """A synthetic episode of random frames and 7-D actions (an EpisodeRef)."""

    name: str
    length: int
    frame_size: tuple[int, int]
    action_layout: ActionLayout = NOISE_ACTIONS

    def source(self, frame: int) -> str:
        return self.name

    def read(self, start: int, stop: int) -> EpisodeChunk:
        rng = np.random.default_rng(start)
        frames = rng.integers(0, 256, (stop - start, *self.frame_size, 3), dtype=np.uint8)
        return EpisodeChunk(frames, rng.uniform(-1, 1, (stop - start, 7)).astype(np.float32))
