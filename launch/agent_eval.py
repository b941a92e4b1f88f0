"""The agent_eval stage: the behaviour-cloned and the imagination-RL policies closed-loop in the
real embedded simulator, judged by the task's success detector (data/sim_tasks.py).

Per episode: a fresh scene from the seed (config.seed, 2, episode) (the simulator's training
and validation episodes use 0 and 1), then `config.agent.eval_frames` frames at the data's rate:
each frame is rendered at `data.sim_render_size`, resized to the model's frame size as the clips
were, encoded by the tokenizer frame by frame (KV caches), written into the dynamics model's KV
cache as a context frame with the action that led to it, and the policy head samples the next
action from that frame's agent-token features; the action is held for `data.sim_frame_skip`
control steps. An episode succeeds at the first control step whose state makes the task's
condition true (it stops there). `eval_batch` simulators run in lockstep, so the model runs
batched. Both policies see the same scenes and keys.

Writes eval/agent_summary.json: `results`, one entry per environment and task,
{"env": "sim", "task", "metric": "success", "bc": {"mean", "stderr", "episodes"}, "rl": {...},
"imagined_rl_return"} (stderr = sqrt(p (1 - p) / n)), and eval/agent_{bc,rl}_<i>.mp4|gif, the
first `eval_videos` episodes of each policy.
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


def run_episodes(config, tokenizer, dynamics: Dynamics, heads: AgentHeads, sims, *,
                 what: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(success per episode, bool [episodes]; frames of the first `eval_videos` episodes)."""
    a, data = config.agent, config.data
    size = settings.image_size(config)
    window = settings.attention_window(config)
    episodes = a.eval_episodes
    spec = dynamics.config.action
    action_shape = (spec.dim,) if spec.kind == "continuous" else (
        () if spec.kind == "discrete" else (len(spec.classes),))
    success, videos = np.zeros(episodes, bool), []
    progress = Progress(f"[agent_eval] {what}", episodes, "episodes")
    for first in range(0, episodes, len(sims)):
        batch = min(len(sims), episodes - first)
        active = sims[:batch]
        for k, sim in enumerate(active):
            sim.reset(np.random.default_rng((config.seed, EVAL_SPLIT, first + k)))
        held = np.array([sim_tasks.success(a.task, sim_state(sim)) for sim in active])
        done = np.zeros(batch, bool)
        frames = np.stack([resize_frames(sim.render(), size) for sim in active])
        tok_caches = tokenizer.init_caches(batch, window)
        caches = dynamics.init_caches(batch, window)
        previous = jnp.zeros((batch, *action_shape), jnp.float32 if spec.kind == "continuous"
                             else jnp.int32)
        recorded = [frames]
        for t in range(a.eval_frames):
            key = jax.random.fold_in(jax.random.key(config.seed), first * 100_003 + t)
            latents, tok_caches = encode_frame(tokenizer, jnp.asarray(frames), tok_caches)
            features, caches = observe(dynamics, caches, latents, previous,
                                       jnp.full((batch,), t > 0), key, jnp.asarray(t, jnp.int32))
            previous = act(heads, features["agent"], jax.random.fold_in(key, 1))
            action = np.asarray(previous)
            for k, sim in enumerate(active):
                for _ in range(data.sim_frame_skip):
                    if done[k]:
                        break
                    sim.step(action[k])
                    now = sim_tasks.success(a.task, sim_state(sim))
                    done[k] |= bool(now and not held[k])
                    held[k] = now
            frames = np.stack([resize_frames(sim.render(), size) if not done[k] else frames[k]
                               for k, sim in enumerate(active)])
            recorded.append(frames)
            if done.all():
                break
        success[first:first + batch] = done
        clip = np.stack(recorded, axis=1)
        videos += [clip[k] for k in range(batch)][:max(a.eval_videos - len(videos), 0)]
        progress.update(batch)
    return success, videos


def summary_of(success: np.ndarray) -> dict:
    p, n = float(np.mean(success)), len(success)
    return {"mean": p, "stderr": float(np.sqrt(p * (1.0 - p) / n)), "episodes": n}


def agent_eval_stage(config, work: Workdir, mesh) -> dict:
    del mesh
    from data.sim import TabletopSim  # pybullet is needed here only

    tokenizer = load_tokenizer(model_folder(work.root, "tokenizer"))
    dynamics = load_dynamics(agent_folder(work, AGENT, "dynamics"))
    policies = {"bc": load_heads(agent_folder(work, AGENT, "heads")),
                "rl": load_heads(agent_folder(work, AGENT_RL, "heads"))}
    sims = [TabletopSim(config.data.sim_render_size) for _ in range(config.agent.eval_batch)]
    entry = {"env": "sim", "task": config.agent.task, "metric": "success"}
    try:
        for name, heads in policies.items():
            success, videos = run_episodes(config, tokenizer, dynamics, heads, sims, what=name)
            entry[name] = summary_of(success)
            for i, clip in enumerate(videos):
                report.write_videos(os.path.join(work.eval, f"agent_{name}_{i}"), clip.repeat(
                    2, axis=1).repeat(2, axis=2))
    finally:
        for sim in sims:
            sim.close()
    with open(os.path.join(work.models, AGENT_RL, "rl_metrics.json")) as f:
        entry["imagined_rl_return"] = json.load(f)["final"]["imagined_return"]
    summary = {"results": [entry], "eval_frames": config.agent.eval_frames,
               "seed": config.seed}
    path = os.path.join(work.eval, "agent_summary.json")
    write_json(path, summary)
    for name in policies:
        r = entry[name]
        print(f"[agent_eval] {name}: {config.agent.task} success {r['mean']:.3f} +- "
              f"{r['stderr']:.3f} over {r['episodes']} episodes", flush=True)
    print(f"[agent_eval] wrote {path}", flush=True)
    return summary
