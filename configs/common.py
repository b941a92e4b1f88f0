"""The config tree shared by every dataset config, and the variant choice.

Fields (every size lives here, none in code):
- data: source `format` / `path` (generator formats sim, coinrun, craftax write their data to
  `path`, by default `<workdir>/source`), frame `image_size` (side, or (height, width)), clip
  `clip_length` / `clip_stride`, held-out `eval_fraction`, `workers`, `skip_bad`,
  `action_classes` (class count per part of discrete or multi-part actions; empty: the source's
  own), `normalise_actions` (standardise continuous actions per dimension with the training
  data's statistics; off: on the simulator it changed nothing measurable, BENCHMARKS.md), and the
  generators' settings (`sim_*`: `sim_demos` picks the simulator's demonstrations, "tasks",
  "lift" or "push", data/sim_demos.py; `gen_episodes`, `gen_max_length`, `craftax_classic`,
  `coinrun_levels`: distinct CoinRun levels, 0 for one per episode; `coinrun_scripted`: the share
  of CoinRun episodes played by a noisy scripted player instead of random actions, data/coinrun.py);
- tokenizer: `tokenizer.TokenizerConfig` fields with its defaults (image_size comes from data),
  plus `perceptual_weights` (a local weight file for the perceptual loss; empty: none);
- dynamics: `dynamics.DynamicsConfig` fields with its defaults (latent sizes, actions and the
  latent statistics come from the tokenizer and the data; `kv_heads` 0 means None: one KV head
  per head);
- train.tokenizer / train.dynamics: steps, batch, sequence lengths, optimizer and schedule,
  log / checkpoint intervals; `optimizer` is "adamw" or "muon" (Muon at `muon_lr` on the
  transformer blocks' matrices, AdamW at `lr` on the rest); the dynamics stage also has the
  objective's settings: bootstrap, image rows, `action_dropout`, `context_fraction`,
  `noise_fraction` and `twin_signal` (dynamics/objectives.py);
- eval: rollout context, horizon, sampling steps, number of rollouts, videos, `evaluators` (a
  comma list of names in launch/evaluators.py; `probe` gives no keys for sources without
  states), and the state probe's palette size `probe_colours` and `probe_fit_frames`;
- agent (the stages agent_finetune, agent_rl, agent_eval; not in the default `stages`): the
  `task` whose success detector gives the rewards (data/sim_tasks.py; sources with states; where
  the data holds rewards, as CoinRun's do, just the task's name), the
  agent tokens and heads (`agent_tokens`, `hidden`, `mtp`, `action_bins`), finetuning
  (`finetune_steps`, `finetune_lr`, `context_rows`: rows of each batch whose frames all sit at
  the context signal level a policy acts on, the only rows the agent losses read (0: every row,
  at the video loss's noise levels), and `finetune_value`: train the value head on the data's
  lambda-returns, where the data has rewards), imagination RL (`rl_iterations`, `rl_batch`,
  `rl_context`, `rl_horizon`, `rl_steps` sampling steps, `rl_lr`, `gamma`, `lam`, `alpha`,
  `beta`, `reward_decode`: how imagined rewards are read off the reward head, "mode" or
  "mean", and `rl_train_value`: whether RL trains the value head on imagined returns or keeps
  the one finetuning fitted to the data) and the closed-loop evaluation in the real environment
  (`eval_episodes`, `eval_frames` per episode at most, `eval_batch` environments stepped
  together, `eval_videos`);
- mesh: device mesh shape (`data` = -1 takes the remaining devices); `stages`, `seed`.
"""

import dataclasses

import jax
import ml_collections

from dynamics import DynamicsConfig
from tokenizer import TokenizerConfig

VARIANTS = ("full", "small", "tiny")
# Model config fields that come from the data (launch/settings.py fills them in), not the config.
TOKENIZER_FROM_DATA = ("image_size",)
DYNAMICS_FROM_DATA = ("latent_tokens", "latent_dim", "action", "latent_mean", "latent_std",
                      "action_mean", "action_std")


def choose_variant(variant: str | None) -> tuple[str, str]:
    """(variant, why): the named one, or full on an accelerator and small on a CPU."""
    if variant:
        if variant not in VARIANTS:
            raise ValueError(f"unknown config variant {variant!r}; use one of {VARIANTS}")
        return variant, f"variant {variant!r} requested"
    backend = jax.default_backend()
    if backend == "cpu":
        return "small", "no accelerator found, so the small CPU variant was chosen"
    return "full", f"{backend} accelerator found, so the full variant was chosen"


def dataclass_defaults(cls, *, drop: tuple[str, ...]) -> dict:
    """{field: default} of the dataclass `cls` but the fields `drop`, in field order: the
    defaults live in the dataclass alone. A None default becomes 0 (a config field keeps one
    type, so None could not be overridden on the command line; launch/settings.py reads 0 as
    None)."""
    defaults = {}
    for field in dataclasses.fields(cls):
        if field.name in drop:
            continue
        if field.default is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__}.{field.name} has no default; give it one or list "
                             "it among the fields that come from the data.")
        defaults[field.name] = 0 if field.default is None else field.default
    return defaults


def optimizer_config(steps: int, lr: float, warmup: int, decay: int, batch: int,
                     seq_lengths: tuple[int, ...]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        steps=steps, batch=batch, seq_lengths=seq_lengths, length_weights=(),
        optimizer="adamw", lr=lr, muon_lr=0.02, muon_beta=0.95, warmup_steps=warmup,
        decay_steps=decay, b1=0.9, b2=0.9, weight_decay=1e-4,
        grad_clip=1.0, log_every=50, checkpoint_every=500, max_skipped_in_a_row=20,
    ))


def base_config(name: str, variant: str, why: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name, config.variant, config.variant_reason = name, variant, why
    config.seed = 0
    config.stages = "data,tokenizer,latents,dynamics,eval"
    config.data = ml_collections.ConfigDict(dict(
        format="sim", path="", image_size=(64, 64), clip_length=32, clip_stride=16,
        eval_fraction=0.1, workers=2, skip_bad=False, action_classes=(),
        sim_train_episodes=64, sim_eval_episodes=8, sim_episode_length=120, sim_render_size=200,
        sim_frame_skip=1, sim_demos="tasks",
        gen_episodes=100, gen_max_length=1000, craftax_classic=True, coinrun_levels=0,
        coinrun_scripted=0.0,
        loader_threads=2, normalise_actions=False,
    ))
    config.tokenizer = ml_collections.ConfigDict(
        dataclass_defaults(TokenizerConfig, drop=TOKENIZER_FROM_DATA) | {"perceptual_weights": ""})
    config.dynamics = ml_collections.ConfigDict(
        dataclass_defaults(DynamicsConfig, drop=DYNAMICS_FROM_DATA))
    config.train = ml_collections.ConfigDict()
    config.train.tokenizer = optimizer_config(2000, 3e-4, 200, 400, 16, (16,))
    config.train.dynamics = optimizer_config(2000, 3e-4, 200, 400, 16, (32,))
    config.train.dynamics.update(dict(
        objective="shortcut", bootstrap_start=500, bootstrap_fraction=0.25,
        image_fraction=0.3, mean_fraction=0.25, action_dropout=0.0, context_fraction=0.0,
        noise_fraction=0.0, twin_signal=0.0,
    ))
    config.eval = ml_collections.ConfigDict(dict(
        context_frames=8, horizon=16, sampling_steps=4, context_signal=0.9, action_guidance=1.0,
        rollouts=16,
        batch=8, videos=4, speed_frames=16, evaluators="tokenizer,rollout,probe,speed",
        probe_colours=16, probe_fit_frames=4096,
    ))
    config.agent = ml_collections.ConfigDict(dict(
        task="lift", agent_tokens=4, hidden=256, mtp=8, action_bins=21,
        finetune_steps=2000, finetune_lr=3e-4, finetune_value=True, context_rows=0,
        rl_iterations=1000, rl_batch=32, rl_context=8, rl_horizon=16, rl_steps=4, rl_lr=3e-4,
        gamma=0.997, lam=0.95, alpha=0.5, beta=0.3, reward_decode="mode", rl_train_value=False,
        eval_episodes=200, eval_frames=48, eval_batch=8, eval_videos=4,
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return config


def small_cpu_sizes(config, *, image_size, patch: int) -> None:
    """Sizes that train in minutes on 2 CPU cores (the `small` variants)."""
    config.data.update(dict(image_size=(image_size, image_size), clip_length=32, clip_stride=16))
    config.tokenizer.update(dict(patch=patch, n_latents=16, latent_dim=32, enc_width=128,
                                 enc_depth=2, enc_heads=4, enc_kv_heads=2, enc_time_every=2,
                                 dec_width=128, dec_depth=2, dec_heads=4, dec_kv_heads=2,
                                 dec_time_every=2, p_max=0.25))
    config.dynamics.update(dict(width=128, depth=4, heads=4, kv_heads=2, time_every=2,
                                registers=2, k_max=16))
    config.train.tokenizer.update(dict(steps=2600, batch=8, seq_lengths=(4,), lr=2e-3, b2=0.99,
                                       warmup_steps=50, decay_steps=500, checkpoint_every=500,
                                       log_every=100))
    # The dynamics recipe measured on the simulator, CoinRun and the domain suite (BENCHMARKS.md,
    # "The dynamics trained as a one-step regressor"): every frame predicted from pure noise
    # (`noise_fraction` 0.99) behind clean twins of the frames before it (`twin_signal` 1.0), no
    # image, bootstrap or hidden-action rows, AdamW at 1e-3 for 1000 steps (the twins double the
    # tokens: about the wall time of 2000 plain steps); sampled as it was trained: K = 1 step per
    # frame, committed frames clean (context signal 1.0), no action guidance (eval and player).
    config.train.dynamics.update(dict(steps=1000, batch=16, seq_lengths=(8, 16),
                                      length_weights=(0.75, 0.25), lr=1e-3, warmup_steps=100,
                                      decay_steps=200, checkpoint_every=250, log_every=100,
                                      optimizer="adamw", bootstrap_fraction=0.0,
                                      image_fraction=0.0, action_dropout=0.0, twin_signal=1.0,
                                      noise_fraction=0.99))
    config.eval.update(dict(context_frames=8, horizon=16, rollouts=24, batch=12,
                            action_guidance=1.0, sampling_steps=1, context_signal=1.0))
    config.agent.update(dict(hidden=128, finetune_steps=300, finetune_lr=1e-3, rl_iterations=100,
                             rl_batch=16, rl_horizon=12, rl_steps=1, rl_lr=1e-3, eval_frames=32))


def tiny_test_sizes(config) -> None:
    """Seconds per stage: the `tiny` variants used by the tests."""
    config.data.update(dict(image_size=(16, 16), clip_length=12, clip_stride=12, workers=1,
                            sim_train_episodes=4, sim_eval_episodes=2, sim_episode_length=24,
                            sim_render_size=32, gen_episodes=6, gen_max_length=24))
    config.tokenizer.update(dict(patch=4, n_latents=4, latent_dim=8, enc_width=32, enc_depth=2,
                                 enc_heads=2, enc_kv_heads=1, dec_width=32, dec_depth=2,
                                 dec_heads=2, dec_kv_heads=1))
    config.dynamics.update(dict(width=32, depth=2, heads=2, kv_heads=1, time_every=2,
                                registers=1, k_max=4))
    config.train.tokenizer.update(dict(steps=6, batch=2, seq_lengths=(4,), log_every=2,
                                       checkpoint_every=3, warmup_steps=2, decay_steps=2))
    config.train.dynamics.update(dict(steps=6, batch=2, seq_lengths=(4, 8),
                                      length_weights=(0.5, 0.5), log_every=2, checkpoint_every=3,
                                      warmup_steps=2, decay_steps=2, bootstrap_start=3))
    config.eval.update(dict(context_frames=4, horizon=4, rollouts=2, batch=2, videos=1,
                            speed_frames=2))
    config.agent.update(dict(agent_tokens=2, hidden=16, mtp=2, action_bins=5, finetune_steps=3,
                             rl_iterations=2, rl_batch=2, rl_context=2, rl_horizon=3, rl_steps=1,
                             eval_episodes=2, eval_frames=3, eval_batch=2, eval_videos=1))
