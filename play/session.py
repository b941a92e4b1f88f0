"""One live player: the latest input, the settings the page changes, statistics and recording,
over a `WorldModelEnv`. Independent of the web server (play/server.py calls it from worker
threads; a lock guards the input state).

`handle` applies a client message (play/protocol.py) and returns the messages to send back;
`tick` makes the next frame from the latest input (or carries out a pending reset) and returns
the binary frame message. Changes of K and resets take effect at the next tick, so the env is
only touched by the thread that runs `tick`.
"""

import collections
import datetime
import logging
import os
import threading
import time

import imageio.v3 as iio
import numpy as np

from launch.report import write_videos
from play.env import WorldModelEnv
from play.keys import ContinuousKeys, KeyMap, known_codes
from play.protocol import MessageError, frame_message, parse_message

log = logging.getLogger("play")
MAX_RECORDED = 3000  # frames per recording
VIDEO_SIDE = 256  # recordings are upscaled (nearest neighbour) to at least this many pixels


def png(frame: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", frame, extension=".png")


def upscale(frames: np.ndarray, side: int = VIDEO_SIDE) -> np.ndarray:
    """uint8 [T, H, W, 3] repeated by whole pixels until the shorter side is at least `side`."""
    scale = max(1, -(-side // min(frames.shape[1:3])))
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


class Session:
    """A player session; `recordings` is the folder recordings are saved to."""

    def __init__(self, env: WorldModelEnv, keys: KeyMap, *, fps: float, recordings: str,
                 magnitude: float = 0.5):
        self.env, self.keys, self.fps, self.recordings = env, keys, fps, recordings
        self.known = known_codes(keys)
        self._lock = threading.Lock()
        self.held: frozenset[str] = frozenset()
        self._mouse = np.zeros(2)
        self.magnitude, self.paused, self.input_seq = magnitude, False, 0
        self._pending_reset: dict | None = {}  # reset options; the first tick starts a clip
        self._pending_steps: int | None = None
        self._recorded: list[np.ndarray] | None = None
        self._frame_times: collections.deque[float] = collections.deque(maxlen=30)
        self.step_ms = 0.0

    def hello(self) -> dict:
        """The first message to the page: action layout, legend and settings."""
        spec = self.env.world_model.action
        contexts = self.env.contexts
        return {"type": "hello", "kind": spec.kind, "dim": spec.dim, "classes": list(spec.classes),
                "legend": [{"keys": list(c.keys), "does": c.does} for c in self.keys.legend()],
                "magnitude": self.magnitude if isinstance(self.keys, ContinuousKeys) else None,
                "fps": self.fps, "steps": self.env.steps,
                "k_max": self.env.world_model.dynamics.config.k_max,
                "window": self.env.worlds.capacity,
                "clips": 0 if contexts is None else len(contexts),
                "image_size": list(self.env.world_model.image_size)}

    @property
    def wants_frame(self) -> bool:
        return not self.paused or self._pending_reset is not None

    def handle(self, raw: str | bytes) -> list[dict]:
        """Applies one client message; a bad one is ignored with a log line and an error reply."""
        try:
            message = parse_message(raw)
        except MessageError as error:
            log.warning("play: ignored a message: %s", error)
            return [{"type": "error", "message": f"ignored: {error}"}]
        kind = message["type"]
        with self._lock:
            if kind == "input":
                self.held = frozenset(message["keys"]) & self.known
                self._mouse += np.asarray(message.get("mouse", (0.0, 0.0)), np.float64)
                self.input_seq = max(self.input_seq, message["seq"])
            elif kind == "steps":
                k_max = self.env.world_model.dynamics.config.k_max
                if not 1 <= message["value"] <= k_max:
                    return [{"type": "error", "message": f"K must be in 1..{k_max}"}]
                self._pending_steps = message["value"]
                return [{"type": "status", "message": f"K = {message['value']} from the next "
                         "frame (the first frame at a new K compiles it)"}]
            elif kind == "magnitude":
                self.magnitude = float(message["value"])
            elif kind == "pause":
                self.paused = message["value"]
            elif kind == "reset":
                clips = 0 if self.env.contexts is None else len(self.env.contexts)
                clip = message.get("clip")
                if clip is not None and clip >= clips:
                    return [{"type": "error", "message": f"no held-out clip {clip} (there are "
                                                         f"{clips})"}]
                self._pending_reset = {"clip": clip, "seed": message.get("seed")}
            elif kind == "record":
                if message["value"]:
                    self._recorded = []
                    return [{"type": "status", "message": "recording"}]
                recorded, self._recorded = self._recorded, None
                if not recorded:
                    return [{"type": "status", "message": "nothing recorded"}]
        if kind == "record":
            return [{"type": "recorded", "files": self.save(np.stack(recorded))}]
        return []

    def save(self, frames: np.ndarray) -> list[str]:
        """Writes a recording as gif and mp4 under `recordings`; returns the file names."""
        os.makedirs(self.recordings, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        paths = write_videos(os.path.join(self.recordings, f"play-{stamp}"), upscale(frames),
                             fps=max(1, round(self.fps or 10)))
        log.warning("play: saved %s", ", ".join(paths))
        return [os.path.basename(p) for p in paths]

    def tick(self) -> bytes:
        """The next frame (or the pending reset's first frame) as a frame message."""
        with self._lock:
            reset, self._pending_reset = self._pending_reset, None
            steps, self._pending_steps = self._pending_steps, None
            held, seq, magnitude = self.held, self.input_seq, self.magnitude
            mouse, self._mouse = tuple(self._mouse), np.zeros(2)
        start = time.perf_counter()
        if steps is not None:
            self.env.steps = steps
        if reset is not None:
            frame, _ = self.env.reset(seed=reset.get("seed"), options={"clip": reset.get("clip")})
        else:
            action = self.keys.action(held, magnitude=magnitude, mouse=mouse)
            frame, *_ = self.env.step(action)
        now = time.perf_counter()
        self.step_ms = 1000 * (now - start)
        self._frame_times.append(now)
        with self._lock:
            if self._recorded is not None and len(self._recorded) < MAX_RECORDED:
                self._recorded.append(frame)
            recording = None if self._recorded is None else len(self._recorded)
        return frame_message(self._header(seq, recording, reset is not None), png(frame))

    def _header(self, seq: int, recording: int | None, was_reset: bool) -> dict:
        times = self._frame_times
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        worlds = self.env.worlds
        return {"type": "frame", "index": worlds.frames, "input_seq": seq, "fps": round(fps, 2),
                "step_ms": round(self.step_ms, 2), "steps": self.env.steps,
                "context": worlds.context_length, "window": worlds.capacity,
                "clip": self.env.clip, "reset": was_reset, "recording": recording,
                "paused": self.paused}
