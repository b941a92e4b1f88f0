"""Turns the ml_collections config into validated component configs; fails early and by name.

Every check here runs before any stage starts, all of them at once (one line per problem), and
every message names the config field (`config.<section>.<field>`) and what would fix it. Each
stage's checks are a `<stage>_problems(config, device_count)` function named by its entry in the
stage registry (launch/pipeline.py); `problems` runs those of every stage.
"""

import difflib
import functools

import ml_collections

from data import sources
from data.episode import ActionLayout
from data.sim_demos import DEMOS, SimSettings
from data.sources import SourceOptions
from dynamics import ActionSpec, DynamicsConfig
from launch import pipeline
from launch.evaluators import EVALUATORS
from launch.trainer import OPTIMIZERS
from tokenizer import TokenizerConfig

STAGES = pipeline.NAMES


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
    """config.stages: a comma list of stage names (launch/pipeline.py), in the registry's order."""
    known = tuple(stage.name for stage in pipeline.STAGES)
    names = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise ConfigError(f"config.stages: unknown or no stages {unknown or names}; use a comma "
                          f"list of {known}.")
    return [name for name in known if name in names]


def evaluators(config) -> list[str]:
    """config.eval.evaluators: a comma list of names in launch.evaluators.EVALUATORS."""
    names = list(dict.fromkeys(s.strip() for s in config.eval.evaluators.split(",") if s.strip()))
    unknown = [s for s in names if s not in EVALUATORS]
    if unknown or not names:
        raise ConfigError(f"config.eval.evaluators: unknown or no evaluators {unknown or names}; "
                          f"use a comma list of {tuple(EVALUATORS)}.")
    return names


def attention_window(config) -> int:
    """Frames the dynamics model attends over when generating: its longest training sequence
    (the KV cache's sliding window in the eval and the agent stages)."""
    return max(int(max(config.train.dynamics.seq_lengths)), 2)


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
                      data.sim_render_size, config.seed, data.sim_frame_skip, data.sim_demos)
    return SourceOptions(seed=config.seed, workers=data.workers,
                         eval_fraction=data.eval_fraction, skip_bad=data.skip_bad, sim=sim,
                         episodes=data.gen_episodes, max_length=data.gen_max_length,
                         craftax_classic=data.craftax_classic,
                         coinrun_levels=data.coinrun_levels,
                         coinrun_scripted=data.coinrun_scripted)


def default_action_classes(config) -> tuple[int, ...]:
    """The class counts per part of the source's discrete / multi-part actions
    (data/sources.py; none for continuous actions or a folder of episodes)."""
    if config.data.format not in sources.NAMES:
        return ()
    return sources.source(config.data.format).action_classes(source_options(config))


def action_spec(config, layout: ActionLayout) -> ActionSpec:
    """The model's action spec from the clips' action layout and, for discrete and multi-part
    actions, config.data.action_classes (or the source's default)."""
    classes = tuple(config.data.action_classes) or default_action_classes(config)
    try:
        return ActionSpec.from_layout(layout, classes)
    except ValueError as error:
        raise ConfigError(f"config.data.action_classes: {error}") from error


def dynamics_config(config, action: ActionSpec, latent_stats: dict | None = None
                    ) -> DynamicsConfig:
    """The dynamics sizes; `latent_stats` ({"mean", "std"} of the training latents, and the
    continuous actions' per-dimension "action_mean" / "action_std", used when
    config.data.normalise_actions is on, from the latents stage) sets the model's
    standardisation (default: none)."""
    tok = tokenizer_config(config)
    fields = _fields(config.dynamics)
    fields["kv_heads"] = fields["kv_heads"] or None
    stats = latent_stats or {"mean": 0.0, "std": 1.0}
    action_stats = {}
    if config.data.normalise_actions and action.kind == "continuous" and \
            len(stats.get("action_mean", ())) == action.dim:
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


def _attempt(check, found: list[str]) -> bool:
    """Runs `check`; appends its ConfigError's message to `found`. Whether it passed."""
    try:
        check()
    except ConfigError as error:
        found.append(str(error))
        return False
    return True


def data_problems(config, device_count: int) -> list[str]:
    del device_count
    found = []
    data = config.data
    if data.format not in sources.NAMES:
        found.append(f"config.data.format: {data.format!r} is not one of {sources.NAMES} "
                     "(data/sources.py).")
    if data.format not in sources.GENERATED and not data.path:
        found.append(f"config.data.path: format {data.format!r} needs the dataset folder "
                     "(--config.data.path=...).")
    if data.sim_frame_skip < 1:
        found.append(f"config.data.sim_frame_skip must be >= 1 (30 Hz control steps per "
                     f"recorded frame), got {data.sim_frame_skip}.")
    if data.sim_demos not in DEMOS:
        found.append(f"config.data.sim_demos: {data.sim_demos!r} is not one of {tuple(DEMOS)} "
                     "(data/sim_demos.py).")
    if data.coinrun_levels < 0:
        found.append(f"config.data.coinrun_levels must be >= 0 (0: a new level per episode), "
                     f"got {data.coinrun_levels}.")
    if not 0 <= data.coinrun_scripted <= 1:
        found.append(f"config.data.coinrun_scripted must be in [0, 1] (the share of CoinRun "
                     f"episodes played by the scripted player), got {data.coinrun_scripted}.")
    found += _positive(config, "data.clip_length, data.clip_stride, data.workers, "
                       "data.loader_threads, data.sim_train_episodes, data.sim_episode_length, "
                       "data.sim_render_size, data.gen_episodes, data.gen_max_length")
    if not 0 <= data.eval_fraction < 1:
        found.append(f"config.data.eval_fraction must lie in [0, 1), got {data.eval_fraction}.")
    if any(not isinstance(c, int) or c < 1 for c in data.action_classes):
        found.append(f"config.data.action_classes must be positive class counts, one per action "
                     f"part, got {tuple(data.action_classes)}.")
    known_source = (data.format in sources.NAMES and data.sim_frame_skip >= 1
                    and data.sim_demos in DEMOS)  # (SimSettings)
    defaults = default_action_classes(config) if known_source else ()
    if data.action_classes and defaults and len(data.action_classes) != len(defaults):
        found.append(f"config.data.action_classes: {data.format} actions have {len(defaults)} "
                     f"part(s) ({defaults} classes); got {tuple(data.action_classes)}.")
    return found


def _training_problems(config, stage: str, device_count: int) -> list[str]:
    """config.train.<stage>: batch per device, sequence lengths within the clips, optimizer."""
    found = []
    clip = config.data.clip_length
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
        found.append(f"{where}.optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}.")
    return found


def tokenizer_problems(config, device_count: int) -> list[str]:
    found = []
    _attempt(lambda: tokenizer_config(config), found)
    return found + _training_problems(config, "tokenizer", device_count)


def dynamics_problems(config, device_count: int) -> list[str]:
    """The dynamics sizes (checked once the tokenizer's, which they take, are valid), its
    training and bootstrap settings."""
    found = []
    if _attempt(lambda: tokenizer_config(config), []):
        _attempt(lambda: dynamics_config(config, ActionSpec("continuous", dim=1)), found)
    found += _training_problems(config, "dynamics", device_count)
    if not 0 <= config.train.dynamics.bootstrap_fraction <= 1:
        found.append("config.train.dynamics.bootstrap_fraction must lie in [0, 1].")
    if not 0 <= config.train.dynamics.twin_signal <= 1:
        found.append(f"config.train.dynamics.twin_signal must lie in [0, 1] (0: off), got "
                     f"{config.train.dynamics.twin_signal}.")
    for name in ("action_dropout", "context_fraction", "noise_fraction"):
        if not 0 <= config.train.dynamics[name] < 1:
            found.append(f"config.train.dynamics.{name} must lie in [0, 1), got "
                         f"{config.train.dynamics[name]}.")
    return found


def eval_problems(config, device_count: int) -> list[str]:
    del device_count
    found = []
    _attempt(lambda: evaluators(config), found)
    found += _positive(config, "eval.context_frames, eval.horizon, eval.rollouts, eval.batch")
    needed = config.eval.context_frames + config.eval.horizon
    if needed > config.data.clip_length:
        found.append(f"config.eval: context_frames + horizon ({needed}) exceeds "
                     f"config.data.clip_length ({config.data.clip_length}); lengthen the clips "
                     "or shorten the rollouts.")
    if config.eval.probe_colours < 1 or config.eval.probe_fit_frames < 1:
        found.append(f"config.eval.probe_colours ({config.eval.probe_colours}) and "
                     f"config.eval.probe_fit_frames ({config.eval.probe_fit_frames}) must "
                     "be >= 1.")
    if not 1 <= config.eval.sampling_steps <= config.dynamics.k_max:
        found.append(f"config.eval.sampling_steps must be in 1..config.dynamics.k_max "
                     f"({config.dynamics.k_max}).")
    if config.eval.action_guidance < 0:
        found.append(f"config.eval.action_guidance must be >= 0 (1: no guidance), got "
                     f"{config.eval.action_guidance}.")
    elif config.eval.action_guidance != 1 and not config.train.dynamics.action_dropout:
        found.append(f"config.eval.action_guidance={config.eval.action_guidance} needs a dynamics "
                     "model trained with some actions hidden: set "
                     "config.train.dynamics.action_dropout (e.g. 0.1), or guidance 1.")
    return found


def problems(config, device_count: int) -> list[str]:
    """Every problem that needs no data, one message per problem, each naming its field: the
    stage names, then the checks of every stage of the registry (whichever are selected: a
    config describes the whole run)."""
    found = []
    _attempt(lambda: stages(config), found)
    for stage in pipeline.STAGES:
        found += stage.problems(config, device_count)
    return list(dict.fromkeys(found))


def validate(config, device_count: int) -> None:
    """Raises ConfigError listing every problem `problems` finds, one per line."""
    found = problems(config, device_count)
    if found:
        raise ConfigError("\n".join(found))
