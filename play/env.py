"""The world model as a simulator: Gymnasium environments over KV-cached imagination.

    env = WorldModelEnv(world_model, contexts=load_contexts(workdir))
    obs, info = env.reset(seed=0)                  # obs: uint8 [H, W, 3]
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

`ImaginedWorlds` is the machinery: `batch` imagined worlds stepped together, one compiled call per
frame (the dynamics' `next_frame`: K denoising steps through the ring-buffer KV cache, then the
tokenizer's `decode_step` through its own ring-buffer cache), so a session runs indefinitely with
a window of `capacity` frames in both caches. Noise, prefill and cache window are those of
`world.imagine`: with the same key, context and actions the latents are the same, and the frames
are those of `world_model.decode` while the session is shorter than the window.

A reset starts from `context_frames` frames of a context clip (`Contexts`: frames and the actions
taken after them, dataset convention): they are encoded, written into the dynamics cache with
their own actions (the last one is replaced by the first action of the session), decoded through
the tokenizer's cache, and the decoded last context frame is the first observation. Without
contexts the first frame is imagined from nothing (no action), a sample of the model's prior.

`WorldModelEnv` (one world) and `WorldModelVectorEnv` (`num_envs` worlds in one batch, one key,
each world its own noise) follow Gymnasium's `Env` / `VectorEnv` API and spaces: observations are
uint8 frames; actions follow `world_model.action` (continuous: Box(-1, 1, (dim,)) as CALVIN's
relative actions; discrete: Discrete(n); multi-part: MultiDiscrete(classes)). Imagined episodes
never end (terminated and truncated are always False). The reward is always 0.0 until an agent
adds a reward head to the world model.
"""

import dataclasses
import functools
from typing import ClassVar

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector.utils import batch_space
from jaxtyping import Bool, Shaped, UInt8

from core import to_uint8
from dynamics import ActionSpec, align_actions
from dynamics.sampler import cache_window, next_frame, prefill
from tokenizer.stream import decode_frame
from world.model import Sampling


@dataclasses.dataclass(frozen=True)
class Contexts:
    """Clips to start from: frames uint8 [clips, time, H, W, 3], actions [clips, time, ...]
    (dataset convention) and has_action bool [clips, time]."""

    frames: UInt8[np.ndarray, "clips time height width 3"]
    actions: Shaped[np.ndarray, "clips time *action"]
    has_action: Bool[np.ndarray, "clips time"]

    def __len__(self) -> int:
        return len(self.frames)


def action_space(spec: ActionSpec) -> gym.Space:
    """One world's action space for a model's action layout."""
    if spec.kind == "continuous":
        return gym.spaces.Box(-1.0, 1.0, (spec.dim,), np.float32)
    if spec.kind == "discrete":
        return gym.spaces.Discrete(spec.classes[0])
    return gym.spaces.MultiDiscrete(np.asarray(spec.classes, np.int64))


def observation_space(image_size: tuple[int, int]) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, (*image_size, 3), np.uint8)


def check_actions(spec: ActionSpec, actions, batch: int) -> np.ndarray:
    """`batch` actions as the model takes them (float32 or int32); ValueError says what is off."""
    shape = (batch, spec.dim) if spec.kind == "continuous" else (
        (batch,) if spec.kind == "discrete" else (batch, len(spec.classes)))
    array = np.asarray(actions)
    if array.shape != shape or not (np.issubdtype(array.dtype, np.number)
                                    or array.dtype == bool):
        raise ValueError(f"{spec.kind} actions must be numbers of shape {shape} for this model, "
                         f"got shape {array.shape} ({array.dtype}).")
    if spec.kind == "continuous":
        if not np.isfinite(array).all():
            raise ValueError("continuous actions must be finite.")
        return array.astype(np.float32)
    if not np.array_equal(array, np.round(array)):
        raise ValueError(f"{spec.kind} actions must be whole numbers, got {array.tolist()}.")
    highs = np.asarray(spec.classes)
    if (array < 0).any() or (array >= highs).any():
        raise ValueError(f"{spec.kind} actions must lie in 0..classes-1 (classes "
                         f"{spec.classes}), got {array.tolist()}.")
    return array.astype(np.int32)


@functools.partial(jax.jit, donate_argnames=("caches", "decoder_caches"),
                   static_argnames=("steps", "context_signal", "guidance"))
def _next(dynamics, tokenizer, caches, decoder_caches, action, has_action, key, index, *,
          steps: int, context_signal: float, guidance: float):
    """Frame `index`: (latents, uint8 image, caches, decoder caches)."""
    z, _, caches = next_frame(dynamics, caches, action[:, None], has_action[:, None], key, index,
                              steps=steps, context_signal=context_signal, guidance=guidance)
    latents = dynamics.denormalise(z)
    image, decoder_caches = decode_frame(tokenizer, latents, decoder_caches)
    return latents, to_uint8(image), caches, decoder_caches


class ImaginedWorlds:
    """`batch` imagined worlds of `world_model` (see the module doc). `steps` (K, sampling steps
    per frame) may change between frames; `frames` counts the frames so far, context included.
    `steps`, `context_signal` and `guidance` default to the world model's `sampling`."""

    def __init__(self, world_model, batch: int = 1, *, steps: int | None = None,
                 capacity: int = 16, context_frames: int = 8,
                 context_signal: float | None = None, guidance: float | None = None):
        sampling = getattr(world_model, "sampling", Sampling()).override(steps, context_signal,
                                                                         guidance)
        self.world_model, self.batch = world_model, batch
        self.steps, self.context_signal = sampling.steps, sampling.context_signal
        self.guidance = sampling.guidance
        self.spec: ActionSpec = world_model.action
        self.capacity, self.context_frames = capacity, context_frames
        cache_window(world_model.dynamics, max(context_frames, 1), capacity + 1, self.steps,
                     capacity)
        self.frames, self.key, self.latents = 0, jax.random.key(0), None
        self._caches = self._decoder_caches = None

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        k_max = self.world_model.dynamics.config.k_max
        if not 1 <= value <= k_max:
            raise ValueError(f"sampling steps must be in 1..k_max={k_max}, got {value}.")
        self._steps = int(value)

    def _fresh_caches(self):
        self._caches = self.world_model.dynamics.init_caches(self.batch, self.capacity)
        self._decoder_caches = self.world_model.tokenizer.init_caches(self.batch, self.capacity)

    def start(
        self,
        key,
        frames: UInt8[np.ndarray, "batch context height width 3"] | None = None,
        actions: Shaped[np.ndarray, "batch context *action"] | None = None,
        has_action: Bool[np.ndarray, "batch context"] | None = None,
    ) -> UInt8[np.ndarray, "batch height width 3"]:
        """A new session with sampling key `key`: from context `frames` uint8 [batch, C, H, W, 3]
        with their `actions` and `has_action` (dataset convention), or from nothing. Returns the
        first observations uint8 [batch, H, W, 3]."""
        self.key = key
        self._fresh_caches()
        if frames is None:
            self.frames = 0
            return self.step(np.zeros((self.batch, *self._action_shape), self._action_dtype),
                             has_action=False)
        model = self.world_model.dynamics
        latents = self.world_model.encode(jnp.asarray(frames))
        count = latents.shape[1]
        _, first = cache_window(model, count, count + 1, self.steps, self.capacity)
        aligned, known = align_actions(jnp.asarray(actions), jnp.asarray(has_action))
        _, self._caches = prefill(model, self._caches, model.normalise(latents[:, first:]),
                                  aligned[:, first:], known[:, first:], key,
                                  jnp.asarray(first, jnp.int32),
                                  context_signal=self.context_signal)
        for t in range(count):
            image, self._decoder_caches = decode_frame(self.world_model.tokenizer, latents[:, t],
                                                       self._decoder_caches)
        self.frames, self.latents = count, latents[:, -1]
        return np.asarray(to_uint8(image))

    def step(self, actions, *,
             has_action: bool = True) -> UInt8[np.ndarray, "batch height width 3"]:
        """One more frame for every world, given `batch` actions (checked with `check_actions`);
        returns uint8 [batch, H, W, 3]."""
        actions = check_actions(self.spec, actions, self.batch)
        if self._caches is None:
            raise RuntimeError("call reset (start) before step.")
        self.latents, image, self._caches, self._decoder_caches = _next(
            self.world_model.dynamics, self.world_model.tokenizer, self._caches,
            self._decoder_caches, jnp.asarray(actions), jnp.full((self.batch,), has_action),
            self.key, jnp.asarray(self.frames, jnp.int32), steps=self.steps,
            context_signal=self.context_signal, guidance=self.guidance)
        self.frames += 1
        return np.asarray(image)

    @property
    def _action_shape(self) -> tuple[int, ...]:
        spec = self.spec
        return (spec.dim,) if spec.kind == "continuous" else (
            () if spec.kind == "discrete" else (len(spec.classes),))

    @property
    def _action_dtype(self):
        return np.float32 if self.spec.kind == "continuous" else np.int32

    @property
    def context_length(self) -> int:
        """Frames the dynamics model attends to for the next frame (at most capacity - 1)."""
        return min(self.frames, self.capacity - 1)


def _pick_clips(contexts: Contexts | None, options: dict | None, rng: np.random.Generator,
                count: int) -> list[int] | None:
    if contexts is None:
        return None
    clips = (options or {}).get("clips")
    if clips is None and (options or {}).get("clip") is not None:
        clips = [options["clip"]] * count
    if clips is None:
        return [int(c) for c in rng.integers(len(contexts), size=count)]
    clips = [int(c) for c in clips]
    if len(clips) != count or not all(0 <= c < len(contexts) for c in clips):
        raise ValueError(f"options clip(s) {clips}: need {count} clip index(es) in "
                         f"0..{len(contexts) - 1}.")
    return clips


def _start(worlds: ImaginedWorlds, contexts: Contexts | None, clips: list[int] | None, seed,
           rng: np.random.Generator) -> np.ndarray:
    """Starts `worlds` with key `jax.random.key(seed)` (drawn from `rng` without a seed)."""
    seed = int(rng.integers(2**31 - 1)) if seed is None else int(seed)
    key = jax.random.key(seed)
    if clips is None:
        return worlds.start(key)
    c = worlds.context_frames
    return worlds.start(key, contexts.frames[clips, :c], contexts.actions[clips, :c],
                        contexts.has_action[clips, :c])


def _check_contexts(contexts: Contexts | None, world_model, context_frames: int) -> None:
    if contexts is None:
        return
    if contexts.frames.shape[1] < context_frames or len(contexts) < 1:
        raise ValueError(f"contexts hold {len(contexts)} clips of {contexts.frames.shape[1]} "
                         f"frames; need at least one clip of context_frames={context_frames}.")
    if tuple(contexts.frames.shape[2:4]) != tuple(world_model.image_size):
        raise ValueError(f"context frames are {contexts.frames.shape[2:4]}, the model's "
                         f"tokenizer takes {world_model.image_size}.")


class WorldModelEnv(gym.Env):
    """One imagined world as a Gymnasium environment (see the module doc). The reward is always
    0.0 until an agent adds a reward head to the world model; episodes never terminate.

    reset(seed=s) samples with key `jax.random.key(s)`; options {"clip": i} picks context clip i
    (default: a random clip). `steps` (K) may change between steps; `info` holds the frame count,
    the context length in frames and the clip."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}

    def __init__(self, world_model, *, contexts: Contexts | None = None,
                 steps: int | None = None, capacity: int = 16, context_frames: int = 8,
                 context_signal: float | None = None, guidance: float | None = None):
        _check_contexts(contexts, world_model, context_frames)
        self.world_model, self.contexts = world_model, contexts
        self.worlds = ImaginedWorlds(world_model, 1, steps=steps, capacity=capacity,
                                     context_frames=context_frames,
                                     context_signal=context_signal, guidance=guidance)
        self.observation_space = observation_space(world_model.image_size)
        self.action_space = action_space(world_model.action)
        self.render_mode = "rgb_array"
        self.clip: int | None = None
        self._last: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return self.worlds.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.worlds.steps = value

    def _info(self) -> dict:
        return {"frames": self.worlds.frames, "context_length": self.worlds.context_length,
                "clip": self.clip, "steps": self.steps}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        clips = _pick_clips(self.contexts, options, self.np_random, 1)
        self.clip = None if clips is None else clips[0]
        self._last = _start(self.worlds, self.contexts, clips, seed, self.np_random)[0]
        return self._last, self._info()

    def step(self, action):
        self._last = self.worlds.step(np.asarray(action)[None])[0]
        return self._last, 0.0, False, False, self._info()

    def render(self) -> np.ndarray | None:
        return self._last


class WorldModelVectorEnv(gym.vector.VectorEnv):
    """`num_envs` imagined worlds stepped in one batch (Gymnasium's VectorEnv API): one sampling
    key for the batch (`jax.random.key(seed)`), each world its own noise. options {"clips":
    [...]} picks each world's context clip (default: random). Rewards are always 0.0 until an
    agent adds a reward head; episodes never end, so there is no autoreset."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"],
                                "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, world_model, num_envs: int, *, contexts: Contexts | None = None,
                 steps: int | None = None, capacity: int = 16, context_frames: int = 8,
                 context_signal: float | None = None, guidance: float | None = None):
        _check_contexts(contexts, world_model, context_frames)
        self.world_model, self.contexts, self.num_envs = world_model, contexts, num_envs
        self.worlds = ImaginedWorlds(world_model, num_envs, steps=steps, capacity=capacity,
                                     context_frames=context_frames,
                                     context_signal=context_signal, guidance=guidance)
        self.single_observation_space = observation_space(world_model.image_size)
        self.single_action_space = action_space(world_model.action)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.clips: list[int] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.clips = _pick_clips(self.contexts, options, self.np_random, self.num_envs)
        observations = _start(self.worlds, self.contexts, self.clips, seed, self.np_random)
        return observations, {"clips": self.clips}

    def step(self, actions):
        observations = self.worlds.step(actions)
        never = np.zeros(self.num_envs, bool)
        return observations, np.zeros(self.num_envs, np.float32), never, never.copy(), {}
