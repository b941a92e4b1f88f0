"""The stages of the main job, in order: the one registry that `launch/run.py` runs, that
`config.stages` and `--restart` name, and that BUILD.md's stage table shows (`markdown_table()`,
printed by `python -m launch.pipeline`).

A `Stage` has
- `name`;
- `reads` / `writes`: paths in the workdir ("/" ends a folder; a config field names an outside
  input). The first entry of `writes` is the folder whose content says the stage has run, and
  `--restart` deletes what `writes` lists (launch/workdir.py);
- `does`: one line for the table;
- `runner`: "module:function", called as function(config, work, mesh);
- `checker`: "module:function" or None, function(config, device_count) -> the config problems
  of this stage (messages naming the field); every stage's run before any stage starts,
  whichever are selected (a config describes the whole run);
- `inputs` / `record`: "module:function" or None, function(work), run before / after the stage:
  check that its inputs are what its outputs were made from, record what they were made from
  (launch/provenance.py).
Functions are named, not imported, so that this module imports nothing from the launch package
and every module can read the registry. A new stage (an agent, a play loop) is one entry in
`STAGES`; selected stages run in registry order.
"""

import dataclasses
import importlib
from collections.abc import Callable


def resolve(reference: str) -> Callable:
    """The function a "module:function" reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the main job; see the module docstring."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    does: str
    runner: str
    checker: str | None = None
    inputs: str | None = None
    record: str | None = None

    def run(self, config, work, mesh) -> None:
        """Checks the inputs, runs the stage, records what its outputs were made from."""
        if self.inputs:
            resolve(self.inputs)(work)
        resolve(self.runner)(config, work, mesh)
        if self.record:
            resolve(self.record)(work)

    def problems(self, config, device_count: int) -> list[str]:
        return list(resolve(self.checker)(config, device_count)) if self.checker else []


STAGES: tuple[Stage, ...] = (
    Stage("data", ("config.data.path",), ("clips/", "source/"),
          "generators (sim, coinrun, craftax) first write the source to `source/` when "
          "`config.data.path` is empty; cuts it into clip shards (data/sources.py, data/clips.py)",
          "launch.stages:shared_data_stage", "launch.settings:data_problems"),
    Stage("tokenizer", ("clips/",), ("tokenizer/", "logs/tokenizer/", "models/tokenizer/"),
          "trains the tokenizer (orbax checkpoints in `tokenizer/`), then saves the model alone",
          "launch.stages:tokenizer_stage", "launch.settings:tokenizer_problems",
          inputs="launch.provenance:tokenizer_inputs"),
    Stage("latents", ("clips/", "models/tokenizer/"), ("latents/",),
          "encodes every clip with the frozen encoder (same shard layout and clip ids, latents "
          "instead of frames) and the training latents' and actions' statistics",
          "launch.stages:latents_stage"),
    Stage("dynamics", ("latents/",), ("dynamics/", "logs/dynamics/", "models/dynamics/"),
          "trains the dynamics model (checkpoints in `dynamics/`), then saves the model alone",
          "launch.stages:dynamics_stage", "launch.settings:dynamics_problems",
          inputs="launch.provenance:dynamics_inputs"),
    Stage("eval", ("clips/", "latents/", "models/tokenizer/", "models/dynamics/"),
          ("eval/", "logs/eval/"),
          "runs `config.eval.evaluators`: `eval/summary.json`, rollout videos "
          "(`rollout_*.mp4`, `.gif`), `psnr_over_horizon.png`, TensorBoard",
          "launch.evaluate:eval_stage", "launch.settings:eval_problems",
          inputs="launch.provenance:check_eval_inputs", record="launch.provenance:record_eval"),
    Stage("agent_finetune", ("latents/", "models/dynamics/"),
          ("models/agent/", "agent_finetune/", "logs/agent_finetune/",
           "eval/agent_world_model.json"),
          "adds agent tokens and heads to the dynamics model and finetunes behaviour cloning, "
          "rewards and the data's value beside the video loss; the world model's rollout metrics "
          "before and after",
          "launch.agent_stages:agent_finetune_stage", "launch.agent_stages:agent_problems"),
    Stage("agent_rl", ("latents/", "models/agent/"), ("models/agent_rl/", "logs/agent_rl/"),
          "imagination RL (PMPO) of the policy head against the data's fixed value (or with "
          "the value head), the transformer frozen",
          "launch.agent_stages:agent_rl_stage"),
    Stage("agent_eval", ("models/tokenizer/", "models/agent/", "models/agent_rl/"),
          ("eval/agent_summary.json",),
          "both policies closed-loop in the real environment (the simulator, CoinRun): "
          "`eval/agent_summary.json`, videos "
          "`eval/agent_*.mp4`",
          "launch.agent_eval:agent_eval_stage"),
)
NAMES = tuple(stage.name for stage in STAGES)
# The workdir's top-level folders that stages read or write.
FOLDERS = tuple(sorted({path.split("/")[0] for stage in STAGES for path in stage.reads
                        + stage.writes if not path.startswith("config.")}))


def stage(name: str) -> Stage:
    """The stage called `name` (KeyError naming the known ones otherwise)."""
    found = {s.name: s for s in STAGES}
    if name not in found:
        raise KeyError(f"no stage {name!r}; the stages are {tuple(found)}")
    return found[name]


def markdown_table() -> str:
    """The stage table of BUILD.md: stage | reads | writes | does."""
    cell = lambda paths: ", ".join(f"`{p}`" for p in paths)
    rows = ["| stage | reads | writes | does |", "|---|---|---|---|"]
    rows += [f"| {s.name} | {cell(s.reads)} | {cell(s.writes)} | {s.does} |" for s in STAGES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
