"""A suite of pixel control domains, written as `.npz` episode folders (`--format=episodes`).

    python -m data.suite --out=/data/suite --domains=cartpole,pendulum,acrobot,mountaincar,\
reacher,pusher --episodes=200 --length=200 --size=64 --workers=2

Each domain goes to `<out>/<domain>/episode_%06d.npz` with `frames` uint8 [T, size, size, 3],
`actions` (`actions[t]` taken after seeing `frames[t]`) and `states` float32 [T, 3 P] (xyz in
metres of P points, the controlled one first: `data.episode`; the 2-D domains give (x, y) in the
image plane, y up, and z = 0), plus `suite.json` with the settings. Random actions chosen to move
things visibly: discrete ones are sticky (kept with probability `STICKY`, else drawn anew),
continuous ones are held for 2..`MAX_HOLD` steps, then drawn uniformly from the action box.

| domain | package | actions | states (points) |
|---|---|---|---|
| cartpole | classic | discrete 2 (push left / right) | cart, pole tip |
| pendulum | classic | continuous [1], torque in [-2, 2] | pole tip |
| acrobot | classic | discrete 3 (torque -1, 0, +1) | tip, elbow |
| mountaincar | classic | continuous [1], force in [-1, 1] | car |
| reacher | mujoco | continuous [2], joint torques in [-1, 1] | fingertip, target |
| pusher | mujoco | continuous [7], joint torques in [-2, 2] | arm tip, object, goal |

(classic: gymnasium[classic-control], pygame rendering; mujoco: gymnasium[mujoco], EGL.)

`--frame_skip=k` records every k-th environment step, the action repeated k times in between
(the native control rates move these worlds by less than a pixel per step at 64x64; BENCHMARKS.md).

The environments run unwrapped: no time limit and no termination, so an episode is always
`length` frames (CartPole's pole swings freely once it falls, and the cart is pushed back toward
the centre beyond |x| = `CART_LIMIT`; Acrobot keeps swinging past its goal line; Pendulum's torque
arrow is not drawn, so the frame shows the physics, not the action). Classic-control frames are
rendered on a square canvas and area-resized; MuJoCo renders at `size` directly (`MUJOCO_GL`
defaults to egl, software rendering on CPUs through Mesa). Episode k of a domain is drawn from
`np.random.default_rng((seed, domain number, k))` (its first draw seeds the environment's reset),
so output depends on the settings only, not on the worker count, and a repeated run keeps
finished episodes.
"""

import dataclasses
import os
from collections.abc import Callable

import numpy as np
from absl import app, flags

from data.episode import DataError
from data.episodes import episode_file, pending_episodes, write_episode
from data.images import resize_frames
from data.jobs import Progress, run_jobs

SETTINGS_FILE = "suite.json"
STICKY = 0.8  # probability of repeating the last discrete action
MAX_HOLD = 10  # steps a continuous action is held at most
CART_LIMIT = 1.6  # metres from the centre beyond which the cart is pushed back
INSTALL = 'pip install -e ".[suite]"'


@dataclasses.dataclass(frozen=True)
class Domain:
    """How to make, drive and read one environment."""

    env_id: str
    package: str  # what to install when it is missing
    discrete: bool
    state: Callable  # unwrapped env -> float64 [3 P]
    canvas: int = 0  # classic control: square canvas side (0: MuJoCo, renders at `size`)
    camera: dict | None = None  # MuJoCo: default_camera_config
    steer: Callable | None = None  # (unwrapped env, action) -> the action actually taken


def _planar(*points) -> np.ndarray:
    return np.array([(x, y, 0.0) for x, y in points]).reshape(-1)


def _cartpole_state(env) -> np.ndarray:
    x, _, theta, _ = env.state
    pole = 2 * env.length
    return _planar((x, 0.0), (x + pole * np.sin(theta), pole * np.cos(theta)))


def _cartpole_steer(env, action):
    x = env.state[0]
    return 0 if x > CART_LIMIT else 1 if x < -CART_LIMIT else action


def _pendulum_state(env) -> np.ndarray:
    theta = env.state[0]  # 0 upright, counter-clockwise on screen
    return _planar((-np.sin(theta), np.cos(theta)))


def _acrobot_state(env) -> np.ndarray:
    first, second = env.state[0], env.state[0] + env.state[1]
    elbow = (env.LINK_LENGTH_1 * np.sin(first), -env.LINK_LENGTH_1 * np.cos(first))
    tip = (elbow[0] + env.LINK_LENGTH_2 * np.sin(second),
           elbow[1] - env.LINK_LENGTH_2 * np.cos(second))
    return _planar(tip, elbow)


def _mountaincar_state(env) -> np.ndarray:
    x = env.state[0]
    return _planar((x, 0.45 * np.sin(3 * x) + 0.55))


def _bodies(*names) -> Callable:
    return lambda env: np.concatenate([env.data.body(name).xpos for name in names])


TOP_DOWN = dict(distance=0.75, elevation=-90.0, azimuth=90.0, lookat=(0.0, 0.0, 0.0),
                trackbodyid=-1)
TABLE = dict(distance=2.0, elevation=-55.0, azimuth=180.0, lookat=(0.35, -0.15, -0.2),
             trackbodyid=-1)
CLASSIC, MUJOCO = "gymnasium[classic-control]", "gymnasium[mujoco]"
DOMAINS = {
    "cartpole": Domain("CartPole-v1", CLASSIC, True, _cartpole_state, 400,
                       steer=_cartpole_steer),
    "pendulum": Domain("Pendulum-v1", CLASSIC, False, _pendulum_state, 500),
    "acrobot": Domain("Acrobot-v1", CLASSIC, True, _acrobot_state, 500),
    "mountaincar": Domain("MountainCarContinuous-v0", CLASSIC, False, _mountaincar_state, 400),
    "reacher": Domain("Reacher-v5", MUJOCO, False, _bodies("fingertip", "target"),
                      camera=TOP_DOWN),
    "pusher": Domain("Pusher-v5", MUJOCO, False, _bodies("tips_arm", "object", "goal"),
                     camera=TABLE),
}


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """Episodes per domain, frames per episode, frame side, seed."""

    episodes: int = 200
    length: int = 200
    size: int = 64
    seed: int = 0
    frame_skip: int = 1  # environment steps per recorded frame (the action repeated)

    def __post_init__(self):
        if min(self.episodes, self.length, self.size, self.frame_skip) < 1:
            raise ValueError(f"episodes, length, size and frame_skip must be >= 1: {self}")


def make_env(name: str, size: int):
    """The unwrapped environment of domain `name`, rendering rgb_array frames; ImportError naming
    the install command when its package is missing."""
    domain = DOMAINS[name]
    os.environ.setdefault("MUJOCO_GL", "egl")
    missing = f"suite domain {name!r} needs {domain.package}; install with: {INSTALL}"
    try:
        import gymnasium
    except ImportError as e:
        raise ImportError(f"{missing} ({e})") from e
    kwargs = {"render_mode": "rgb_array"}
    if domain.camera is not None:
        camera = {k: np.asarray(v) if isinstance(v, tuple) else v
                  for k, v in domain.camera.items()}
        kwargs.update(width=size, height=size, default_camera_config=camera)
    try:
        env = gymnasium.make(domain.env_id, **kwargs).unwrapped
    except (ImportError, gymnasium.error.DependencyNotInstalled) as e:
        raise ImportError(f"{missing} ({e})") from e
    if domain.canvas:
        env.screen_width = env.screen_height = domain.canvas
    gymnasium.logger.min_level = 40  # stepping past termination is intended: no warning
    return env


def _render(env, name: str, size: int) -> np.ndarray:
    if name == "pendulum":
        env.last_u = None  # no torque arrow: the frame shows the pole only
    return resize_frames(np.asarray(env.render()), (size, size))


class RandomActions:
    """Sticky discrete or held continuous random actions (see the module docstring)."""

    def __init__(self, space, discrete: bool, rng: np.random.Generator):
        self.space, self.discrete, self.rng = space, discrete, rng
        self.action, self.left = None, 0

    def __call__(self):
        if self.discrete:
            if self.action is None or self.rng.random() > STICKY:
                self.action = int(self.rng.integers(self.space.n))
        elif self.left == 0:
            self.action = self.rng.uniform(self.space.low, self.space.high).astype(np.float32)
            self.left = int(self.rng.integers(2, MAX_HOLD + 1))
        self.left -= 1
        return self.action


def domain_episode(name: str, index: int, settings: SuiteSettings):
    """Plays episode `index` of domain `name`; returns frames, actions, states."""
    domain = DOMAINS[name]
    rng = np.random.default_rng((settings.seed, list(DOMAINS).index(name), index))
    env = make_env(name, settings.size)
    env.reset(seed=int(rng.integers(2**31 - 1)))
    policy = RandomActions(env.action_space, domain.discrete, rng)
    frames, actions, states = [], [], []
    for _ in range(settings.length):
        frames.append(_render(env, name, settings.size))
        states.append(domain.state(env))
        action = policy()
        if domain.steer is not None:
            action = domain.steer(env, action)
        actions.append(action)
        for _ in range(settings.frame_skip):
            env.step(action)
    env.close()
    actions = (np.array(actions, np.int32) if domain.discrete
               else np.array(actions, np.float32).reshape(settings.length, -1))
    return np.stack(frames), actions, np.array(states, np.float32)


def _generate(job) -> int:
    folder, name, index, settings = job
    frames, actions, states = domain_episode(name, index, settings)
    write_episode(episode_file(folder, index), frames, actions, states)
    return len(frames)


def generate_suite(out: str, names, settings: SuiteSettings, *, num_workers: int = 1,
                   progress: bool = True) -> dict[str, str]:
    """Writes every domain of `names` under `out/<domain>` (resumable); returns their folders.

    Raises ImportError naming the install command when a domain's package is missing (before
    anything is written), DataError when a folder holds episodes of other settings."""
    unknown = sorted(set(names) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown suite domains {unknown}; use some of {tuple(DOMAINS)}")
    for name in names:
        make_env(name, settings.size).close()
    folders = {name: os.path.join(out, name) for name in names}
    jobs = []
    for name, folder in folders.items():
        recorded = {"domain": name, **dataclasses.asdict(settings)}
        if settings.frame_skip == 1:  # folders written before frame_skip existed stay valid
            del recorded["frame_skip"]
        jobs += [(folder, name, k, settings) for k in
                 pending_episodes(folder, SETTINGS_FILE, recorded, settings.episodes)]
    bar = Progress("suite episodes", settings.episodes * len(names), "episodes")
    bar.done = settings.episodes * len(names) - len(jobs)  # resumed
    for _ in run_jobs(_generate, jobs, num_workers):
        if progress:
            bar.update()
    return folders


def main(argv):
    del argv
    try:
        settings = SuiteSettings(_EPISODES.value, _LENGTH.value, _SIZE.value, _SEED.value,
                                 _FRAME_SKIP.value)
        folders = generate_suite(_OUT.value, _DOMAINS_FLAG.value, settings,
                                 num_workers=_WORKERS.value)
    except (ValueError, ImportError, DataError) as e:
        raise SystemExit(f"data.suite: {e}") from None
    for name, folder in folders.items():
        print(f"{name}: {folder}")


if __name__ == "__main__":
    _OUT = flags.DEFINE_string("out", None, "output folder (one subfolder per domain)")
    _DOMAINS_FLAG = flags.DEFINE_list("domains", list(DOMAINS), "domains to generate")
    _EPISODES = flags.DEFINE_integer("episodes", 200, "episodes per domain")
    _LENGTH = flags.DEFINE_integer("length", 200, "frames per episode")
    _SIZE = flags.DEFINE_integer("size", 64, "frame side in pixels (square frames)")
    _SEED = flags.DEFINE_integer("seed", 0, "seed")
    _FRAME_SKIP = flags.DEFINE_integer("frame_skip", 1, "environment steps per recorded frame "
                                       "(the action is repeated)")
    _WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "worker processes")
    flags.mark_flags_as_required(["out"])
    app.run(main)
