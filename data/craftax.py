"""Craftax episodes (a JAX-native, Minecraft-like 2-D game) with sticky random actions, written in
the bring-your-own .npz format: the embedded Minecraft-style source when no VPT data is given.

Craftax-Classic (default) renders 63x63 RGB frames and takes 17 discrete actions; full Craftax
(`classic=False`) renders 130x110 and takes 43. Each episode is `episode_%06d.npz` with `frames`
uint8 [T, H, W, 3] (the game's [0, 1] pixels times 255, rounded) and `actions` int32 [T], where
`actions[t]` is taken after seeing `frames[t]`. An episode starts at a fresh world and ends when
the game does (the player dies; the frame after the last action is not stored) or after
`max_length` frames. Policy: at each step keep the previous action with probability
`repeat_probability`, else draw one uniformly (the first action is uniform), so the player walks
and mines in runs instead of jittering.

Randomness: episode k uses key = fold_in(key(seed), k); the world comes from fold_in(key, 0) and
step t uses split(fold_in(key, t + 1), 3) = (keep draw, fresh action draw, game step). So output
does not depend on how episodes are batched, and a repeated run keeps finished episodes
(`craftax.json` records the settings). Episodes run `batch` at a time in one process under
`jax.vmap` (the game is JAX code); `craftax` (`pip install craftax`) and JAX are imported only here.
"""

import dataclasses
import functools

import numpy as np

from data.episodes import episode_file, pending_episodes, write_episode
from data.jobs import Progress

SETTINGS_FILE = "craftax.json"
CRAFTAX_ACTIONS = {True: 17, False: 43}  # discrete actions, by `classic`
CRAFTAX_FRAME_SIZE = {True: (63, 63), False: (130, 110)}  # (H, W), by `classic`


@dataclasses.dataclass(frozen=True)
class CraftaxSettings:
    """What to generate: episode count, frames per episode at most, seed, game variant, and how
    often the random policy repeats its previous action."""

    episodes: int = 64
    max_length: int = 1000
    seed: int = 0
    classic: bool = True
    repeat_probability: float = 0.75


def craftax_env(classic: bool):
    """The pixel-observation game without automatic resets; ImportError names the install."""
    try:
        from craftax.craftax_env import make_craftax_env_from_params
    except ImportError as e:
        raise ImportError(
            f"the Craftax source needs craftax ({e}): pip install craftax "
            '(or pip install -e ".[craftax]")'
        ) from e
    return make_craftax_env_from_params(classic=classic, symbolic=False, auto_reset=False)


@functools.lru_cache(maxsize=4)
def _rollout(classic: bool, max_length: int, repeat_probability: float):
    """Compiled: episode indices int32 [B], seed -> (frames uint8 [B, L, H, W, 3], actions int32
    [B, L], done bool [B, L]) where done[t] says the game ended with actions[t]."""
    import jax
    import jax.numpy as jnp

    env = craftax_env(classic)
    params = env.default_params

    @jax.numpy_dtype_promotion("standard")  # the game's code needs JAX's default promotion
    @jax.numpy_rank_promotion("allow")  # rules, also when a caller made them strict
    def episode(seed, index):
        key = jax.random.fold_in(jax.random.key(seed), index)
        observation, state = env.reset(jax.random.fold_in(key, 0), params)

        def step(carry, t):
            observation, state, previous = carry
            keep_key, action_key, step_key = jax.random.split(jax.random.fold_in(key, t + 1), 3)
            fresh = jax.random.randint(action_key, (), 0, CRAFTAX_ACTIONS[classic])
            keep = (t > 0) & (jax.random.uniform(keep_key) < repeat_probability)
            action = jnp.where(keep, previous, fresh)
            next_observation, state, _, done, _ = env.step(step_key, state, action, params)
            frame = jnp.round(observation * 255).astype(jnp.uint8)
            return (next_observation, state, action), (frame, action, done)

        start = (observation, state, jnp.zeros((), jnp.int32))
        _, outputs = jax.lax.scan(step, start, jnp.arange(max_length))
        return outputs

    return jax.jit(jax.vmap(episode, in_axes=(None, 0)))


def generate_craftax(
    root: str, settings: CraftaxSettings, *, batch: int = 8, progress: bool = True
) -> str:
    """Writes the episodes under `root`, `batch` at a time (resumable); returns `root`.

    Raises ImportError naming the install if craftax is missing, and DataError if `root` holds
    episodes generated with other settings.
    """
    craftax_env(settings.classic)
    pending = pending_episodes(root, SETTINGS_FILE, dataclasses.asdict(settings), settings.episodes)
    rollout = _rollout(settings.classic, settings.max_length, settings.repeat_probability)
    bar = Progress("craftax episodes", settings.episodes, "episodes")
    bar.done = settings.episodes - len(pending)  # resumed
    for lo in range(0, len(pending), batch):
        indices = pending[lo : lo + batch]
        padded = np.resize(np.array(indices, np.int32), batch)  # one compiled shape
        frames, actions, done = (np.asarray(a) for a in rollout(settings.seed, padded))
        for row, index in enumerate(indices):
            ended = np.flatnonzero(done[row])
            length = int(ended[0]) + 1 if len(ended) else settings.max_length
            write_episode(episode_file(root, index), frames[row, :length], actions[row, :length])
        if progress:
            bar.update(len(indices))
    return root
