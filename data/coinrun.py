"""CoinRun episodes with uniformly random actions, written in the bring-your-own .npz format.

procgen's coinrun renders 64x64 RGB frames and takes 15 discrete actions. Each episode is
`episode_%06d.npz` with `frames` uint8 [T, 64, 64, 3] and `actions` int32 [T], where `actions[t]`
is taken after seeing `frames[t]`. An episode starts at a level's first frame and ends when the
game does (death, coin, or procgen's time limit; the frame after the last action is the next
level's, so it is not stored) or after `max_length` frames. Episode k is drawn from
`np.random.default_rng((seed, k))`: its first draw, `integers(2**31 - 1)`, is the level
(`start_level`, `num_levels=1`), the next draws `integers(15)` are the actions in order. With
`levels` = L > 0 the episodes cycle through L levels instead: episode k plays level
`default_rng(seed).integers(2**31 - 1, size=L)[k % L]` (its own first draw is then unused), so
held-out episodes replay training levels with other actions. Output depends only on the
settings, not on the number of worker processes, and a repeated run keeps finished episodes
(`coinrun.json` records the settings).

procgen comes from the `procgen-mirror` wheels. Their metadata pins numpy<2, but they run with
numpy 2, so install without dependencies (`INSTALL`); it is imported only here.
"""

import dataclasses

import numpy as np

from data.episodes import episode_file, pending_episodes, write_episode
from data.jobs import Progress, run_jobs

COINRUN_ACTIONS = 15
COINRUN_FRAME_SIZE = (64, 64)
SETTINGS_FILE = "coinrun.json"
INSTALL = (
    "pip install --no-deps procgen-mirror gym3 gym==0.26.2 && pip install cffi imageio cloudpickle"
)


@dataclasses.dataclass(frozen=True)
class CoinRunSettings:
    """What to generate: episode count, frames per episode at most, seed, procgen difficulty
    ("hard" is procgen's default, "easy" the usual RL benchmark setting), and how many distinct
    levels the episodes cycle through (0: a new level per episode)."""

    episodes: int = 100
    max_length: int = 1000
    seed: int = 0
    distribution_mode: str = "hard"
    levels: int = 0

    def __post_init__(self):
        if self.levels < 0:
            raise ValueError(f"CoinRun levels must be >= 0 (0: a new level per episode), got "
                             f"{self.levels}.")

    def recorded(self) -> dict:
        """What `coinrun.json` records; `levels` only when set, so a folder whose record has no
        `levels` (one level per episode) resumes with `levels=0`."""
        fields = dataclasses.asdict(self)
        if not self.levels:
            del fields["levels"]
        return fields

    def level(self, index: int, rng: np.random.Generator) -> int:
        """Episode `index`'s level; takes the first draw of its generator `rng` either way."""
        own = int(rng.integers(2**31 - 1))
        if self.levels == 0:
            return own
        pool = np.random.default_rng(self.seed).integers(2**31 - 1, size=self.levels)
        return int(pool[index % self.levels])


def _procgen_env():
    try:
        from procgen import ProcgenGym3Env
    except ImportError as e:
        raise ImportError(
            f"CoinRun needs procgen ({e}). Install it with: {INSTALL} (procgen-mirror's metadata "
            "pins numpy<2, but it runs with numpy 2, hence --no-deps)"
        ) from e
    return ProcgenGym3Env


def coinrun_episode(index: int, settings: CoinRunSettings) -> tuple[np.ndarray, np.ndarray]:
    """Plays episode `index` with random actions; returns (frames, actions) as documented."""
    rng = np.random.default_rng((settings.seed, index))
    env = _procgen_env()(
        num=1, env_name="coinrun", start_level=settings.level(index, rng), num_levels=1,
        distribution_mode=settings.distribution_mode,
    )  # fmt: skip
    _, observation, _ = env.observe()
    frames, actions = [], []
    while True:
        frames.append(observation["rgb"][0])
        actions.append(rng.integers(COINRUN_ACTIONS))
        if len(frames) == settings.max_length:
            break
        env.act(np.array(actions[-1:], np.int32))
        _, observation, first = env.observe()
        if first[0]:
            break
    env.close()
    return np.stack(frames), np.array(actions, np.int32)


def _generate(job) -> int:
    root, index, settings = job
    frames, actions = coinrun_episode(index, settings)
    write_episode(episode_file(root, index), frames, actions)
    return len(frames)


def generate_coinrun(
    root: str, settings: CoinRunSettings, *, num_workers: int = 1, progress: bool = True
) -> str:
    """Writes the episodes under `root` over `num_workers` processes (resumable); returns `root`.

    Raises ImportError naming the install command if procgen is missing, and DataError if `root`
    holds episodes generated with other settings.
    """
    _procgen_env()
    pending = pending_episodes(root, SETTINGS_FILE, settings.recorded(), settings.episodes)
    bar = Progress("coinrun episodes", settings.episodes, "episodes")
    bar.done = settings.episodes - len(pending)  # resumed
    for _ in run_jobs(_generate, [(root, k, settings) for k in pending], num_workers):
        if progress:
            bar.update()
    return root
