"""The main job: the stages of launch/pipeline.py (data -> tokenizer -> latents -> dynamics ->
eval), each resumable.

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

import importlib.util
import json
import os
import time
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from data.clips import ClipStore
from data.episode import DataError, SkippableDataError
from launch import pipeline, provenance, settings
from launch.checkpoints import CheckpointMismatchError
from launch.distributed import make_mesh
from launch.stages import Workdir, check_data_actions
from launch.workdir import WorkdirError, apply_config, locked, same_data_settings
from world.serialise import ModelFileError

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
    except ValueError as error:  # settings.ConfigError lists every problem, one per line
        raise SystemExit("\n".join(f"config error: {line}" for line in str(error).splitlines())
                         ) from None
    work = Workdir(workdir)
    with locked(workdir):  # then nothing is written before the config is compared and checked
        _check_existing_clips(config, work)
        apply_config(workdir, config, restart)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("workdir config")
        provenance.adopt(work)
        _run_stages(config, work, mesh, started)


def _check_existing_clips(config, work: Workdir) -> None:
    """Before anything is written: the action classes must fit the actions of the workdir's
    finished clips, when they were made with the same data settings."""
    if same_data_settings(work.root, config) and os.path.isfile(os.path.join(work.clips,
                                                                             "index.json")):
        try:
            clips = ClipStore(work.clips)
        except DataError:  # unfinished: the data stage completes and checks them
            return
        check_data_actions(config, clips)


def _run_stages(config, work: Workdir, mesh, started: float) -> None:
    timings = {}
    for name in settings.stages(config):
        stage = pipeline.stage(name)
        start = time.perf_counter()
        print(f"[run] stage {name}", flush=True)
        stage.run(config, work, mesh)  # with its provenance checks (launch/pipeline.py)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[run] stage {name} done in {timings[name]:.0f}s", flush=True)
    timings["total"] = round(time.perf_counter() - started, 1)
    with open(os.path.join(work.root, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    print(f"[run] finished in {timings['total']:.0f}s: {timings}", flush=True)


def unknown_override(argv: Sequence[str]) -> str | None:
    """The first `--config.<field>=...` argument that names no field of the `--config` file's
    config, as one line with the nearest valid names; None if every field exists."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, variant = spec.partition(":")
    loader = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            message = settings.unknown_field(config, field)
            if message:
                return f"{arg}: {message}"
    return None


def parse_flags(argv: Sequence[str]):
    """absl's flag parsing, except that an override of a field the config lacks (which
    ml_collections reports as a long AttributeError or KeyError traceback) ends the command with
    one line naming it and the nearest valid names."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:
        message = unknown_override(argv) or f"{type(error).__name__}: {error}"
        raise SystemExit(f"config error: {message}") from None


def data_error_line(error: DataError) -> str:
    """The one line a data error ends the command with; it names --config.data.skip_bad only
    where leaving the bad file out would get past it."""
    if isinstance(error, SkippableDataError):
        return f"data error: {error} (on the command line: --config.data.skip_bad=True)"
    return f"data error: {error}"


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
        raise SystemExit(data_error_line(error)) from None
    except ModelFileError as error:  # a saved model (models/<part>) that does not load
        raise SystemExit(f"model error: {error} (or make it again with --restart=<its stage>)"
                         ) from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
