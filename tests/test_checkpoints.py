"""Checkpoints that do not restore: fall back to an older one, or say what does not fit."""

import os

import jax
import numpy as np
import optax
import pytest

from core import Linear
from core.training import init_state
from launch.checkpoints import CheckpointMismatchError, Checkpoints
from launch.distributed import make_mesh
from launch.trainer import train
from tests.test_launch import CountingLoader, _regression, _train_config


def truncate_data_files(step_dir) -> None:
    """Cuts every array data file of a checkpoint step (the `d/` folders) in half."""
    for folder, _, names in os.walk(step_dir):
        if os.path.basename(folder) == "d":
            for name in names:
                with open(os.path.join(folder, name), "r+b") as f:
                    f.truncate(os.path.getsize(f.name) // 2)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """Steps 3 and 6 are kept; step 6 loses half of each data file. Training to 8 resumes from
    step 3, says that step 6 was skipped and why, and ends where an undisturbed run ends."""
    mesh = make_mesh()
    state, step = _regression()
    reference = train("stage", str(tmp_path / "a"), state, step, CountingLoader(),
                      _train_config(8), mesh, key=jax.random.key(1))
    state, _ = _regression()  # the step donates its input state
    train("stage", str(tmp_path / "b"), state, step, CountingLoader(), _train_config(6), mesh,
          key=jax.random.key(1))
    truncate_data_files(tmp_path / "b" / "stage" / "6")
    capsys.readouterr()
    state, _ = _regression()
    resumed = train("stage", str(tmp_path / "b"), state, step, CountingLoader(),
                    _train_config(8), mesh, key=jax.random.key(1))
    out = capsys.readouterr().out
    assert "skipped the checkpoint of step 6" in out and "does not restore" in out
    assert "resumed from the checkpoint at step 3" in out
    assert (tmp_path / "b" / "stage" / "unreadable_step_6").is_dir()
    assert len(out.splitlines()) < 12  # no traceback
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_another_model_shape_is_named_not_set_aside(tmp_path):
    state, _ = _regression()
    Checkpoints(str(tmp_path / "dynamics")).save(3, state, {"position": 3})
    wider = init_state(Linear(3, 5, key=jax.random.key(0)), optax.adam(1e-2))
    with pytest.raises(CheckpointMismatchError, match=r"step 3 in .*dynamics: array \d+ is "
                       r"stored as \(\d, \d\), the configured state has .*--restart=dynamics"):
        Checkpoints(str(tmp_path / "dynamics")).restore(wider, jax.tree.map(lambda x: x.sharding,
                                                                            wider))
    assert os.listdir(tmp_path / "dynamics") == ["3"]
