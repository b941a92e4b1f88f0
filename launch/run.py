"""The main job: the stages of launch/pipeline.py (data -> tokenizer -> latents -> dynamics ->
eval), each resumable.

    python launch/run.py --config=configs/calvin.py [--workdir=runs/calvin]
    python launch/run.py --config=configs/calvin.py:small --config.stages=dynamics,eval
    python launch/run.py --config=configs/calvin.py --config.train.dynamics.steps=5000

Re-running the same command after a crash or a kill resumes from the last complete checkpoint
of the stage in progress (finished stages are skipped quickly). `--multihost` calls
jax.distributed.initialize() first; run the same command on every host.
"""

import json
import os
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from data.episode import DataError
from launch import pipeline, settings
from launch.distributed import make_mesh
from launch.stages import Workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<dataset>.py[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where the run lives (default runs/<name>)")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")


def run(config, workdir: str) -> None:
    started = time.perf_counter()
    print(f"[run] {config.name}:{config.variant} ({config.variant_reason}); workdir {workdir}; "
          f"{jax.device_count()} {jax.default_backend()} device(s)", flush=True)
    try:
        stages = pipeline.validate(config, jax.device_count())
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    except ValueError as error:
        raise SystemExit(f"config error: {error}") from None
    work = Workdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    timings = {}
    for stage in stages:
        start = time.perf_counter()
        print(f"[run] stage {stage.name}", flush=True)
        stage.run(config, work, mesh)
        timings[stage.name] = round(time.perf_counter() - start, 1)
        print(f"[run] stage {stage.name} done in {timings[stage.name]:.0f}s", flush=True)
    timings["total"] = round(time.perf_counter() - started, 1)
    with open(os.path.join(workdir, "timings.json"), "w") as f:
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
        run(config, _WORKDIR.value or os.path.join("runs", f"{config.name}-{config.variant}"))
    except settings.ConfigError as error:  # found by a stage (e.g. actions outside their classes)
        raise SystemExit(f"config error: {error}") from None
    except DataError as error:
        raise SystemExit(f"data error: {error} (on the command line: "
                         "--config.data.skip_bad=True)") from None


if __name__ == "__main__":
    app.run(main)
