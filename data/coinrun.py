"""CoinRun episodes, written in the bring-your-own .npz format: random actions, optionally mixed
with a noisy scripted player that reaches the coin in about half of its episodes.

procgen's coinrun renders 64x64 RGB frames and takes 15 discrete actions. Each episode is
`episode_%06d.npz` with `frames` uint8 [T, 64, 64, 3], `actions` int32 [T], where `actions[t]`
is taken after seeing `frames[t]`, and `rewards` float32 [T], procgen's reward for `actions[t]`
(10 for the step that reaches the coin, else 0; 0 for an action that was never taken because the
episode hit `max_length`), and `continues` float32 [T]: 1, except 0 on the last frame when the
game ended after its action (death or coin; procgen's own time limit of 1000 steps counts as an
end too, and is reached only with `max_length` > 1000). An episode starts at a level's first
frame and ends when the game does (death, coin, or procgen's time limit; the frame after the last
action is the next level's, so it is not stored) or after `max_length` frames. Episode k is
drawn from `np.random.default_rng((seed, k))`: its first draw, `integers(2**31 - 1)`, is the level
(`start_level`, `num_levels=1`), the next draws `integers(15)` are the actions in order. With
`levels` = L > 0 the episodes cycle through L levels instead: episode k plays level
`default_rng(seed).integers(2**31 - 1, size=L)[k % L]` (its own first draw is then unused), so
held-out episodes replay training levels with other actions.

With `scripted_fraction` f > 0, episode k is played by `RunRight` instead when the first draw of
`default_rng((seed, k, 1))` is below f; that generator then gives the player's noise level
(uniform in `SCRIPTED_NOISE`: demonstrations from good to bad, so rewards vary) and all its
choices. Random episodes stay the draws above, so f = 0 writes what earlier versions wrote.
Output depends only on the settings, not on the number of worker processes, and a repeated run
keeps finished episodes (`coinrun.json` records the settings).

procgen comes from the `procgen-mirror` wheels. Their metadata pins numpy<2, but they run with
numpy 2, so install without dependencies (`INSTALL`); it is imported only here.
"""

import dataclasses

import numpy as np

from data.episodes import episode_file, pending_episodes, write_episode
from data.jobs import Progress, run_jobs

COINRUN_ACTIONS = 15
RIGHT, RIGHT_UP = 7, 8  # procgen's action combos: 7 moves right, 8 moves right and jumps
SCRIPTED_NOISE = (0.1, 0.7)  # range of a scripted episode's share of random actions
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
    scripted_fraction: float = 0.0

    def __post_init__(self):
        if self.levels < 0:
            raise ValueError(f"CoinRun levels must be >= 0 (0: a new level per episode), got "
                             f"{self.levels}.")
        if not 0.0 <= self.scripted_fraction <= 1.0:
            raise ValueError(f"CoinRun scripted_fraction must be in [0, 1], got "
                             f"{self.scripted_fraction}.")

    def recorded(self) -> dict:
        """What `coinrun.json` records; `levels` and `scripted_fraction` only when set, so a
        folder whose record lacks them (written before they existed) resumes with 0."""
        fields = dataclasses.asdict(self)
        for name in ("levels", "scripted_fraction"):
            if not fields[name]:
                del fields[name]
        return fields

    def level(self, index: int, rng: np.random.Generator) -> int:
        """Episode `index`'s level; takes the first draw of its generator `rng` either way."""
        own = int(rng.integers(2**31 - 1))
        return self.pool_level(index) if self.levels else own

    def pool_level(self, index: int) -> int:
        """Episode `index`'s level in the pool of `levels` levels (which must be > 0)."""
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


class RunRight:
    """The scripted player: runs right, jumping in bursts, with a share `noise` of uniformly
    random actions. It holds "right" or "right and jump" (equally likely) for 1 to 7 steps, then
    draws again. Calls draw from `rng` alone."""

    def __init__(self, rng: np.random.Generator, noise: float):
        self.rng, self.noise = rng, noise
        self.current, self.left = RIGHT, 0

    def __call__(self) -> int:
        if self.rng.random() < self.noise:
            return int(self.rng.integers(COINRUN_ACTIONS))
        if self.left <= 0:
            self.current = RIGHT_UP if self.rng.random() < 0.5 else RIGHT
            self.left = int(self.rng.integers(1, 8))
        self.left -= 1
        return self.current


def episode_player(index: int, settings: CoinRunSettings, rng: np.random.Generator):
    """Episode `index`'s action source: `RunRight` for a scripted episode, else the random
    draws of `rng` (the episode's own generator, after its level draw)."""
    own = np.random.default_rng((settings.seed, index, 1))
    if own.random() < settings.scripted_fraction:
        return RunRight(own, float(own.uniform(*SCRIPTED_NOISE)))
    return lambda: int(rng.integers(COINRUN_ACTIONS))


def make_env(level: int, distribution_mode: str = "hard"):
    """One procgen CoinRun environment that plays `level` (and replays it after each end)."""
    return _procgen_env()(num=1, env_name="coinrun", start_level=level, num_levels=1,
                          distribution_mode=distribution_mode)


def coinrun_episode(index: int, settings: CoinRunSettings
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plays episode `index`; returns (frames, actions, rewards, continues) as documented."""
    rng = np.random.default_rng((settings.seed, index))
    env = make_env(settings.level(index, rng), settings.distribution_mode)
    player = episode_player(index, settings, rng)
    _, observation, _ = env.observe()
    frames, actions, rewards, ended = [], [], [], False
    while not ended:
        frames.append(observation["rgb"][0])
        actions.append(player())
        if len(frames) == settings.max_length:
            rewards.append(0.0)
            break
        env.act(np.array(actions[-1:], np.int32))
        reward, observation, first = env.observe()
        rewards.append(float(reward[0]))
        ended = bool(first[0])
    env.close()
    continues = np.ones(len(frames), np.float32)
    continues[-1] = 0.0 if ended else 1.0
    return (np.stack(frames), np.array(actions, np.int32), np.array(rewards, np.float32),
            continues)


def _generate(job) -> int:
    root, index, settings = job
    frames, actions, rewards, continues = coinrun_episode(index, settings)
    write_episode(episode_file(root, index), frames, actions, rewards=rewards,
                  continues=continues)
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
