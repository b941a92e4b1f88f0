"""The main job on an existing workdir: ownership, the lock, changed configs, stale outputs."""


import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from configs import calvin
from data.clips import open_shard, read_index
from launch import provenance
from launch.checkpoints import CheckpointMismatchError
from launch.distributed import make_mesh
from launch.run import run
from launch.settings import ConfigError
from launch.stages import Workdir, new_dynamics_state, trained_tokenizer
from launch.trainer import restore_state
from launch.workdir import WorkdirError, apply_config, locked
from tests.test_data_safety import listing, locked_by_another_process


def test_a_folder_that_is_not_a_workdir_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "figures").mkdir()
    with pytest.raises(WorkdirError, match=r"holds figures/, thesis\.tex\) and the main job did "
                                           r"not make it \(no config\.json\)"):
        run(calvin.get_config("tiny"), str(tmp_path))
    assert listing(tmp_path) == {"thesis.tex": b"mine"}


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_first(tmp_path):
    workdir = tmp_path / "run"
    with locked_by_another_process(workdir) as pid:
        with pytest.raises(WorkdirError, match=rf"run is in use by another process \(pid {pid} "
                                               r"on .*use another --workdir"):
            run(calvin.get_config("tiny"), str(workdir))
        assert os.listdir(workdir) == [".lock"]  # nothing written
    with locked(str(workdir)):  # free once the other process is done
        pass


def copy_of(tiny_run, tmp_path):
    """A copy of conftest's tiny trained workdir (every stage but eval), shared by the session."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


def test_a_changed_model_config_stops_before_anything_is_written(tiny_run, tmp_path):
    """Width 64 after training at 32, or seed 1 after seed 0: one error naming the fields and
    the choices, and config.json untouched; --restart=dynamics starts dynamics over at 64."""
    workdir = copy_of(tiny_run, tmp_path)
    before = listing(workdir)
    config = calvin.get_config("tiny")
    config.stages = "dynamics"
    config.dynamics.width = 64
    with pytest.raises(ConfigError, match=r"config\.dynamics\.width 32 -> 64; see .*config\.json\)"
                                          r".*the dynamics stage\(s\) wrote there: use a new "
                                          r"--workdir, or pass --restart=dynamics"):
        run(config, str(workdir))
    seed = calvin.get_config("tiny")
    seed.seed = 1
    with pytest.raises(ConfigError, match=r"config\.seed 0 -> 1.*the data, tokenizer, latents, "
                                          r"dynamics stage\(s\).*--restart=data"):
        run(seed, str(workdir))
    with pytest.raises(ConfigError, match=r"--restart=dynamics"):  # a later stage is not enough
        run(config, str(workdir), restart=("eval",))
    assert listing(workdir) == before

    config.train.dynamics.steps = 3
    run(config, str(workdir), restart=("dynamics",))
    assert json.loads((workdir / "config.json").read_text())["dynamics"]["width"] == 64
    for kept in ("clips", "tokenizer", "latents"):  # earlier stages are left as they were
        assert {k: v for k, v in listing(workdir).items() if k.startswith(kept)} == {
            k: v for k, v in before.items() if k.startswith(kept)}
    assert provenance.checkpoint_steps(str(workdir / "dynamics")) == [3]  # anew, at width 64
    restore = lambda config: restore_state(str(workdir / "dynamics"), new_dynamics_state(
        config, Workdir(str(workdir))), make_mesh())
    assert int(restore(config).step) == 3
    with pytest.raises(CheckpointMismatchError, match=r"is stored as \(.*64"):
        restore(calvin.get_config("tiny"))


def test_changes_that_invalidate_nothing_are_kept(tiny_run, tmp_path, capsys):
    workdir = copy_of(tiny_run, tmp_path)
    before = listing(workdir)
    config = calvin.get_config("tiny")
    config.train.tokenizer.steps, config.eval.horizon = 9, 3
    apply_config(str(workdir), config)
    assert "eval.horizon 4 -> 3, train.tokenizer.steps 6 -> 9" in capsys.readouterr().out
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["tokenizer"]["steps"] == 9
    assert {k: v for k, v in listing(workdir).items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"}


def test_more_tokenizer_training_never_leaves_stale_latents_in_use(tiny_run, tmp_path):
    """The tokenizer trains on (6 -> 9 steps) in a workdir written before records existed: the
    latents stage stops rather than re-encode under the trained dynamics, eval refuses the old
    latents, and --restart=dynamics encodes every clip again with the step-9 tokenizer and
    trains dynamics on those."""
    workdir = copy_of(tiny_run, tmp_path)
    work = Workdir(str(workdir))
    for folder in (work.tokenizer, work.latents, work.dynamics):
        os.remove(os.path.join(folder, provenance.RECORD))  # as an older version left it
    old_latents = {k: v for k, v in listing(workdir).items() if k.startswith("latents/train")}
    config = calvin.get_config("tiny")
    config.stages = "data,tokenizer,latents,dynamics"
    config.train.tokenizer.steps, config.train.dynamics.steps = 9, 8
    with pytest.raises(WorkdirError, match=r"latents was made from .*the tokenizer checkpoint "
                                           r"of step 6 .*holds .*step 9 .*under the dynamics "
                                           r"checkpoints .*--restart=dynamics"):
        run(config, str(workdir))
    assert {k: v for k, v in listing(workdir).items() if k.startswith("latents/train")} == \
        old_latents
    assert provenance.checkpoint_steps(work.dynamics) == [3, 6]
    config.stages = "eval"
    with pytest.raises(WorkdirError, match=r"eval would decode them with another tokenizer"):
        run(config, str(workdir))

    config.stages = "data,tokenizer,latents,dynamics"
    run(config, str(workdir), restart=("dynamics",))
    tokenizer = trained_tokenizer(work)
    index = read_index(work.latents)
    values = []
    for split, name in [(s, name) for s in ("train", "eval") for name, _ in index["shards"][s]]:
        frames = open_shard(os.path.join(work.clips, split, name))["frames"]
        latents = open_shard(os.path.join(work.latents, split, name))["latents"]
        np.testing.assert_allclose(latents, tokenizer.encode(jnp.asarray(frames)), atol=1e-5)
        if split == "train":
            values.append(np.asarray(latents, np.float64).ravel())
    values = np.concatenate(values)
    np.testing.assert_allclose([index["latent_stats"]["mean"], index["latent_stats"]["std"]],
                               [values.mean(), values.std()], rtol=1e-4)
    assert {k: v for k, v in listing(workdir).items() if k.startswith("latents/train")} != \
        old_latents
    assert provenance.checkpoint_steps(work.dynamics) == [6, 8]
    assert provenance.read_record(work.dynamics) == {"latents": provenance.latents_identity(work)}
    provenance.check_eval_inputs(work)  # eval would now find everything consistent


def test_dynamics_trained_on_other_latents_is_not_reused(tiny_run, tmp_path):
    work = Workdir(str(copy_of(tiny_run, tmp_path)))
    provenance.check_eval_inputs(work)  # consistent as trained
    path = Path(work.latents) / "index.json"
    index = json.loads(path.read_text())
    index["latent_stats"]["std"] *= 2  # as if the latents had been made again differently
    path.write_text(json.dumps(index))
    with pytest.raises(WorkdirError, match=r"dynamics was made from latents .*--restart=dynamics"):
        provenance.dynamics_inputs(work)
    with pytest.raises(WorkdirError, match=r"dynamics was made from latents .*run the dynamics"):
        provenance.check_eval_inputs(work)


def test_a_broken_config_json_is_named(tiny_run, tmp_path):
    workdir = copy_of(tiny_run, tmp_path)
    (workdir / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON .*restore it, or use "
                                          r"a new --workdir"):
        run(calvin.get_config("tiny"), str(workdir))
