"""Turns the ml_collections config into validated component configs; fails early and by name.

Every check here runs before any stage starts, all of them at once (one line per problem), and
every message names the config field (`config.<section>.<field>`) and what would fix it.
"""

import difflib
import functools

import ml_collections

from dynamics import ActionSpec, DynamicsConfig
from launch.evaluators import EVALUATORS
from launch.trainer import OPTIMIZERS
from tokenizer import TokenizerConfig

STAGES = ("data", "tokenizer", "latents", "dynamics", "eval")
DATA_FORMATS = ("sim", "calvin", "episodes", "vpt", "coinrun", "craftax")
GENERATED = ("sim", "coinrun", "craftax")  # formats that can generate their data


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _fields(section: ml_collections.ConfigDict, drop: tuple[str, ...] = ()) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()
            if k not in drop}


def unknown_field(config, path: str) -> str | None:
    """For a dotted field `path` (as in --config.<path>=...): a message naming the first part
    the config lacks with the three nearest valid names (difflib), or None when it exists."""
    node, walked = config, "config"
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{walked} is a value, not a section with a field {part!r}"
        if part not in node:
            nearest = difflib.get_close_matches(part, list(node.keys()), n=3, cutoff=0.0)
            return (f"{walked} has no field {part!r}; the nearest names: "
                    f"{', '.join(f'{walked}.{name}' for name in nearest)}")
        node, walked = node[part], f"{walked}.{part}"
    return None


def stages(config) -> list[str]:
    names = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(f"config.stages: unknown or no stages {unknown or names}; use a comma "
                          f"list of {STAGES}.")
    return names


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


def default_action_classes(config) -> tuple[int, ...]:
    """Class counts of the built-in discrete / multi-part sources."""
    if config.data.format == "coinrun":
        from data.coinrun import COINRUN_ACTIONS
        return (COINRUN_ACTIONS,)
    if config.data.format == "craftax":
        from data.craftax import CRAFTAX_ACTIONS
        return (CRAFTAX_ACTIONS[config.data.craftax_classic],)
    if config.data.format == "vpt":
        from data.vpt import VPT_ACTION_CLASSES
        return tuple(VPT_ACTION_CLASSES)
    return ()


def action_spec(config, layout: dict) -> ActionSpec:
    """The model's action spec from the clips' action layout ({"kind", "shape"}) and, for
    discrete and multi-part actions, config.data.action_classes (or the source's default)."""
    kind, shape = layout["kind"], tuple(layout["shape"])
    if kind == "continuous":
        return ActionSpec("continuous", dim=max(shape[0], 1))
    classes = tuple(config.data.action_classes) or default_action_classes(config)
    parts = 1 if kind == "discrete" else shape[0]
    if len(classes) != parts:
        raise ConfigError(f"config.data.action_classes: the data has {kind} actions with {parts} "
                          f"part(s); give one class count per part (got {classes}).")
    try:
        return ActionSpec(kind, classes=classes)
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


def _positive(config, fields: str) -> list[str]:
    """Messages for each of the comma-separated dotted `fields` that is not a positive int."""
    found = []
    for field in (f.strip() for f in fields.split(",")):
        value = functools.reduce(getattr, field.split("."), config)
        if not isinstance(value, int) or value < 1:
            found.append(f"config.{field} must be a positive integer, got {value!r}.")
    return found


def problems(config, device_count: int) -> list[str]:
    """Every problem that needs no data, one message per problem, each naming its field."""
    found = []

    def attempt(check):
        try:
            check()
        except ConfigError as error:
            found.append(str(error))

    attempt(lambda: stages(config))
    attempt(lambda: evaluators(config))
    data = config.data
    if data.format not in DATA_FORMATS:
        found.append(f"config.data.format: {data.format!r} is not one of {DATA_FORMATS}.")
    if data.format not in GENERATED and not data.path:
        found.append(f"config.data.path: format {data.format!r} needs the dataset folder "
                     "(--config.data.path=...).")
    if data.sim_frame_skip < 1:
        found.append(f"config.data.sim_frame_skip must be >= 1 (30 Hz control steps per "
                     f"recorded frame), got {data.sim_frame_skip}.")
    if data.coinrun_levels < 0:
        found.append(f"config.data.coinrun_levels must be >= 0 (0: a new level per episode), "
                     f"got {data.coinrun_levels}.")
    found += _positive(config, "data.clip_length, data.clip_stride, data.workers, "
                       "data.loader_threads, data.sim_train_episodes, data.sim_episode_length, "
                       "data.sim_render_size, data.gen_episodes, data.gen_max_length, "
                       "eval.context_frames, eval.horizon, eval.rollouts, eval.batch")
    if not 0 <= data.eval_fraction < 1:
        found.append(f"config.data.eval_fraction must lie in [0, 1), got {data.eval_fraction}.")
    if any(not isinstance(c, int) or c < 1 for c in data.action_classes):
        found.append(f"config.data.action_classes must be positive class counts, one per action "
                     f"part, got {tuple(data.action_classes)}.")
    defaults = default_action_classes(config) if data.format in DATA_FORMATS else ()
    if data.action_classes and defaults and len(data.action_classes) != len(defaults):
        found.append(f"config.data.action_classes: {data.format} actions have {len(defaults)} "
                     f"part(s) ({defaults} classes); got {tuple(data.action_classes)}.")
    attempt(lambda: tokenizer_config(config))
    if not any(message.startswith("config.tokenizer") or "image_size" in message
               for message in found):  # the dynamics sizes come from the tokenizer's
        attempt(lambda: dynamics_config(config, ActionSpec("continuous", dim=1)))
    clip = data.clip_length
    for stage in ("tokenizer", "dynamics"):
        train = config.train[stage]
        where = f"config.train.{stage}"
        if train.batch < 1 or train.batch % device_count:
            found.append(f"{where}.batch ({train.batch}) must be a positive multiple of the "
                         f"{device_count} devices.")
        if not train.seq_lengths or max(train.seq_lengths) > clip or min(train.seq_lengths) < 1:
            found.append(f"{where}.seq_lengths {tuple(train.seq_lengths)} must lie in "
                         f"1..config.data.clip_length ({clip}).")
        if train.length_weights and len(train.length_weights) != len(train.seq_lengths):
            found.append(f"{where}.length_weights {tuple(train.length_weights)} needs one weight "
                         f"per sequence length {tuple(train.seq_lengths)}.")
        if train.steps < 1 or train.lr <= 0 or train.muon_lr <= 0:
            found.append(f"{where}: steps, lr and muon_lr must be positive.")
        if train.warmup_steps < 0 or train.decay_steps < 0:
            found.append(f"{where}: warmup_steps and decay_steps must be >= 0.")
        found += _positive(config, f"train.{stage}.log_every, train.{stage}.checkpoint_every")
        if train.optimizer not in OPTIMIZERS:
            found.append(f"{where}.optimizer must be one of {OPTIMIZERS}, got "
                         f"{train.optimizer!r}.")
    if not 0 <= config.train.dynamics.bootstrap_fraction <= 1:
        found.append("config.train.dynamics.bootstrap_fraction must lie in [0, 1].")
    needed = config.eval.context_frames + config.eval.horizon
    if needed > clip:
        found.append(f"config.eval: context_frames + horizon ({needed}) exceeds "
                     f"config.data.clip_length ({clip}); lengthen the clips or shorten the "
                     "rollouts.")
    if config.eval.probe_colours < 1 or config.eval.probe_fit_frames < 1:
        found.append(f"config.eval.probe_colours ({config.eval.probe_colours}) and "
                     f"config.eval.probe_fit_frames ({config.eval.probe_fit_frames}) must "
                     "be >= 1.")
    if not 1 <= config.eval.sampling_steps <= config.dynamics.k_max:
        found.append(f"config.eval.sampling_steps must be in 1..config.dynamics.k_max "
                     f"({config.dynamics.k_max}).")
    return list(dict.fromkeys(found))


def validate(config, device_count: int) -> None:
    """Raises ConfigError listing every problem `problems` finds, one per line."""
    found = problems(config, device_count)
    if found:
        raise ConfigError("\n".join(found))
