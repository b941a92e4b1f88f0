"""What the player needs from a run's workdir: the world model, held-out context clips and the
dataset's settings (frame rate, context length, window, sampling steps), with one-line errors
that name the problem and the command that fixes it (`PlayError`).

The frame rate is the dataset's (`dataset_fps`: the simulator records 30 / sim_frame_skip Hz,
CALVIN 30 Hz, CoinRun 15 Hz as procgen's interactive mode, VPT 20 Hz; other sources 10 Hz).
Without `<workdir>/config.json` (a folder written by `WorldModel.save`) the defaults below apply;
without held-out clips the player starts from an imagined first frame.
"""

import dataclasses
import json
import os

import numpy as np

from data import sources
from data.clips import ClipStore
from data.sim_demos import SimSettings
from data.sources import SourceOptions
from play.env import Contexts
from play.keys import ActionLayoutError, key_map
from world import WorldModel

DEFAULT_FPS = 10.0
MAX_CLIPS = 64  # held-out clips kept in memory as contexts


class PlayError(Exception):
    """A workdir the player cannot use; the message is one line with the fix."""


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Settings from the run's config (or the defaults when there is none)."""

    fps: float = DEFAULT_FPS
    context_frames: int = 8
    capacity: int = 16  # frames in the KV caches: the longest training sequence


def dataset_fps(config: dict) -> float:
    """The frame rate of the run's source (data/sources.py), from its config.json values."""
    data = config.get("data", {})
    if data.get("format") not in sources.NAMES:
        return DEFAULT_FPS
    sim = SimSettings(frame_skip=max(int(data.get("sim_frame_skip", 1)), 1))
    rate = sources.source(data["format"]).frame_rate(SourceOptions(sim=sim))
    return rate or DEFAULT_FPS


def read_defaults(workdir: str) -> Defaults:
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
        seq_lengths = config["train"]["dynamics"]["seq_lengths"]
        return Defaults(fps=dataset_fps(config),
                        context_frames=int(config["eval"]["context_frames"]),
                        capacity=max(int(max(seq_lengths)), 2))
    except (OSError, KeyError, ValueError, TypeError):
        return Defaults()


def load_contexts(workdir: str, length: int, count: int = MAX_CLIPS) -> Contexts | None:
    """Up to `count` held-out clips of `<workdir>/clips`, cut to `length` frames (None if none)."""
    try:
        store = ClipStore(os.path.join(workdir, "clips"))
        if "eval" not in store.splits or store.clip_length < length:
            return None
        data = store.first("eval", count, length)
    except (OSError, ValueError, KeyError):  # DataError is a ValueError
        return None
    has = data.get("has_action", np.ones(data["frames"].shape[:2], bool))
    return Contexts(data["frames"], data["actions"], has)


def load_world_model(workdir: str) -> WorldModel:
    """The workdir's world model, after checking that the player maps keys for its actions."""
    if not os.path.isdir(workdir):
        raise PlayError(f"{workdir}: no such workdir; train one with python launch/run.py "
                        f"--config=configs/calvin.py:small --workdir={workdir}")
    try:
        world_model = WorldModel.load(workdir)
    except (FileNotFoundError, ValueError) as error:
        raise PlayError(str(error)) from None
    try:
        key_map(world_model.action)
    except ActionLayoutError as error:
        raise PlayError(f"{workdir}: {error}") from None
    return world_model
