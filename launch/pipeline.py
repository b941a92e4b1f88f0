"""The stages of the main job, in order: the one registry `launch/run.py` runs.

A `Stage` has a name (`config.stages` lists names), what it reads and writes (paths in the
workdir, ending in "/" for folders, or the config field naming an outside input), what it does
(one line), `run(config, work, mesh)` and `validate(config, device_count)`: its config checks
(launch/settings.py), raising ConfigError naming the field. `validate` runs the checks of every
stage before any stage starts, whichever stages are selected (a config describes the whole run);
selected stages run in registry order. Each stage reads only what an earlier stage writes or the
config names. A new stage (an agent, a play loop) is one entry in `STAGES`; BUILD.md's stage
table is `markdown_table()` (`python -m launch.pipeline` prints it).
"""

import dataclasses
from collections.abc import Callable

from launch import settings
from launch.evaluate import eval_stage
from launch.stages import data_stage, dynamics_stage, latents_stage, tokenizer_stage


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the main job; see the module docstring."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    does: str
    run: Callable[..., object]  # run(config, work: launch.stages.Workdir, mesh)
    validate: Callable[..., None]  # validate(config, device_count)


STAGES: tuple[Stage, ...] = (
    Stage("data", ("config.data.path",), ("source/", "clips/"),
          "generators (sim, coinrun, craftax) first write the source to `source/` when "
          "`config.data.path` is empty; cuts it into clip shards (data/sources.py, data/clips.py)",
          lambda config, work, mesh: data_stage(config, work), settings.validate_data),
    Stage("tokenizer", ("clips/",), ("tokenizer/", "models/tokenizer/", "logs/tokenizer/"),
          "trains the tokenizer (orbax checkpoints in `tokenizer/`), then saves the model alone",
          tokenizer_stage, settings.validate_tokenizer),
    Stage("latents", ("clips/", "models/tokenizer/"), ("latents/",),
          "encodes every clip with the frozen encoder (same shard layout and clip ids, latents "
          "instead of frames) and the training latents' mean and std",
          latents_stage, settings.validate_latents),
    Stage("dynamics", ("latents/",), ("dynamics/", "models/dynamics/", "logs/dynamics/"),
          "trains the dynamics model (checkpoints in `dynamics/`), then saves the model alone",
          dynamics_stage, settings.validate_dynamics),
    Stage("eval", ("clips/", "latents/", "models/tokenizer/", "models/dynamics/"),
          ("eval/", "logs/eval/"),
          "runs `config.eval.evaluators`: `eval/summary.json`, rollout videos "
          "(`rollout_*.mp4`, `.gif`), `psnr_over_horizon.png`, TensorBoard",
          eval_stage, settings.validate_eval),
)
NAMES = tuple(stage.name for stage in STAGES)


def selected(config) -> list[Stage]:
    """The stages `config.stages` (a comma list of names) picks, in registry order."""
    known = tuple(stage.name for stage in STAGES)
    names = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise settings.ConfigError(f"config.stages: unknown or no stages {unknown or names}; "
                                   f"use a comma list of {known}.")
    return [stage for stage in STAGES if stage.name in names]


def validate(config, device_count: int) -> list[Stage]:
    """Every check that needs no data, of every stage; returns the selected stages."""
    chosen = selected(config)
    for stage in STAGES:
        stage.validate(config, device_count)
    return chosen


def markdown_table() -> str:
    """The stage table of BUILD.md: stage | reads | writes | does."""
    cell = lambda paths: ", ".join(f"`{p}`" for p in paths)
    rows = ["| stage | reads | writes | does |", "|---|---|---|---|"]
    rows += [f"| {s.name} | {cell(s.reads)} | {cell(s.writes)} | {s.does} |" for s in STAGES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
