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


@dataclasses.dataclass(frozen=True)
class EpisodeChunk:
    """Frames uint8 [n, H, W, 3], their actions ([n, ...] in the spec's dtype, or None) and
    states (float32 [n, state_size], or None). Unpacks as `frames, actions`."""

    frames: np.ndarray
    actions: np.ndarray | None
    states: np.ndarray | None = None

    def __iter__(self):
        return iter((self.frames, self.actions))


class EpisodeRef(Protocol):
    """A lazily read episode. Implementations are picklable frozen dataclasses. `source(t)` is
    the file that holds the action of frame t (for messages). Clip preparation reads long
    windows in chunks of `data.clips.READ_CHUNK` frames; a reader whose every read loads its
    whole file (an .npz) sets the class attribute `read_chunk = None` to read a window at once.
    Those whose chunks carry states also have `state_size` (int, see the module docstring)."""

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


def dataset_state_size(refs: Sequence[EpisodeRef]) -> int | None:
    """The one state size of a set of episodes, or None when some or all have no states (the
    clips then store none; a warning says so when only some lack them)."""
    sizes = {getattr(ref, "state_size", None) for ref in refs}
    if None in sizes:
        if len(sizes) > 1:
            missing = next(r.name for r in refs if getattr(r, "state_size", None) is None)
            warnings.warn(f"some episodes have states and some (e.g. {missing}) do not; the clips "
                          "store no states", stacklevel=2)
        return None
    if len(sizes) > 1:
        found = {size: next(r.name for r in refs if r.state_size == size) for size in sizes}
        listing = "; ".join(f"{size} in {name}" for size, name in sorted(found.items()))
        raise DataError(f"episodes have different state sizes ({listing}); every episode's "
                        "`states` must have the same layout")
    return sizes.pop()


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
