"""The main job: data -> tokenizer -> latents -> dynamics -> eval, each stage resumable.

    python launch/run.py --config=configs/calvin.py [--workdir=runs/calvin]
    python launch/run.py --config=configs/calvin.py:small --config.stages=dynamics,eval
    python launch/run.py --config=configs/calvin.py --config.train.dynamics.steps=5000

Re-running the same command after a crash or a kill resumes from the last complete checkpoint
of the stage in progress (finished stages are skipped quickly). A run holds the workdir's lock
and compares the config with the workdir's (`launch/workdir.py`); each stage checks that its
inputs are what its outputs were made from (`launch/provenance.py`). `--multihost` calls
jax.distributed.initialize() first; run the same command on every host (they share the workdir;
process 0 prepares the data).
"""

import json
import os
import time
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from data.episode import DataError
from launch import provenance, settings
from launch.checkpoints import CheckpointMismatchError
from launch.distributed import make_mesh
from launch.evaluate import eval_stage
from launch.stages import (
    Workdir,
    data_stage,
    dynamics_stage,
    latents_stage,
    tokenizer_stage,
)
from launch.workdir import WorkdirError, apply_config, locked

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<dataset>.py[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where the run lives (default runs/<name>)")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")
_RESTART = flags.DEFINE_list("restart", [], "stages to start over, deleting what they and every "
                             "later stage wrote (e.g. dynamics after changing its size)")


def run(config, workdir: str, restart: Sequence[str] = ()) -> None:
    """Runs the configured stages in `workdir`; `restart` names stages to start over (see
    launch/workdir.py: needed when a changed config field invalidates what a stage wrote)."""
    started = time.perf_counter()
    print(f"[run] {config.name}:{config.variant} ({config.variant_reason}); workdir {workdir}; "
          f"{jax.device_count()} {jax.default_backend()} device(s)", flush=True)
    try:
        settings.validate(config, jax.device_count())
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    except ValueError as error:
        raise SystemExit(f"config error: {error}") from None
    with locked(workdir):
        apply_config(workdir, config, restart)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("workdir config")
        provenance.adopt(Workdir(workdir))
        _run_stages(config, Workdir(workdir), mesh, started)


def _data_stage(config, work: Workdir) -> None:
    """The data stage on process 0 (the hosts of a multi-host job share the workdir)."""
    if jax.process_index() == 0:
        data_stage(config, work)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data stage")


def _run_stages(config, work: Workdir, mesh, started: float) -> None:
    stage_fns = {
        "data": lambda: _data_stage(config, work),
        "tokenizer": lambda: tokenizer_stage(config, work, mesh),
        "latents": lambda: latents_stage(config, work, mesh),
        "dynamics": lambda: dynamics_stage(config, work, mesh),
        "eval": lambda: eval_stage(config, work, mesh),
    }
    before = {"tokenizer": provenance.tokenizer_inputs, "dynamics": provenance.dynamics_inputs,
              "eval": provenance.check_eval_inputs}  # the latents stage checks its own
    timings = {}
    for stage in settings.stages(config):
        start = time.perf_counter()
        print(f"[run] stage {stage}", flush=True)
        if stage in before:
            before[stage](work)
        stage_fns[stage]()
        if stage == "eval":
            provenance.record_eval(work)
        timings[stage] = round(time.perf_counter() - start, 1)
        print(f"[run] stage {stage} done in {timings[stage]:.0f}s", flush=True)
    timings["total"] = round(time.perf_counter() - started, 1)
    with open(os.path.join(work.root, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    print(f"[run] finished in {timings['total']:.0f}s: {timings}", flush=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-checkpoint INFO lines out
    if _MULTIHOST.value:
        jax.distributed.initialize()
    config = _CONFIG.value
    if config is None:
        raise SystemExit("--config is required, e.g. --config=configs/calvin.py")
    try:
        run(config, _WORKDIR.value or os.path.join("runs", f"{config.name}-{config.variant}"),
            restart=_RESTART.value)
    except (settings.ConfigError, CheckpointMismatchError) as error:  # found by a stage
        raise SystemExit(f"config error: {error}") from None
    except WorkdirError as error:
        raise SystemExit(f"workdir error: {error}") from None
    except DataError as error:
        raise SystemExit(f"data error: {error} (on the command line: "
                         "--config.data.skip_bad=True)") from None


if __name__ == "__main__":
    app.run(main)
