"""The agent stages: finetuning and imagination RL on a finished main run (not in the default
`config.stages`; run them with `--config.stages=agent_finetune,agent_rl,agent_eval`).

agent_finetune  latents + models/dynamics -> models/agent/{dynamics,heads}: the dynamics model
                with `config.agent.agent_tokens` agent tokens and the policy / reward / value
                heads, trained by `agent.finetune` (behaviour cloning, rewards and, with
                `finetune_value`, the value of the data's returns, beside the video loss, every
                term RMS-normalised) for `finetune_steps`; then the eval's
                rollout metrics of the world model before and after, `eval/agent_world_model.json`
                (finetuning must not make the world model worse)
agent_rl        models/agent + latents -> models/agent_rl/heads: the transformer frozen, PMPO on
                rollouts imagined from training contexts with the policy acting
                (`agent.imagination`), `rl_iterations` updates of the policy head (and of the
                value head with `rl_train_value`)
agent_eval      see launch/agent_eval.py: both policies closed-loop in the real environment
                (the embedded simulator or procgen CoinRun)

Rewards: the batches' own `rewards` where the data has them (`.npz` episodes, CoinRun: procgen's
reward; `config.agent.task` then only names the task), else the dense reward of
`config.agent.task`'s success detector on the clips' states (data/sim_tasks.py: 1 for every step
into a state where the task's condition holds; the embedded simulator and CALVIN);
continuous policies live in the box of the training actions (per dimension, min and max of the
training data).
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter

from agent.finetune import TERMS, Agent, finetune_loss, returns_to_go
from agent.heads import AgentHeads, HeadsConfig, load_heads, save_heads
from agent.imagination import RLSettings, imagine_with_policy, rl_loss
from core.training import init_state, make_train_step
from data import sim_tasks
from data.clips import ClipStore, write_json
from data.jobs import Progress
from launch import settings
from launch.evaluate import EvalContext
from launch.evaluators import rollout_evaluator
from launch.stages import Workdir, _loader, bootstrap_rows, check_action_classes
from launch.trainer import make_optimizer, train
from world.model import load_dynamics, model_folder, save_part

AGENT, AGENT_RL = "agent", "agent_rl"  # folders under <workdir>/models
EVAL_ENVIRONMENTS = ("sim", "coinrun")  # data formats whose real environment agent_eval runs
STATE_SOURCES = ("sim", "calvin")  # formats whose clips carry the states the tasks read


def agent_problems(config, device_count: int) -> list[str]:
    """config.agent problems (checked for every run: a config describes the whole run)."""
    del device_count
    a, found = config.agent, []
    if a.task not in sim_tasks.TASKS and config.data.format in STATE_SOURCES:
        found.append(f"config.agent.task: unknown task {a.task!r}; tasks are {sim_tasks.TASKS} "
                     "(data/sim_tasks.py).")
    counts = ("agent_tokens", "hidden", "mtp", "finetune_steps", "rl_iterations", "rl_batch",
              "rl_context", "rl_horizon", "eval_episodes", "eval_frames", "eval_batch")
    bad = [name for name in counts if a[name] < 1]
    if bad or a.action_bins < 2 or a.eval_videos < 0:
        found.append(f"config.agent: {', '.join(bad) or 'these counts'} must be >= 1, "
                     f"action_bins >= 2 and eval_videos >= 0.")
    if not 1 <= a.rl_steps <= config.dynamics.k_max:
        found.append(f"config.agent.rl_steps must be in 1..config.dynamics.k_max "
                     f"({config.dynamics.k_max}), got {a.rl_steps}.")
    if not (0 < a.gamma <= 1 and 0 <= a.lam <= 1 and 0 <= a.alpha <= 1 and a.beta >= 0
            and a.finetune_lr > 0 and a.rl_lr > 0):
        found.append("config.agent: gamma in (0, 1], lam and alpha in [0, 1], beta >= 0 and the "
                     "learning rates > 0.")
    rows = config.train.dynamics.batch - bootstrap_rows(config.train.dynamics)
    if not 0 <= a.context_rows <= rows:
        found.append(f"config.agent.context_rows must be in 0..{rows} (the batch's rows less its "
                     f"bootstrap rows), got {a.context_rows}.")
    if a.reward_decode not in ("mode", "mean"):
        found.append(f"config.agent.reward_decode must be 'mode' or 'mean', got "
                     f"{a.reward_decode!r}.")
    selected = [s.strip() for s in config.stages.split(",")]
    if "agent_eval" in selected and config.data.format not in EVAL_ENVIRONMENTS:
        found.append(f"config.stages: agent_eval runs the policies in the real environment of "
                     f"the data, which exists for config.data.format in {EVAL_ENVIRONMENTS} "
                     f"(got {config.data.format!r}).")
    if any(s.startswith("agent") for s in selected) and jax.process_count() > 1:
        found.append("config.stages: the agent stages run on one host.")
    return found


def agent_folder(work: Workdir, name: str, part: str) -> str:
    return os.path.join(work.models, name, part)


def action_box(latents: ClipStore) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-dimension min and max of the known training actions (continuous actions)."""
    low = high = None
    for name, _ in latents.shards("train"):
        shard = latents.read_shard("train", name)
        known = np.asarray(shard["actions"])[np.asarray(shard["has_action"])]
        if len(known):
            low = known.min(0) if low is None else np.minimum(low, known.min(0))
            high = known.max(0) if high is None else np.maximum(high, known.max(0))
    if low is None:
        raise settings.ConfigError(f"{latents.folder}: the training clips have no actions; an "
                                   "agent needs actions to clone.")
    high = np.where(high > low, high, low + 1e-3)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def heads_config(config, dynamics_config, latents: ClipStore) -> HeadsConfig:
    a = config.agent
    box = action_box(latents) if dynamics_config.action.kind == "continuous" else ((), ())
    return HeadsConfig(dynamics_config.action, agent_tokens=a.agent_tokens,
                       width=dynamics_config.width, hidden=a.hidden, mtp=a.mtp,
                       action_bins=a.action_bins, action_low=box[0], action_high=box[1])


def finetune_train_config(config) -> ml_collections.ConfigDict:
    """config.train.dynamics with the agent's steps and learning rate (AdamW)."""
    train_config = ml_collections.ConfigDict(config.train.dynamics.to_dict())
    steps = config.agent.finetune_steps
    train_config.update(dict(steps=steps, lr=config.agent.finetune_lr, optimizer="adamw",
                             warmup_steps=min(50, steps // 10), decay_steps=steps // 5,
                             checkpoint_every=max(steps // 4, 1),
                             log_every=min(train_config.log_every, steps)))
    return train_config


def with_task_rewards(batch: dict, task: str) -> dict:
    """The batch with `rewards` [B, T], the task's dense reward on its states (unless the data
    already gave rewards)."""
    if "rewards" in batch:
        return batch
    if task not in sim_tasks.TASKS:
        raise settings.ConfigError(
            f"config.agent.task={task!r} takes its rewards from the data, but the latent shards "
            "hold none: give the `.npz` episodes `rewards` (CoinRun folders written before "
            "rewards were recorded: generate the source again), then --restart=latents; or use a "
            f"task that reads the clips' states, {sim_tasks.TASKS}.")
    if "states" not in batch:
        raise settings.ConfigError(
            f"config.agent.task={task!r} computes rewards from the clips' states, but the latent "
            "shards hold none: the source has no states (give `.npz` episodes `rewards`), or the "
            "latents were encoded before they carried states (--restart=latents).")
    states = np.asarray(batch["states"])
    rewards = np.stack([sim_tasks.rewards(task, row, dense=True) for row in states])
    return dict(batch, rewards=jnp.asarray(rewards))


def agent_finetune_stage(config, work: Workdir, mesh) -> None:
    a = config.agent
    dynamics = load_dynamics(model_folder(work.root, "dynamics"), strict=False,
                             agent_tokens=a.agent_tokens)
    latents = ClipStore(work.latents)
    check_action_classes(latents, dynamics.config.action)
    heads = AgentHeads(heads_config(config, dynamics.config, latents),
                       key=jax.random.key(config.seed + 10))
    train_config = finetune_train_config(config)
    optimizer = make_optimizer(train_config)
    state = init_state(Agent(dynamics, heads), optimizer,
                       loss_state={name: jnp.zeros((), jnp.float32) for name in TERMS})
    objective = config.train.dynamics  # the main run's: finetuning keeps training it
    loss = functools.partial(finetune_loss, value_from_data=a.finetune_value, gamma=a.gamma,
                             lam=a.lam, context_rows=a.context_rows,
                             context_signal=config.eval.context_signal,
                             twin_signal=objective.twin_signal,
                             noise_fraction=objective.noise_fraction)
    step = make_train_step(loss, optimizer, static_argnames=("bootstrap_rows",))
    rows = bootstrap_rows(train_config)

    def step_fn(state, batch, key):
        return step(state, with_task_rewards(batch, a.task), key, bootstrap_rows=rows)

    def export(agent: Agent, step_count: int, *, overwrite: bool) -> None:
        folder = agent_folder(work, AGENT, "heads")
        if not overwrite and os.path.isfile(os.path.join(folder, "header.json")):
            return
        save_part(agent_folder(work, AGENT, "dynamics"), agent.dynamics, step=step_count)
        save_heads(folder, agent.heads, step=step_count)
        print(f"[agent_finetune] saved the agent to {os.path.dirname(folder)}", flush=True)

    extra = data_returns(latents, a.gamma) if a.finetune_value else None
    train("agent_finetune", work.root, state, step_fn,
          _loader(config, work.latents, train_config, extra=extra), train_config, mesh,
          key=jax.random.key(config.seed + 11), export=export)
    if not os.path.isfile(os.path.join(work.eval, "agent_world_model.json")):
        compare_world_models(config, work)


def data_returns(latents: ClipStore, gamma: float) -> dict[str, np.ndarray] | None:
    """{"returns": the training clips' returns-to-go (`agent.finetune.returns_to_go`)} when
    the latent shards hold rewards and episode ends, else None (the value then learns from
    bootstrapped window returns alone)."""
    shards = [latents.read_shard("train", name) for name, _ in latents.shards("train")]
    if not all("rewards" in s and "continues" in s for s in shards):
        return None
    rewards = np.concatenate([s["rewards"] for s in shards])
    continues = np.concatenate([s["continues"] for s in shards])
    returns = returns_to_go(rewards, continues, latents.ids("train"), gamma=gamma)
    print(f"[agent_finetune] value targets: the episode's return-to-go for "
          f"{np.mean(~np.isnan(returns)):.0%} of the training frames (episodes that end in the "
          "data), bootstrapped window returns for the rest", flush=True)
    return {"returns": returns}


def compare_world_models(config, work: Workdir) -> dict:
    """The eval's rollout metrics of the main run's dynamics model and of the finetuned one, on
    the same held-out clips and keys -> eval/agent_world_model.json."""
    result = {}
    for name, folder in (("before", model_folder(work.root, "dynamics")),
                         ("after", agent_folder(work, AGENT, "dynamics"))):
        ctx = EvalContext(config, work, None)
        ctx.__dict__["model"] = load_dynamics(folder)  # instead of models/dynamics
        metrics = rollout_evaluator(ctx)
        result[name] = {key: float(np.mean(metrics[f"rollout.{key}"]))
                        for key in ("psnr", "psnr_shuffled_actions", "ssim")}
        result[name]["gap"] = result[name]["psnr"] - result[name]["psnr_shuffled_actions"]
    result["change"] = {k: result["after"][k] - result["before"][k] for k in result["before"]}
    os.makedirs(work.eval, exist_ok=True)
    write_json(os.path.join(work.eval, "agent_world_model.json"), result)
    print(f"[agent_finetune] world model before / after finetuning: rollout PSNR "
          f"{result['before']['psnr']:.2f} / {result['after']['psnr']:.2f} dB, action gap "
          f"{result['before']['gap']:+.2f} / {result['after']['gap']:+.2f} dB", flush=True)
    return result


def training_contexts(work: Workdir, count: int, length: int) -> dict[str, np.ndarray]:
    """Up to `count` training clips cut to `length` frames (latents, actions, has_action)."""
    clips = ClipStore(work.latents).first("train", count, length)
    return {k: clips[k] for k in ("latents", "actions", "has_action")}


def rl_settings(config) -> RLSettings:
    a = config.agent
    return RLSettings(gamma=a.gamma, lam=a.lam, alpha=a.alpha, beta=a.beta,
                      reward_decode=a.reward_decode, train_value=a.rl_train_value)


def agent_rl_stage(config, work: Workdir, mesh) -> None:
    del mesh
    a = config.agent
    out = agent_folder(work, AGENT_RL, "heads")
    if os.path.isfile(os.path.join(out, "header.json")):
        with open(os.path.join(out, "header.json")) as f:
            if json.load(f)["step"] >= a.rl_iterations:
                print(f"[agent_rl] already trained ({out})", flush=True)
                return
    dynamics = load_dynamics(agent_folder(work, AGENT, "dynamics"))
    prior = load_heads(agent_folder(work, AGENT, "heads"))
    contexts = training_contexts(work, 4096, a.rl_context)
    window = settings.attention_window(config)
    rl = rl_settings(config)
    optimizer_config = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=a.rl_lr, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0,
        steps=a.rl_iterations, warmup_steps=min(10, a.rl_iterations), decay_steps=0))
    optimizer = make_optimizer(optimizer_config)

    def loss(heads, loss_state, step, batch, *, key):
        del step, key
        value, metrics = rl_loss(heads, batch["prior"], batch["rollout"], rl)
        return value, (metrics, loss_state)

    step = make_train_step(loss, optimizer)
    state = init_state(jax.tree.map(jnp.copy, prior), optimizer)  # the state is donated
    rng = np.random.default_rng(config.seed)
    writer = SummaryWriter(os.path.join(work.logs, "agent_rl"))
    progress = Progress("[agent_rl] imagination RL", a.rl_iterations, "updates")
    history = []
    for i in range(a.rl_iterations):
        rows = rng.choice(len(contexts["latents"]), a.rl_batch,
                          replace=len(contexts["latents"]) < a.rl_batch)
        rollout = imagine_with_policy(
            dynamics, state.model, contexts["latents"][rows], a.rl_horizon,
            key=jax.random.key(config.seed * 1_000_003 + i), actions=contexts["actions"][rows],
            has_action=contexts["has_action"][rows], steps=a.rl_steps,
            capacity=min(window, a.rl_context + a.rl_horizon),
            context_signal=config.eval.context_signal, guidance=config.eval.action_guidance)
        state, metrics = step(state, {"rollout": rollout, "prior": prior},
                              jax.random.key(i))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        history.append(metrics)
        for k, v in metrics.items():
            writer.add_scalar(f"agent_rl/{k}", v, i + 1)
        if (i + 1) % max(a.rl_iterations // 10, 1) == 0 or i + 1 == a.rl_iterations:
            print(f"[agent_rl] update {i + 1}/{a.rl_iterations} imagined return "
                  f"{metrics['imagined_return']:.3f} reward {metrics['imagined_reward']:.4f} "
                  f"value error {metrics['value_error']:.3f} entropy {metrics['entropy']:.3f} "
                  f"KL to prior {metrics['kl_to_prior']:.3f}", flush=True)
        progress.update()
    writer.close()
    save_heads(out, state.model, step=a.rl_iterations)
    last = history[-max(len(history) // 10, 1):]
    write_json(os.path.join(os.path.dirname(out), "rl_metrics.json"), {
        "history": history,
        "final": {k: float(np.mean([m[k] for m in last])) for k in last[0]},
        "settings": dataclasses.asdict(rl)})
    print(f"[agent_rl] saved the RL policy to {out}", flush=True)
