"""launch/play.py's failures: one line naming the problem and the command that fixes it; the
workdir's settings and held-out clips."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dynamics import ActionSpec
from play.workdir import PlayError, dataset_fps, load_contexts, load_world_model, read_defaults
from tests.play_models import tiny_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_workdir_is_one_line_with_the_training_command(tmp_path):
    missing = tmp_path / "runs" / "nothing"
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch", "play.py"),
                          f"--workdir={missing}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"play: {missing}: no such workdir")
    assert f"python launch/run.py --config=configs/calvin.py:small --workdir={missing}" in lines[0]


def test_workdir_without_dynamics_model_names_the_stage_to_run(tmp_path):
    tiny_world().save(str(tmp_path / "models"))
    shutil.rmtree(tmp_path / "models" / "dynamics")
    (tmp_path / "config.json").write_text(json.dumps({"name": "calvin", "variant": "tiny"}))
    with pytest.raises(PlayError) as error:
        load_world_model(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "has no dynamics model" in message
    assert (f"python launch/run.py --config=configs/calvin.py:tiny --workdir={tmp_path} "
            "--config.stages=tokenizer,dynamics") in message


def test_model_of_another_action_space_is_refused(tmp_path):
    tiny_world(ActionSpec("multipart", classes=(2, 3))).save(str(tmp_path))
    with pytest.raises(PlayError, match=r"multi-part actions with classes \(2, 3\).*"
                                        r"python launch/run.py --config=configs/minecraft.py"):
        load_world_model(str(tmp_path))


def test_settings_and_contexts_of_a_trained_workdir(tiny_run, tmp_path):
    defaults = read_defaults(tiny_run)
    # the simulator at 30 Hz (frame skip 1); eval context 4; sequences up to 8
    assert (defaults.fps, defaults.context_frames, defaults.capacity) == (30.0, 4, 8)
    contexts = load_contexts(tiny_run, 4)
    assert contexts.frames.shape[1:] == (4, 16, 16, 3) and contexts.actions.shape[2] == 7
    assert contexts.has_action.dtype == bool and len(contexts) >= 1
    assert load_contexts(tiny_run, 1000) is None  # no clip is that long
    assert read_defaults(str(tmp_path)).fps == 10.0  # no config.json
    assert [dataset_fps({"data": d}) for d in (
        {"format": "sim", "sim_frame_skip": 3}, {"format": "coinrun"}, {"format": "vpt"},
        {"format": "craftax"})] == [10.0, 15.0, 20.0, 10.0]
    assert np.issubdtype(contexts.frames.dtype, np.uint8)
