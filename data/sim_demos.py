"""Scripted, noisy demonstrations in the embedded simulator, written as a real CALVIN dataset.

An episode chains random tasks until it has `episode_length` frames: reach a block, push a block
in a random direction, pick a block up and put it down elsewhere, or wander (smooth random
motion, so that actions vary beyond the scripts). A task is a list of waypoints for the tool
centre point; the policy steers toward the current one with a clipped proportional relative
action plus Gaussian noise, so the recorded actions explain the motion.

`demos` picks the mix (`DEMOS`): "tasks" (the default) chains all four kinds at a fixed noise;
"lift" only picks up the block nearest to the gripper and puts it down elsewhere, each episode
at its own noise level drawn from 1x to 5x the default (translation noise std 0.15 to 0.75 in
action units, per control step): demonstrations of mixed quality for the "lift" task of
data/sim_tasks.py, whose actions follow from the scene (which block, where to grasp) up to the
noise. From a fresh scene the demonstrator lifts a block within 32 frames at 10 Hz in 100%,
72%, 32%, 28% and 5% of 40 scenes at 1x, 3.3x, 5.3x, 6.7x and 10x, so the task's reward varies
from episode to episode. "push" only pushes blocks into the "push_to_region" task's region (the
block nearest to it among those outside: down behind the block, gripper closed, then straight
through to the region's centre), noise 1x to 5x per episode; from a fresh scene it pushes a
further block into the region within 32 frames at 10 Hz in 90%, 92%, 80% and 50% of 40 scenes
at 1x, 2x, 3.3x and 5x (7 of the 40 scenes start with a block in it).

With `frame_skip` k > 1 a frame is recorded every k control steps (30 / k Hz) and its relative
action is the mean of the k actions taken (one unit then moves k x 0.02 m; the gripper entry is
the last one), as if the robot were controlled at 30 / k Hz.

Output: `<root>/training` and `<root>/validation` (when it has episodes) in the CALVIN layout
(`episode_%07d.npz` per frame with `rgb_static`, `actions`, `rel_actions`, `robot_obs`,
`scene_obs` as CALVIN stores them, float64 vectors; no gripper camera or depth), one segment per
episode in
`ep_start_end_ids.npy`, and `simulator.json` with the settings. Episode k of a split is
generated from the seed (seed, split, k) in a fresh physics scene, so output does not depend on
the number of worker processes; finished episodes are kept when a run is repeated.
"""

import dataclasses
import os

import numpy as np

from data.calvin import frame_path, write_calvin_frame, write_segments
from data.jobs import Progress, claim_folder, run_jobs
from data.sim import (
    BLOCK_HALF,
    DOWN,
    POSITION_SCALE,
    ROTATION_SCALE,
    TABLE_TOP,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    TabletopSim,
    wrap_angle,
)
from data.sim_tasks import REGION

SPLITS = ("training", "validation")
REACHED = 0.012  # metres from a waypoint that count as reaching it
WAYPOINT_PATIENCE = 40  # steps before giving up on a waypoint
HOVER = 0.14  # height above a block for approach moves
PUSH_CONTACT = 0.06  # metres from a pushed block's centre to the tool centre point behind it


@dataclasses.dataclass(frozen=True)
class DemoMix:
    """Which tasks the scripted demonstrator chains (weights of `KINDS`), the
    range its per-episode noise scale is drawn from (uniformly; it multiplies
    `TRANSLATION_NOISE` and `ROTATION_NOISE`), and whether a task takes the block nearest to
    the gripper (what it does then follows from the scene) or a random one."""

    weights: tuple[float, ...]
    noise_scale: tuple[float, float]
    nearest: bool = False


KINDS = ("reach", "push", "pick", "wander", "region")
DEMOS = {"tasks": DemoMix((0.25, 0.3, 0.3, 0.15, 0.0), (1.0, 1.0)),
         "lift": DemoMix((0.0, 0.0, 1.0, 0.0, 0.0), (1.0, 5.0), nearest=True),
         "push": DemoMix((0.0, 0.0, 0.0, 0.0, 1.0), (1.0, 5.0))}
TRANSLATION_NOISE, ROTATION_NOISE = 0.15, 0.1  # Gaussian noise std per action entry, at scale 1


@dataclasses.dataclass(frozen=True)
class SimSettings:
    """What to generate: episodes per split, frames per episode, render size, seed,
    `frame_skip`: 30 Hz control steps per recorded frame (1: CALVIN's rate; 3: 10 Hz), and
    `demos`: the demonstrations' mix of tasks and noise (`DEMOS`)."""

    train_episodes: int = 64
    eval_episodes: int = 8
    episode_length: int = 120
    image_size: int = 200
    seed: int = 0
    frame_skip: int = 1
    demos: str = "tasks"

    def __post_init__(self):
        if self.frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {self.frame_skip}.")
        if self.demos not in DEMOS:
            raise ValueError(f"unknown demos {self.demos!r}; use one of {tuple(DEMOS)}.")

    def recorded(self) -> dict:
        """The settings as `simulator.json` records them (the default `demos` left out, so
        folders generated before it existed still resume)."""
        fields = dataclasses.asdict(self)
        if self.demos == "tasks":
            del fields["demos"]
        return fields

    def episodes(self, split: str) -> int:
        return self.train_episodes if split == "training" else self.eval_episodes


@dataclasses.dataclass(frozen=True)
class Waypoint:
    position: np.ndarray
    gripper: float  # +1 open, -1 closed
    yaw: float = 0.0
    hold: int = 0  # steps to stay once reached (while the gripper moves)


def _above(point: np.ndarray, height: float) -> np.ndarray:
    return point + np.array([0.0, 0.0, height])


def _task(kind: str, sim: TabletopSim, rng: np.random.Generator, *, nearest: bool = False
          ) -> list[Waypoint]:
    """Waypoints of one task, planned from the scene as it is now, on a random block or (with
    `nearest`) the block nearest to the tool centre point in the table's plane; "region" takes
    the block nearest to `sim_tasks.REGION`'s centre among those outside it."""
    poses = sim.block_poses()
    if kind == "region":
        return _push_to_region(poses)
    if nearest:
        tcp = sim.tcp_pose()[0]
        block, block_euler = min(poses, key=lambda pose: np.linalg.norm(pose[0][:2] - tcp[:2]))
    else:
        block, block_euler = poses[rng.integers(len(sim.blocks))]
    yaw = float((block_euler[2] + np.pi / 4) % (np.pi / 2) - np.pi / 4)  # cube: yaw mod 90 deg
    low = TABLE_TOP + BLOCK_HALF
    if kind == "reach":
        return [
            Waypoint(_above(block, HOVER + rng.uniform(-0.03, 0.05)), 1.0, yaw),
            Waypoint(block + np.array([*rng.normal(0, 0.01, 2), 0.05]), 1.0, yaw, hold=3),
        ]
    if kind == "push":
        angle = rng.uniform(-np.pi, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        behind = np.array([*block[:2], low]) - 0.08 * direction
        end = behind + rng.uniform(0.14, 0.2) * direction
        return [
            Waypoint(_above(behind, HOVER), -1.0),
            Waypoint(behind, -1.0),
            Waypoint(end, -1.0),
            Waypoint(_above(end, HOVER), -1.0),
        ]
    if kind == "pick":
        place = np.array([*rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH), low + 0.005])
        return [
            Waypoint(_above(block, HOVER), 1.0, yaw),
            Waypoint(np.array([*block[:2], low + 0.005]), 1.0, yaw),
            Waypoint(np.array([*block[:2], low + 0.005]), -1.0, yaw, hold=8),
            Waypoint(_above(block, HOVER + 0.04), -1.0, yaw),
            Waypoint(_above(place, HOVER), -1.0, yaw),
            Waypoint(place, -1.0, yaw),
            Waypoint(place, 1.0, yaw, hold=5),
            Waypoint(_above(place, HOVER), 1.0, yaw),
        ]
    points = rng.uniform([*WORKSPACE_LOW, low + 0.03], [*WORKSPACE_HIGH, low + 0.2], (3, 3))
    gripper = float(rng.choice([-1.0, 1.0]))
    return [Waypoint(point, gripper, rng.uniform(-0.6, 0.6)) for point in points]


def _push_to_region(poses) -> list[Waypoint]:
    """Down behind the block (gripper closed), then straight through to where the block's centre
    reaches the region's centre."""
    (x_low, x_high), (y_low, y_high) = REGION
    centre = np.array([(x_low + x_high) / 2, (y_low + y_high) / 2])
    outside = [pose[0] for pose in poses if not (x_low <= pose[0][0] <= x_high
                                                  and y_low <= pose[0][1] <= y_high)]
    block = min(outside or [pose[0] for pose in poses],
                key=lambda position: np.linalg.norm(position[:2] - centre))
    path = centre - block[:2]
    direction = np.array([*(path / max(np.linalg.norm(path), 1e-6)), 0.0])
    low = np.array([*block[:2], TABLE_TOP + BLOCK_HALF])
    behind = low - PUSH_CONTACT * direction
    end = np.array([*centre, low[2]]) - PUSH_CONTACT * direction
    return [
        Waypoint(_above(behind, HOVER), -1.0),
        Waypoint(behind, -1.0),
        Waypoint(end, -1.0, hold=2),
        Waypoint(_above(end, HOVER), -1.0),
    ]


class ScriptedPolicy:
    """Chains random tasks; `act(sim)` returns the next 7-D relative action in [-1, 1]."""

    def __init__(self, rng: np.random.Generator, *, noise_scale: float = 1.0,
                 weights: tuple[float, ...] = DEMOS["tasks"].weights, nearest: bool = False):
        self.rng, self.noise_scale, self.weights, self.nearest = rng, noise_scale, weights, nearest
        self.waypoints: list[Waypoint] = []
        self.steps_on_waypoint = 0
        self.held = 0

    def act(self, sim: TabletopSim) -> np.ndarray:
        if not self.waypoints:
            kind = self.rng.choice(KINDS, p=self.weights)
            self.waypoints = _task(kind, sim, self.rng, nearest=self.nearest)
        target = self.waypoints[0]
        position, euler = sim.tcp_pose()
        offset = target.position - position
        self.steps_on_waypoint += 1
        if np.linalg.norm(offset) < REACHED:
            self.held += 1
        if self.held > target.hold or self.steps_on_waypoint > WAYPOINT_PATIENCE:
            self.waypoints.pop(0)
            self.steps_on_waypoint = self.held = 0
        noise = TRANSLATION_NOISE * self.noise_scale
        translation = np.clip(offset / POSITION_SCALE, -1, 1) + self.rng.normal(0, noise, 3)
        rotation_error = wrap_angle(DOWN + np.array([0.0, 0.0, target.yaw]) - euler)
        rotation = np.clip(0.5 * rotation_error / ROTATION_SCALE, -1, 1)
        rotation += self.rng.normal(0, ROTATION_NOISE * self.noise_scale, 3)
        action = np.concatenate([np.clip(translation, -1, 1), np.clip(rotation, -1, 1)])
        return np.append(action, target.gripper)


_SIMULATORS: dict[int, TabletopSim] = {}  # one per process and image size, reused across episodes


def generate_episode(root: str, split: str, index: int, settings: SimSettings) -> int:
    """Simulates and writes one episode; returns its frame count."""
    if settings.image_size not in _SIMULATORS:
        _SIMULATORS[settings.image_size] = TabletopSim(settings.image_size)
    sim = _SIMULATORS[settings.image_size]
    rng = np.random.default_rng((settings.seed, SPLITS.index(split), index))
    sim.reset(rng)
    mix = DEMOS[settings.demos]
    scale = np.random.default_rng((settings.seed, SPLITS.index(split), index, 1))
    policy = ScriptedPolicy(rng, noise_scale=scale.uniform(*mix.noise_scale), weights=mix.weights,
                            nearest=mix.nearest)
    split_dir = os.path.join(root, split)
    first_id = index * settings.episode_length
    for t in range(settings.episode_length):
        image, robot_obs, scene_obs = sim.render(), sim.robot_obs(), sim.scene_obs()
        actions = []
        for _ in range(settings.frame_skip):
            actions.append(policy.act(sim))
            absolute = sim.step(actions[-1])
        rel_action = np.append(np.mean(actions, axis=0)[:6], actions[-1][6])
        write_calvin_frame(
            split_dir, first_id + t, rgb_static=image, actions=absolute,
            rel_actions=rel_action.astype(np.float64), robot_obs=robot_obs, scene_obs=scene_obs,
        )  # fmt: skip
    return settings.episode_length


def _generate(job):
    return generate_episode(*job)


def generate_calvin_dataset(
    root: str, settings: SimSettings, *, num_workers: int = 1, progress: bool = True
) -> str:
    """Writes the simulated dataset under `root` (resumable); returns `root`.

    Raises DataError if `root` holds a simulated dataset made with other settings.
    """
    claim_folder(root, "simulator.json", settings.recorded())
    splits = [split for split in SPLITS if settings.episodes(split) > 0]
    for split in splits:
        os.makedirs(os.path.join(root, split), exist_ok=True)
    length = settings.episode_length
    jobs = [
        (root, split, k, settings)
        for split in splits
        for k in range(settings.episodes(split))
        if not os.path.exists(frame_path(os.path.join(root, split), (k + 1) * length - 1))
    ]
    total = sum(settings.episodes(split) for split in splits) * length
    bar = Progress("simulated frames", total, "frames")
    bar.done = total - len(jobs) * length  # resumed
    for _, frames in run_jobs(_generate, jobs, num_workers):
        if progress:
            bar.update(frames)
    for split in splits:
        ids = np.arange(settings.episodes(split))[:, None] * length + [0, length - 1]
        write_segments(os.path.join(root, split), ids)
    return root
