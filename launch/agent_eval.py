"""The agent_eval stage: the behaviour-cloned and the imagination-RL policies closed-loop in the
real environment the data came from: the embedded simulator (`data.format` "sim"), judged by the
task's success detector (data/sim_tasks.py), or procgen CoinRun ("coinrun"), judged by its return.

Simulator episodes: a fresh scene from the seed (config.seed, 2, episode) (the simulator's
training and validation episodes use 0 and 1), rendered at `data.sim_render_size`; each action is
held for `data.sim_frame_skip` control steps; an episode succeeds at the first control step whose
state makes the task's condition true (it stops there). CoinRun episodes: `CoinRunEpisodes`
below says which levels; an episode ends with the game. Either way, for up to
`config.agent.eval_frames` frames: each frame is resized to the model's frame size as the clips
were, encoded by the tokenizer frame by frame (KV caches), written into the dynamics model's KV
cache as a context frame with the action that led to it, and the policy head samples the next
action from that frame's agent-token features. `eval_batch` environments run in lockstep, so the
model runs batched. Both policies see the same scenes and keys.

Writes eval/agent_summary.json: `results`, one entry per environment and task,
{"env": "sim" | "coinrun", "task", "metric": "success" | "return", "bc": {"mean", "stderr",
"episodes"}, "rl": {...}, "imagined_rl_return"} (stderr: `summary_of`), and
eval/agent_{bc,rl}_<i>.mp4|gif, the first `eval_videos` episodes of each policy.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from agent.heads import AgentHeads, load_heads
from core.transformer import make_room
from data import sim_tasks
from data.calvin import CALVIN_STATE_INDICES
from data.clips import write_json
from data.images import resize_frames
from data.jobs import Progress
from dynamics import Dynamics
from dynamics.sampler import prefill
from launch import report, settings
from launch.agent_stages import AGENT, AGENT_RL, agent_folder
from launch.stages import Workdir
from tokenizer.stream import encode_frame
from world.model import load_dynamics, load_tokenizer, model_folder

EVAL_SPLIT = 2  # the seed's split index for agent evaluation scenes


@functools.partial(jax.jit, donate_argnums=1, static_argnames=("context_signal",))
def observe(model: Dynamics, caches, latents, action, has_action, key, frame, *,
            context_signal: float = 0.9):
    """Writes one real frame's latents [batch, latents, dim] (with the action that led to it)
    into the caches, sliding the window when full; returns (its features per group, caches)."""
    caches = make_room(caches, 1)
    return prefill(model, caches, model.normalise(latents[:, None]), action[:, None],
                   has_action[:, None], key, frame, context_signal=context_signal)


@jax.jit
def act(heads: AgentHeads, features, key):
    return heads.act(features).sample(key)


def sim_state(sim) -> np.ndarray:
    return np.concatenate([sim.robot_obs(), sim.scene_obs()])[list(CALVIN_STATE_INDICES)]


class SimEpisodes:
    """`batch` scenes of the embedded simulator in lockstep; an episode's score is 1 when the
    task's condition became true for one more block than before (it stops there), else 0."""

    env, metric = "sim", "success"

    def __init__(self, config, batch: int):
        from data.sim import TabletopSim  # pybullet is needed here only

        self.config, self.size = config, settings.image_size(config)
        self.task = config.agent.task
        self.sims = [TabletopSim(config.data.sim_render_size) for _ in range(batch)]

    def reset(self, episodes: range) -> np.ndarray:
        """Fresh scenes for `episodes` (seeded by (seed, EVAL_SPLIT, episode)); their frames."""
        self.active = self.sims[:len(episodes)]
        for episode, sim in zip(episodes, self.active, strict=True):
            sim.reset(np.random.default_rng((self.config.seed, EVAL_SPLIT, episode)))
        self.held = np.array([sim_tasks.satisfied(self.task, sim_state(sim))
                              for sim in self.active])
        self.done = np.zeros(len(episodes), bool)
        self.score = np.zeros(len(episodes))
        self.frames = np.stack([resize_frames(sim.render(), self.size) for sim in self.active])
        return self.frames

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Each running scene holds its action for `sim_frame_skip` control steps."""
        for k, sim in enumerate(self.active):
            for _ in range(self.config.data.sim_frame_skip):
                if self.done[k]:
                    break
                sim.step(actions[k])
                now = sim_tasks.satisfied(self.task, sim_state(sim))
                self.done[k] |= bool(now > self.held[k])
                self.held[k] = now
        self.score = self.done.astype(np.float64)
        self.frames = np.stack([self.frames[k] if self.done[k] else
                                resize_frames(sim.render(), self.size)
                                for k, sim in enumerate(self.active)])
        return self.frames

    def close(self) -> None:
        for sim in self.sims:
            sim.close()


class CoinRunEpisodes:
    """`batch` procgen CoinRun games in lockstep; an episode's score is its return (procgen's
    reward: 10 for reaching the coin) until the game ends (coin, death, time limit) or
    `eval_frames` frames. Episode k plays the level the data generator gives episode k: with a
    level pool (`data.coinrun_levels` L > 0) the pool's level k mod L, the levels the world model
    was trained on (its held-out clips replay them too); with one level per episode, the level
    of a generator seeded by (seed, EVAL_SPLIT, k): levels no training episode played."""

    env, metric = "coinrun", "return"

    def __init__(self, config, batch: int):
        from data.coinrun import CoinRunSettings, make_env

        self.config, self.size, self.make_env = config, settings.image_size(config), make_env
        self.levels = CoinRunSettings(seed=config.seed, levels=config.data.coinrun_levels)
        self.games = []

    def level(self, episode: int) -> int:
        if self.levels.levels:
            return self.levels.pool_level(episode)
        return int(np.random.default_rng((self.config.seed, EVAL_SPLIT, episode)
                                         ).integers(2**31 - 1))

    def reset(self, episodes: range) -> np.ndarray:
        self.close()
        self.games = [self.make_env(self.level(episode)) for episode in episodes]
        self.done = np.zeros(len(episodes), bool)
        self.score = np.zeros(len(episodes))
        self.frames = np.stack([resize_frames(game.observe()[1]["rgb"][0], self.size)
                                for game in self.games])
        return self.frames

    def step(self, actions: np.ndarray) -> np.ndarray:
        frames = self.frames.copy()
        for k, game in enumerate(self.games):
            if self.done[k]:
                continue
            game.act(np.asarray(actions[k:k + 1], np.int32))
            reward, observation, first = game.observe()
            self.score[k] += float(reward[0])
            self.done[k] = bool(first[0])  # the game ended; the new frame is the next game's
            if not self.done[k]:
                frames[k] = resize_frames(observation["rgb"][0], self.size)
        self.frames = frames
        return frames

    def close(self) -> None:
        for game in self.games:
            game.close()
        self.games = []


ENVIRONMENTS = {"sim": SimEpisodes, "coinrun": CoinRunEpisodes}  # by config.data.format


def run_episodes(config, tokenizer, dynamics: Dynamics, heads: AgentHeads, env, *,
                 what: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(score per episode, float [episodes]; frames of the first `eval_videos` episodes)."""
    a = config.agent
    window = settings.attention_window(config)
    episodes = a.eval_episodes
    spec = dynamics.config.action
    action_shape = (spec.dim,) if spec.kind == "continuous" else (
        () if spec.kind == "discrete" else (len(spec.classes),))
    scores, videos = np.zeros(episodes), []
    progress = Progress(f"[agent_eval] {what}", episodes, "episodes")
    for first in range(0, episodes, a.eval_batch):
        batch = min(a.eval_batch, episodes - first)
        frames = env.reset(range(first, first + batch))
        tok_caches = tokenizer.init_caches(batch, window)
        caches = dynamics.init_caches(batch, window)
        previous = jnp.zeros((batch, *action_shape), jnp.float32 if spec.kind == "continuous"
                             else jnp.int32)
        recorded = [frames]
        for t in range(a.eval_frames):
            key = jax.random.fold_in(jax.random.key(config.seed), first * 100_003 + t)
            latents, tok_caches = encode_frame(tokenizer, jnp.asarray(frames), tok_caches)
            features, caches = observe(dynamics, caches, latents, previous,
                                       jnp.full((batch,), t > 0), key, jnp.asarray(t, jnp.int32),
                                       context_signal=config.eval.context_signal)
            previous = act(heads, features["agent"], jax.random.fold_in(key, 1))
            frames = env.step(np.asarray(previous))
            recorded.append(frames)
            if env.done.all():
                break
        scores[first:first + batch] = env.score
        clip = np.stack(recorded, axis=1)
        videos += [clip[k] for k in range(batch)][:max(a.eval_videos - len(videos), 0)]
        progress.update(batch)
    return scores, videos


def summary_of(scores: np.ndarray) -> dict:
    """Mean, its standard error sqrt(var / n) (population variance: sqrt(p (1 - p) / n) for
    success rates) and the episode count."""
    scores = np.asarray(scores, np.float64)
    return {"mean": float(np.mean(scores)), "stderr": float(np.sqrt(np.var(scores) / len(scores))),
            "episodes": len(scores)}


def agent_eval_stage(config, work: Workdir, mesh) -> dict:
    del mesh
    tokenizer = load_tokenizer(model_folder(work.root, "tokenizer"))
    dynamics = load_dynamics(agent_folder(work, AGENT, "dynamics"))
    policies = {"bc": load_heads(agent_folder(work, AGENT, "heads")),
                "rl": load_heads(agent_folder(work, AGENT_RL, "heads"))}
    env = ENVIRONMENTS[config.data.format](config, config.agent.eval_batch)
    entry = {"env": env.env, "task": config.agent.task, "metric": env.metric}
    try:
        for name, heads in policies.items():
            scores, videos = run_episodes(config, tokenizer, dynamics, heads, env, what=name)
            entry[name] = summary_of(scores)
            for i, clip in enumerate(videos):
                report.write_videos(os.path.join(work.eval, f"agent_{name}_{i}"), clip.repeat(
                    2, axis=1).repeat(2, axis=2))
    finally:
        env.close()
    with open(os.path.join(work.models, AGENT_RL, "rl_metrics.json")) as f:
        entry["imagined_rl_return"] = json.load(f)["final"]["imagined_return"]
    summary = {"results": [entry], "eval_frames": config.agent.eval_frames,
               "seed": config.seed}
    path = os.path.join(work.eval, "agent_summary.json")
    write_json(path, summary)
    for name in policies:
        r = entry[name]
        print(f"[agent_eval] {name}: {config.agent.task} {env.metric} {r['mean']:.3f} +- "
              f"{r['stderr']:.3f} over {r['episodes']} episodes", flush=True)
    print(f"[agent_eval] wrote {path}", flush=True)
    return summary
