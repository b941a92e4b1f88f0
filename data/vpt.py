"""Minecraft VPT recordings (OpenAI's contractor data) in their real format: reader and actions.

A folder holds segments as pairs `<id>.mp4` (640x360 at 20 fps) and `<id>.jsonl`. The jsonl has
one JSON object per line and one line per video frame: line t is the input recorded while frame t
was shown, so it is `actions[t]`, the action taken after seeing `frames[t]`. Rule: the number of
non-blank jsonl lines equals the number of video frames in the mp4 header; a mismatch is a
DataError naming both files. No frame is dropped (VPT's behavioural-cloning loader drops frames
with null actions; a world model needs every frame).

Fields read from each line (all others, e.g. isGuiOpen, yaw, pitch, inventory, are ignored):
- `keyboard.keys`: held key names such as "key.keyboard.w"; names not in `KEY_BUTTONS` are ignored;
- `mouse.dx`, `mouse.dy`: mouse movement in pixels since the previous line;
- `mouse.buttons`: held mouse buttons, 0 attack, 1 use, 2 pickItem;
- `mouse.newButtons` (optional): buttons pressed on this line; as in VPT's loader, an attack that
  is already held on the first line with newButtons == [0] is stuck from before the recording
  and is dropped until attack is pressed anew;
- `hotbar` (optional): the selected slot 0..8; a change from the previous line (the first line
  compares with slot 0) sets `hotbar.<slot + 1>`, since the scroll wheel changes it without a key.

Action: int32 [24] multi-part (`VPT_ACTIONS`, classes `VPT_ACTION_CLASSES`): 23 binary entries in
`VPT_BUTTONS` order (VPT's own 20 buttons in its order: attack, back, forward, jump, left, right,
sneak, sprint, use, drop, inventory, hotbar.1..9; then ESC, swapHands, pickItem, also recorded),
then the camera class. Camera (VPT's scheme): degrees = pixels * 360 / 2400 (dy is pitch, dx is
yaw), clipped to +-10, mu-law encoded with mu = 10 (v = 10 sign(x) ln(1 + 10 |x| / 10) / ln 11),
binned to round((v + 10) / 2) in 0..10 (numpy rounding, as VPT); class = 11 * pitch bin + yaw bin,
so 60 is no movement.

Frames are decoded with PyAV (`pip install av`, imported only here) and scaled to `frame_size`
(default 224x384) by the video scaler's area filter, which is about 10x faster than
`data.images.resize_frames` at 640x360. VPT draws a mouse cursor into frames with the GUI open;
this reader does not (the recordings show none).
"""

import dataclasses
import json
import os

import numpy as np

from data.episode import ActionLayout, DataError, EpisodeChunk, keep_good

VPT_FRAME_SIZE = (224, 384)
VPT_BUTTONS = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop",
    "inventory", *(f"hotbar.{i}" for i in range(1, 10)), "ESC", "swapHands", "pickItem",
)  # fmt: skip
KEY_BUTTONS = {
    "key.keyboard.w": "forward",
    "key.keyboard.s": "back",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.space": "jump",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.q": "drop",
    "key.keyboard.e": "inventory",
    "key.keyboard.f": "swapHands",
    "key.keyboard.escape": "ESC",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
}
MOUSE_BUTTONS = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_DEGREES_PER_PIXEL = 360.0 / 2400.0
CAMERA_MAX_DEGREES = 10.0
CAMERA_MU = 10.0
CAMERA_BINS = 11
VPT_ACTION_CLASSES = (2,) * len(VPT_BUTTONS) + (CAMERA_BINS**2,)
VPT_ACTIONS = ActionLayout("multipart", (len(VPT_ACTION_CLASSES),))
_BUTTON_INDEX = {name: i for i, name in enumerate(VPT_BUTTONS)}


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError(
            f"reading Minecraft VPT videos needs PyAV ({e}): pip install av "
            '(or pip install -e ".[video]")'
        ) from e
    return av


def camera_bins(degrees: np.ndarray) -> np.ndarray:
    """int32 bins 0..10 of camera movements in degrees (clip, mu-law, linear bins; see above)."""
    x = np.clip(np.asarray(degrees, np.float64), -CAMERA_MAX_DEGREES, CAMERA_MAX_DEGREES)
    x /= CAMERA_MAX_DEGREES
    encoded = CAMERA_MAX_DEGREES * np.sign(x) * np.log1p(CAMERA_MU * np.abs(x))
    encoded /= np.log1p(CAMERA_MU)
    bin_size = 2 * CAMERA_MAX_DEGREES / (CAMERA_BINS - 1)
    return np.round((encoded + CAMERA_MAX_DEGREES) / bin_size).astype(np.int32)


def camera_class(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """int32 camera classes 0..120 of mouse movements in pixels: 11 * pitch bin + yaw bin."""
    pitch = camera_bins(np.asarray(dy, np.float64) * CAMERA_DEGREES_PER_PIXEL)
    yaw = camera_bins(np.asarray(dx, np.float64) * CAMERA_DEGREES_PER_PIXEL)
    return CAMERA_BINS * pitch + yaw


def jsonl_actions(path: str) -> np.ndarray:
    """int32 [T, 24] actions of a VPT jsonl file, one row per non-blank line (see above)."""
    buttons, mouse_moves = [], []
    hotbar, attack_stuck, first = 0, False, True
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                step = json.loads(line)
                keys, mouse = step["keyboard"]["keys"], step["mouse"]
                held, new = set(mouse["buttons"]), mouse.get("newButtons", [])
                mouse_moves.append((float(mouse["dx"]), float(mouse["dy"])))
                slot = int(step.get("hotbar", hotbar))
                if not 0 <= slot < 9:
                    raise ValueError(f"hotbar slot {slot} is not in 0..8")
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(
                    f"{path}: line {number} is not a VPT action record ({type(e).__name__}: {e}); "
                    "every line needs keyboard.keys and mouse.dx, mouse.dy, mouse.buttons"
                ) from e
            if first:
                attack_stuck = new == [0]
            elif attack_stuck and 0 in new:
                attack_stuck = False
            if attack_stuck:
                held.discard(0)
            row = np.zeros(len(VPT_BUTTONS), np.int32)
            names = [KEY_BUTTONS[k] for k in keys if k in KEY_BUTTONS]
            names += [MOUSE_BUTTONS[b] for b in held if b in MOUSE_BUTTONS]
            if slot != hotbar:
                names.append(f"hotbar.{slot + 1}")
            row[[_BUTTON_INDEX[name] for name in names]] = 1
            buttons.append(row)
            hotbar, first = slot, False
    moves = np.array(mouse_moves, np.float64).reshape(-1, 2)
    camera = camera_class(moves[:, 0], moves[:, 1])
    return np.concatenate(
        [np.array(buttons, np.int32).reshape(-1, len(VPT_BUTTONS)), camera[:, None]], 1
    )


@dataclasses.dataclass(frozen=True)
class VptEpisode:
    """One segment: `path` (.mp4) and `actions_path` (.jsonl) with `length` frames and lines."""

    path: str
    actions_path: str
    name: str
    length: int
    frame_size: tuple[int, int] = VPT_FRAME_SIZE
    action_layout: ActionLayout = VPT_ACTIONS

    def source(self, frame: int) -> str:
        return self.actions_path

    def read(self, start: int, stop: int) -> EpisodeChunk:
        actions = jsonl_actions(self.actions_path)[start:stop]
        return EpisodeChunk(_decode(self.path, start, stop, self.frame_size), actions)


def _decode(path: str, start: int, stop: int, frame_size: tuple[int, int]) -> np.ndarray:
    """RGB frames [start, stop) of a constant-frame-rate video, scaled to `frame_size`; seeks to
    the key frame before `start` and finds frame indices from timestamps."""
    av = _av()
    frames = np.empty((stop - start, *frame_size, 3), np.uint8)
    filled = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate, time_base = stream.average_rate, stream.time_base
            origin = stream.start_time or 0
            container.seek(origin + int(start / (rate * time_base)), stream=stream)
            for frame in container.decode(stream):
                index = round((frame.pts - origin) * time_base * rate)
                if index < start + filled:
                    continue  # between the key frame and `start`
                if index != start + filled:
                    raise DataError(
                        f"{path}: frame {start + filled} expected, timestamps give {index}; the "
                        f"video must have a constant frame rate: re-encode it (ffmpeg -i IN -r "
                        f"{float(rate):g} OUT.mp4), or pass skip_bad=True"
                    )
                frames[filled] = frame.reformat(
                    width=frame_size[1], height=frame_size[0], format="rgb24",
                    interpolation="AREA",
                ).to_ndarray()  # fmt: skip
                filled += 1
                if filled == len(frames):
                    break
    except av.error.FFmpegError as e:
        raise DataError(
            f"{path}: cannot decode ({type(e).__name__}: {e}); the video is corrupt or truncated: "
            "download it again, or pass skip_bad=True to leave it out"
        ) from e
    if filled < len(frames):
        raise DataError(
            f"{path}: only {start + filled} of the {stop} frames its header promises could be "
            "decoded; the video is truncated: download it again, or pass skip_bad=True"
        )
    return frames


def _frame_count(path: str) -> int:
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(
                    f"{path}: no video stream; the file is truncated or not a video: download it "
                    "again, or pass skip_bad=True to leave it out"
                )
            return container.streams.video[0].frames
    except av.error.FFmpegError as e:
        raise DataError(
            f"{path}: not a readable video ({type(e).__name__}: {e}); the file is corrupt or "
            "truncated: download it again, or pass skip_bad=True to leave it out"
        ) from e


def _describe(path: str, frame_size: tuple[int, int]) -> VptEpisode:
    actions_path = path[: -len(".mp4")] + ".jsonl"
    if not os.path.isfile(actions_path):
        raise DataError(
            f"{path}: no {os.path.basename(actions_path)} beside it; a VPT segment is a pair "
            "<id>.mp4 + <id>.jsonl: download the jsonl too, or pass skip_bad=True"
        )
    frames = _frame_count(path)
    with open(actions_path) as f:
        lines = sum(1 for line in f if line.strip())
    if lines != frames:
        raise DataError(
            f"{actions_path}: {lines} action lines, but {path} has {frames} frames; a VPT "
            "segment has one jsonl line per video frame: download both files again, or pass "
            "skip_bad=True to leave the segment out"
        )
    name = os.path.basename(path)[: -len(".mp4")]
    return VptEpisode(path, actions_path, name, frames, tuple(frame_size))


def vpt_episodes(
    folder: str, *, frame_size: tuple[int, int] = VPT_FRAME_SIZE, skip_bad: bool = False
) -> list[VptEpisode]:
    """The segments of a folder of VPT `<id>.mp4` + `<id>.jsonl` pairs, sorted by name, checked
    from the video headers and jsonl line counts; frames are read at `frame_size` (H, W).

    Raises DataError for a missing or empty folder and for a bad segment (missing jsonl,
    unreadable video, line count != frame count), unless `skip_bad`, which leaves bad segments
    out and warns once with their count. ImportError names the install if PyAV is missing.
    """
    _av()
    if not os.path.isdir(folder):
        raise DataError(
            f"{folder}: no such folder; point the data path at a folder of VPT segments "
            "(<id>.mp4 + <id>.jsonl)"
        )
    names = sorted(f for f in os.listdir(folder) if f.endswith(".mp4"))
    if not names:
        raise DataError(
            f"{folder}: no .mp4 segments in it; a VPT folder holds <id>.mp4 + <id>.jsonl pairs"
        )
    return keep_good(names, lambda name, _: _describe(os.path.join(folder, name), frame_size),
                     skip_bad=skip_bad, what="VPT segments", where=folder)
