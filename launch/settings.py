"""Turns the ml_collections config into validated component configs; fails early and by name.

Every message names the config field (`config.<section>.<field>`) and what would fix it. The
checks of each stage (`validate_<stage>`) are entries of the stage registry (launch/pipeline.py),
which runs all of them before any stage starts.
"""

import ml_collections

from data import sources
from data.episode import ActionLayout
from data.sim_demos import SimSettings
from data.sources import SourceOptions
from dynamics import ActionSpec, DynamicsConfig
from launch.evaluators import EVALUATORS
from launch.trainer import OPTIMIZERS
from tokenizer import TokenizerConfig


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _fields(section: ml_collections.ConfigDict, drop: tuple[str, ...] = ()) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()
            if k not in drop}


def evaluators(config) -> list[str]:
    """config.eval.evaluators: a comma list of names in launch.evaluators.EVALUATORS."""
    names = list(dict.fromkeys(s.strip() for s in config.eval.evaluators.split(",") if s.strip()))
    unknown = [s for s in names if s not in EVALUATORS]
    if unknown or not names:
        raise ConfigError(f"config.eval.evaluators: unknown or no evaluators {unknown or names}; "
                          f"use a comma list of {tuple(EVALUATORS)}.")
    return names


def image_size(config) -> tuple[int, int]:
    """config.data.image_size: one number (square) or (height, width)."""
    size = config.data.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"config.data.image_size must be a positive int or (height, width), got "
                          f"{config.data.image_size}.")
    return size


def tokenizer_config(config) -> TokenizerConfig:
    try:
        return TokenizerConfig(image_size=image_size(config),
                               **_fields(config.tokenizer, drop=("perceptual_weights",)))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.tokenizer: {error}") from error


def source_options(config) -> SourceOptions:
    """The data source's settings from config.data (and the seed)."""
    data = config.data
    sim = SimSettings(data.sim_train_episodes, data.sim_eval_episodes, data.sim_episode_length,
                      data.sim_render_size, config.seed, data.sim_frame_skip)
    return SourceOptions(seed=config.seed, workers=data.workers,
                         eval_fraction=data.eval_fraction, skip_bad=data.skip_bad, sim=sim,
                         episodes=data.gen_episodes, max_length=data.gen_max_length,
                         craftax_classic=data.craftax_classic,
                         coinrun_levels=data.coinrun_levels)


def action_spec(config, layout: ActionLayout) -> ActionSpec:
    """The model's action spec from the clips' action layout and, for discrete and multi-part
    actions, config.data.action_classes (or the source's default)."""
    classes = (tuple(config.data.action_classes)
               or sources.source(config.data.format).action_classes(source_options(config)))
    try:
        return ActionSpec.from_layout(layout, classes)
    except ValueError as error:
        raise ConfigError(f"config.data.action_classes: {error}") from error


def dynamics_config(config, action: ActionSpec, latent_stats: dict | None = None
                    ) -> DynamicsConfig:
    """The dynamics sizes; `latent_stats` ({"mean", "std"} of the training latents, and the
    continuous actions' per-dimension "action_mean" / "action_std", from the
    latents stage) sets the model's standardisation (default: none)."""
    tok = tokenizer_config(config)
    fields = _fields(config.dynamics)
    fields["kv_heads"] = fields["kv_heads"] or None
    stats = latent_stats or {"mean": 0.0, "std": 1.0}
    action_stats = {}
    if action.kind == "continuous" and len(stats.get("action_mean", ())) == action.dim:
        action_stats = {"action_mean": tuple(stats["action_mean"]),
                        "action_std": tuple(stats["action_std"])}
    try:
        return DynamicsConfig(latent_tokens=tok.n_latents, latent_dim=tok.latent_dim,
                              action=action, latent_mean=stats["mean"],
                              latent_std=stats["std"], **action_stats, **fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.dynamics: {error}") from error


# The checks of each stage (launch/pipeline.py runs them all before any stage starts); each
# raises ConfigError naming the field.


def validate_data(config, device_count: int) -> None:
    del device_count
    if config.data.format not in sources.NAMES:
        raise ConfigError(f"config.data.format: {config.data.format!r} is not one of "
                          f"{sources.NAMES} (data/sources.py).")
    if config.data.format not in sources.GENERATED and not config.data.path:
        raise ConfigError(f"config.data.path: format {config.data.format!r} needs the dataset "
                          "folder (--config.data.path=...).")
    if config.data.sim_frame_skip < 1:
        raise ConfigError(f"config.data.sim_frame_skip must be >= 1 (30 Hz control steps per "
                          f"recorded frame), got {config.data.sim_frame_skip}.")
    if config.data.coinrun_levels < 0:
        raise ConfigError(f"config.data.coinrun_levels must be >= 0 (0: a new level per "
                          f"episode), got {config.data.coinrun_levels}.")


def validate_training(config, stage: str, device_count: int) -> None:
    """config.train.<stage>: batch per device, sequence lengths within the clips, optimizer."""
    clip = config.data.clip_length
    train = config.train[stage]
    if train.batch % device_count:
        raise ConfigError(f"config.train.{stage}.batch ({train.batch}) must be a multiple of "
                          f"the {device_count} devices.")
    if not train.seq_lengths or max(train.seq_lengths) > clip or min(train.seq_lengths) < 1:
        raise ConfigError(f"config.train.{stage}.seq_lengths {tuple(train.seq_lengths)} must "
                          f"lie in 1..config.data.clip_length ({clip}).")
    if train.steps < 1 or train.lr <= 0 or train.muon_lr <= 0:
        raise ConfigError(f"config.train.{stage}: steps, lr and muon_lr must be positive.")
    if train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"config.train.{stage}.optimizer must be one of {OPTIMIZERS}, got "
                          f"{train.optimizer!r}.")


def validate_tokenizer(config, device_count: int) -> None:
    tokenizer_config(config)
    validate_training(config, "tokenizer", device_count)


def validate_latents(config, device_count: int) -> None:
    del device_count
    tokenizer_config(config)


def validate_dynamics(config, device_count: int) -> None:
    dynamics_config(config, ActionSpec("continuous", dim=1))  # the action comes with the data
    validate_training(config, "dynamics", device_count)


def validate_eval(config, device_count: int) -> None:
    del device_count
    evaluators(config)
    clip = config.data.clip_length
    needed = config.eval.context_frames + config.eval.horizon
    if needed > clip:
        raise ConfigError(f"config.eval: context_frames + horizon ({needed}) exceeds "
                          f"config.data.clip_length ({clip}); lengthen the clips or shorten the "
                          "rollouts.")
    if not 1 <= config.eval.sampling_steps <= config.dynamics.k_max:
        raise ConfigError(f"config.eval.sampling_steps must be in 1..config.dynamics.k_max "
                          f"({config.dynamics.k_max}).")
