"""The stage registry (launch/pipeline.py): order, reads and writes, selection, validation, and
a new stage as one entry."""

import json
import os

import pytest

from configs import calvin
from launch import pipeline, settings
from launch.pipeline import Stage
from launch.run import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_order_reads_and_writes():
    assert pipeline.NAMES == ("data", "tokenizer", "latents", "dynamics", "eval")
    assert {s.name: (s.reads, s.writes) for s in pipeline.STAGES} == {
        "data": (("config.data.path",), ("source/", "clips/")),
        "tokenizer": (("clips/",), ("tokenizer/", "models/tokenizer/", "logs/tokenizer/")),
        "latents": (("clips/", "models/tokenizer/"), ("latents/",)),
        "dynamics": (("latents/",), ("dynamics/", "models/dynamics/", "logs/dynamics/")),
        "eval": (("clips/", "latents/", "models/tokenizer/", "models/dynamics/"),
                 ("eval/", "logs/eval/")),
    }


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
    assert [s.name for s in pipeline.selected(config)] == ["dynamics", "eval"]
    config.stages = "data,train"
    with pytest.raises(settings.ConfigError, match=r"config\.stages: unknown or no stages "
                                                   r"\['train'\]; .*\('data', 'tokenizer', "
                                                   r"'latents', 'dynamics', 'eval'\)"):
        pipeline.selected(config)
    config.stages = ","
    with pytest.raises(settings.ConfigError, match="no stages"):
        pipeline.selected(config)


def test_validate_checks_every_stage_whichever_are_selected():
    config = calvin.get_config("tiny")
    config.stages = "eval"
    assert [s.name for s in pipeline.validate(config, device_count=1)] == ["eval"]
    config.train.tokenizer.batch = 3
    with pytest.raises(settings.ConfigError, match=r"config\.train\.tokenizer\.batch \(3\)"):
        pipeline.validate(config, device_count=2)


def test_a_new_stage_is_one_entry(tmp_path, monkeypatch):
    """An extra registry entry is selectable, validated with the others and run by the main job
    after the stages before it."""
    calls = []

    def validate_agent(config, device_count):
        calls.append(("validate", device_count))
        if config.seed < 0:
            raise settings.ConfigError("config.seed: the agent needs a seed >= 0.")

    def run_agent(config, work, mesh):
        calls.append(("run", work.root))
        os.makedirs(os.path.join(work.root, "agent"))

    agent = Stage("agent", ("models/dynamics/",), ("agent/",), "trains an agent", run_agent,
                  validate_agent)
    monkeypatch.setattr(pipeline, "STAGES", (*pipeline.STAGES, agent))
    config = calvin.get_config("tiny")
    config.stages = "agent"
    run(config, str(tmp_path))
    assert calls == [("validate", 1), ("run", str(tmp_path))]
    assert (tmp_path / "agent").is_dir()
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"agent", "total"}
    config.seed = -1
    with pytest.raises(SystemExit, match=r"config error: config\.seed"):
        run(config, str(tmp_path))
