"""Config problems found before any work: all at once, unknown fields, the data's action classes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import calvin
from launch import settings
from launch.run import run, unknown_override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_problem_is_reported_at_once_one_line_each(tmp_path):
    config = calvin.get_config("tiny")
    config.data.clip_stride = 0
    config.tokenizer.patch = 5
    config.train.dynamics.optimizer = "sgd"
    config.eval.horizon = 40
    with pytest.raises(SystemExit) as stopped:
        run(config, str(tmp_path / "run"))
    lines = str(stopped.value).splitlines()
    assert len(lines) == 4 and all(line.startswith("config error: config.") for line in lines)
    for field in ("data.clip_stride", "tokenizer", "train.dynamics.optimizer", "eval"):
        assert sum(line.startswith(f"config error: config.{field}") for line in lines) == 1
    assert not (tmp_path / "run").exists()


def test_action_guidance_needs_a_model_trained_with_hidden_actions():
    config = calvin.get_config("tiny")
    config.eval.action_guidance = 1.5
    assert [p for p in settings.problems(config, 1) if "action_guidance" in p] == [
        "config.eval.action_guidance=1.5 needs a dynamics model trained with some actions "
        "hidden: set config.train.dynamics.action_dropout (e.g. 0.1), or guidance 1."]
    config.train.dynamics.action_dropout = 0.1
    assert settings.problems(config, 1) == []
    config.train.dynamics.action_dropout = 1.0
    assert settings.problems(config, 1) == [
        "config.train.dynamics.action_dropout must lie in [0, 1), got 1.0."]
    config.train.dynamics.action_dropout = 0.1
    config.train.dynamics.context_fraction = -0.5
    assert settings.problems(config, 1) == [
        "config.train.dynamics.context_fraction must lie in [0, 1), got -0.5."]
    config.train.dynamics.context_fraction = 0.0
    config.data.sim_demos = "juggle"
    assert settings.problems(config, 1) == [
        "config.data.sim_demos: 'juggle' is not one of ('tasks', 'lift', 'push') "
        "(data/sim_demos.py)."]


def test_an_unknown_field_is_one_line_with_the_nearest_names():
    argv = ["run.py", "--config=configs/calvin.py:tiny", "--config.seed=1",
            "--config.dynamics.widht=64"]
    assert unknown_override(argv) == (
        "--config.dynamics.widht=64: config.dynamics has no field 'widht'; the nearest names: "
        "config.dynamics.width, config.dynamics.depth, config.dynamics.registers")
    assert unknown_override(argv[:3]) is None
    out = subprocess.run(
        [sys.executable, os.path.join("launch", "run.py"), "--config=configs/calvin.py:tiny",
         "--config.data.nonexistent=3"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "config error: --config.data.nonexistent=3: config.data has no field 'nonexistent'; "
        "the nearest names: config.data.normalise_actions, config.data.sim_episode_length, "
        "config.data.coinrun_scripted"]


def test_the_data_stage_checks_the_action_classes_the_clips_need(tmp_path):
    """Discrete actions 0..3 in the user's episodes: no classes, or too few, stop the run right
    after the data stage (not after tokenizer training), naming the field and what fits."""
    source = tmp_path / "episodes"
    source.mkdir()
    rng = np.random.default_rng(0)
    for e in range(4):
        np.savez(source / f"ep{e}.npz", frames=rng.integers(0, 255, (24, 16, 16, 3), np.uint8),
                 actions=np.array([0, 1, 2, 3] * 6, np.int32))
    config = calvin.get_config("tiny")
    config.data.update(dict(format="episodes", path=str(source), eval_fraction=0.25))
    config.stages = "data"
    with pytest.raises(settings.ConfigError, match=r"config\.data\.action_classes: .* discrete "
                       r"actions .*no class counts given; the largest action per part is \[3\], "
                       r"so e\.g\. --config\.data\.action_classes=\"\(4,\)\""):
        run(config, str(tmp_path / "run"))
    config.data.action_classes = (3,)
    with pytest.raises(settings.ConfigError, match=r"config\.data\.action_classes: .*outside the "
                                                   r"classes \(3,\)"):
        run(config, str(tmp_path / "run"))
    config.data.action_classes = (4,)
    run(config, str(tmp_path / "run"))
