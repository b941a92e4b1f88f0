"""The stage registry (launch/pipeline.py): order, reads and writes, selection, the checks of
every stage, the workdir's outputs, and a new stage as one entry."""

import json
import os
import sys

import pytest

from configs import calvin
from launch import pipeline, settings, workdir
from launch.pipeline import Stage
from launch.run import run
from launch.stages import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_order_reads_and_writes():
    assert pipeline.NAMES == ("data", "tokenizer", "latents", "dynamics", "eval",
                              "agent_finetune", "agent_rl", "agent_eval")
    assert {s.name: (s.reads, s.writes) for s in pipeline.STAGES} == {
        "data": (("config.data.path",), ("clips/", "source/")),
        "tokenizer": (("clips/",), ("tokenizer/", "logs/tokenizer/", "models/tokenizer/")),
        "latents": (("clips/", "models/tokenizer/"), ("latents/",)),
        "dynamics": (("latents/",), ("dynamics/", "logs/dynamics/", "models/dynamics/")),
        "eval": (("clips/", "latents/", "models/tokenizer/", "models/dynamics/"),
                 ("eval/", "logs/eval/")),
        "agent_finetune": (("latents/", "models/dynamics/"),
                           ("models/agent/", "agent_finetune/", "logs/agent_finetune/",
                            "eval/agent_world_model.json")),
        "agent_rl": (("latents/", "models/agent/"), ("models/agent_rl/", "logs/agent_rl/")),
        "agent_eval": (("models/tokenizer/", "models/agent/", "models/agent_rl/"),
                       ("eval/agent_summary.json",)),
    }
    assert settings.STAGES == pipeline.NAMES
    assert pipeline.FOLDERS == ("agent_finetune", "clips", "dynamics", "eval", "latents", "logs",
                                "models", "source", "tokenizer")
    assert workdir.OUTPUTS["data"] == ("clips", "source")  # the first says the stage has run
    assert Workdir("/w").models == "/w/models"
    with pytest.raises(KeyError, match=r"no stage 'agent'; the stages are \('data', "):
        pipeline.stage("agent")


def test_every_named_function_exists():
    for stage in pipeline.STAGES:
        for reference in (stage.runner, stage.checker, stage.inputs, stage.record):
            assert reference is None or callable(pipeline.resolve(reference)), reference


def test_each_stage_reads_what_an_earlier_stage_writes():
    written = set()
    for stage in pipeline.STAGES:
        for path in stage.reads:
            assert path.startswith("config.") or path in written, (stage.name, path)
        written |= set(stage.writes)


def test_build_md_stage_table_is_the_registry():
    with open(os.path.join(REPO, "BUILD.md")) as f:
        text = f.read()
    start = text.index("| stage | reads | writes |")
    assert text[start:text.index("\n\n", start)] == pipeline.markdown_table()


def test_selection_keeps_registry_order_and_names_the_known_stages():
    config = calvin.get_config("tiny")
    config.stages = " eval, dynamics,dynamics "
    assert settings.stages(config) == ["dynamics", "eval"]
    config.stages = "data,train"
    with pytest.raises(settings.ConfigError, match=r"config\.stages: unknown or no stages "
                                                   r"\['train'\]; .*\('data', 'tokenizer', "
                                                   r"'latents', 'dynamics', 'eval', "
                                                   r"'agent_finetune', 'agent_rl', 'agent_eval'\)"):
        settings.stages(config)
    config.stages = ","
    with pytest.raises(settings.ConfigError, match="no stages"):
        settings.stages(config)


def test_the_checks_of_every_stage_run_whichever_are_selected():
    config = calvin.get_config("tiny")
    config.stages = "eval"
    settings.validate(config, device_count=1)
    config.train.tokenizer.batch = 3
    config.eval.horizon = 40
    assert [p.split(" ")[0] for p in settings.problems(config, device_count=2)] == [
        "config.train.tokenizer.batch", "config.eval:"]
    assert pipeline.stage("tokenizer").problems(config, 2)[0].startswith(
        "config.train.tokenizer.batch (3)")
    assert pipeline.stage("latents").problems(config, 2) == []  # no checks of its own


def test_a_new_stage_is_one_entry(tmp_path, monkeypatch):
    """An extra registry entry is selectable, validated with the others and run by the main job
    after the stages before it."""
    calls = []

    def agent_problems(config, device_count):
        calls.append(("check", device_count))
        return ["config.seed: the agent needs a seed >= 0."] if config.seed < 0 else []

    def run_agent(config, work, mesh):
        calls.append(("run", work.root))
        os.makedirs(os.path.join(work.root, "agent"))

    here = sys.modules[__name__]  # the entry names its functions as "module:function"
    monkeypatch.setattr(here, "agent_problems", agent_problems, raising=False)
    monkeypatch.setattr(here, "run_agent", run_agent, raising=False)
    agent = Stage("agent", ("models/dynamics/",), ("agent/",), "trains an agent",
                  f"{__name__}:run_agent", f"{__name__}:agent_problems")
    monkeypatch.setattr(pipeline, "STAGES", (*pipeline.STAGES, agent))
    config = calvin.get_config("tiny")
    config.stages = "agent"
    run(config, str(tmp_path))
    assert calls == [("check", 1), ("run", str(tmp_path))]
    assert (tmp_path / "agent").is_dir()
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"agent", "total"}
    config.seed = -1
    with pytest.raises(SystemExit, match=r"config error: config\.seed"):
        run(config, str(tmp_path))
