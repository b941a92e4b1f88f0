"""Turns the ml_collections config into validated component configs; fails early and by name.

Every check here runs before any stage starts, and every message names the config field
(`config.<section>.<field>`) and what would fix it.
"""

import ml_collections

from dynamics import ActionSpec, DynamicsConfig
from tokenizer import TokenizerConfig

STAGES = ("data", "tokenizer", "latents", "dynamics", "eval")
DATA_FORMATS = ("sim", "calvin", "episodes")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _fields(section: ml_collections.ConfigDict, drop: tuple[str, ...] = ()) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()
            if k not in drop}


def stages(config) -> list[str]:
    names = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(f"config.stages: unknown or no stages {unknown or names}; use a comma "
                          f"list of {STAGES}.")
    return names


def tokenizer_config(config) -> TokenizerConfig:
    size = config.data.image_size
    try:
        return TokenizerConfig(image_size=(size, size),
                               **_fields(config.tokenizer, drop=("perceptual_weights",)))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.tokenizer: {error}") from error


def action_spec(config, action_shape: tuple[int, ...]) -> ActionSpec:
    """The model's action spec from the config and the data's per-step action shape."""
    kind = config.data.action_kind
    try:
        if kind == "continuous":
            return ActionSpec("continuous", dim=int(action_shape[0]) if action_shape else 1)
        return ActionSpec(kind, classes=tuple(config.data.action_classes))
    except (ValueError, IndexError) as error:
        raise ConfigError(f"config.data.action_kind / action_classes: {error}") from error


def dynamics_config(config, action: ActionSpec) -> DynamicsConfig:
    tok = tokenizer_config(config)
    fields = _fields(config.dynamics)
    fields["kv_heads"] = fields["kv_heads"] or None
    try:
        return DynamicsConfig(latent_tokens=tok.n_latents, latent_dim=tok.latent_dim,
                              action=action, **fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.dynamics: {error}") from error


def validate(config, device_count: int) -> None:
    """Every check that needs no data; raises ConfigError naming the field."""
    stages(config)
    if config.data.format not in DATA_FORMATS:
        raise ConfigError(f"config.data.format: {config.data.format!r} is not one of "
                          f"{DATA_FORMATS}.")
    if config.data.format != "sim" and not config.data.path:
        raise ConfigError(f"config.data.path: format {config.data.format!r} needs the dataset "
                          "folder (--config.data.path=...).")
    tokenizer_config(config)
    dummy_shape = (1,) if config.data.action_kind == "continuous" else ()
    dynamics_config(config, action_spec(config, dummy_shape))
    clip = config.data.clip_length
    for stage in ("tokenizer", "dynamics"):
        train = config.train[stage]
        if train.batch % device_count:
            raise ConfigError(f"config.train.{stage}.batch ({train.batch}) must be a multiple of "
                              f"the {device_count} devices.")
        if not train.seq_lengths or max(train.seq_lengths) > clip or min(train.seq_lengths) < 1:
            raise ConfigError(f"config.train.{stage}.seq_lengths {tuple(train.seq_lengths)} must "
                              f"lie in 1..config.data.clip_length ({clip}).")
        if train.steps < 1 or train.lr <= 0:
            raise ConfigError(f"config.train.{stage}: steps and lr must be positive.")
    needed = config.eval.context_frames + config.eval.horizon
    if needed > clip:
        raise ConfigError(f"config.eval: context_frames + horizon ({needed}) exceeds "
                          f"config.data.clip_length ({clip}); lengthen the clips or shorten the "
                          "rollouts.")
    if not 1 <= config.eval.sampling_steps <= config.dynamics.k_max:
        raise ConfigError(f"config.eval.sampling_steps must be in 1..config.dynamics.k_max "
                          f"({config.dynamics.k_max}).")
