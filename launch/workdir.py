"""The workdir as a whole: whose it is, who is using it, and which config it was made with.

- Ownership: the main job writes only into a new or empty folder, or one that holds its
  `config.json` (an earlier run's workdir); anything else stops the run before it writes.
- Lock: a run holds an exclusive lock on `<workdir>/.lock` from before its first write to its
  end; a second run on the same workdir stops at once, naming the process that holds it.
- Config: before anything is written, the new config is compared with the workdir's
  `config.json`. A change that invalidates what a stage wrote (`INVALIDATES`: a model size, the
  seed, the data settings, the optimizer kind) stops the run with one line naming the fields,
  unless `--restart=<stage>` confirms that the stage and every later one start over (their
  outputs are deleted). Changes that invalidate nothing (more steps, another learning rate, eval
  settings) are listed and kept.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Sequence

import jax

from data.episode import DataError
from data.jobs import LOCK_FILE, FolderLock, check_own_folder
from launch import pipeline
from launch.settings import STAGES, ConfigError

CONFIG_FILE = "config.json"


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked; the message says why and what to do."""


def check_workdir(root: str) -> None:
    """Raises WorkdirError if `root` is a non-empty folder that is not a workdir of this job."""
    try:
        check_own_folder(root, CONFIG_FILE, "the main job",
                         "choose a new or empty --workdir (or an earlier run's workdir)")
    except DataError as error:
        raise WorkdirError(str(error)) from None


@contextlib.contextmanager
def locked(root: str):
    """Holds the workdir's exclusive lock (`<workdir>/.lock`) for the body; a second run on the
    same workdir raises WorkdirError naming the process that holds it. The processes of one
    multi-host job share the workdir: only process 0 takes the lock."""
    check_workdir(root)
    if jax.process_index() != 0:
        yield
        return
    try:
        lock = FolderLock(root, "wait for it to finish, or use another --workdir")
    except DataError as error:
        raise WorkdirError(str(error)) from None
    try:
        yield
    finally:
        lock.release()


# The stage whose output a changed config field invalidates (with every later stage's): the first
# rule whose prefix starts the dotted field name decides; fields no rule names (training length
# and schedule, eval, mesh, stages) change nothing that was written.
INVALIDATES = (
    ("data.workers", None), ("data.loader_threads", None), ("data.skip_bad", None),
    ("data.action_classes", "dynamics"), ("data.normalise_actions", "dynamics"),
    ("data.", "data"), ("seed", "data"),
    ("tokenizer.backend", None), ("tokenizer.remat", None), ("tokenizer.compute_dtype", None),
    ("tokenizer.", "tokenizer"), ("train.tokenizer.optimizer", "tokenizer"),
    ("dynamics.backend", None), ("dynamics.remat", None), ("dynamics.compute_dtype", None),
    ("dynamics.", "dynamics"), ("train.dynamics.optimizer", "dynamics"),
    ("train.dynamics.objective", "dynamics"),
    ("agent.eval_", "agent_eval"), ("agent.rl_", "agent_rl"), ("agent.gamma", "agent_rl"),
    ("agent.lam", "agent_rl"), ("agent.alpha", "agent_rl"), ("agent.beta", "agent_rl"),
    ("agent.", "agent_finetune"),
)
# What each stage writes into the workdir (the first entry tells whether it has run): the
# stage registry's `writes`.
OUTPUTS = {stage.name: tuple(path.rstrip("/") for path in stage.writes)
           for stage in pipeline.STAGES}
GENERATED_MARKERS = ("simulator.json", "coinrun.json", "craftax.json")  # source/ was generated


def invalidated_stage(field: str) -> str | None:
    return next((stage for prefix, stage in INVALIDATES if field.startswith(prefix)), None)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


PER_RUN = ("stages", "variant_reason")  # fields that describe one run, not the workdir


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(field, old value, new value) of every field both configs have and that differs (but the
    per-run ones)."""
    old, new = _flatten(old), _flatten(new)
    return [(key, old[key], new[key]) for key in sorted(new)
            if key in old and old[key] != new[key] and key not in PER_RUN]


def read_config(root: str) -> dict | None:
    """The workdir's recorded config.json, or None when there is none; ConfigError naming the
    file when it is not valid JSON."""
    path = os.path.join(root, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); it records the run's config: "
                              "restore it, or use a new --workdir.") from e


def same_data_settings(root: str, config) -> bool:
    """Whether the workdir's config.json exists and no changed field invalidates its data."""
    old = read_config(root)
    if old is None:
        return False
    changes = config_changes(old, json.loads(config.to_json_best_effort()))
    return all(invalidated_stage(field) != "data" for field, _, _ in changes)


def has_output(root: str, stage: str) -> bool:
    folder = os.path.join(root, OUTPUTS[stage][0])
    return os.path.isdir(folder) and any(e != LOCK_FILE for e in os.listdir(folder))


def _later(stage: str) -> list[str]:
    return list(STAGES[STAGES.index(stage):])


def apply_config(root: str, config, restart: Sequence[str] = ()) -> None:
    """Compares `config` with the workdir's config.json before anything is written, then writes
    it. A changed field that invalidates a stage with output (`INVALIDATES`) raises ConfigError
    naming the fields and the choices, unless `restart` names that stage or an earlier one; the
    outputs of the restarted stage and every later one are deleted first (with a message)."""
    unknown = [s for s in restart if s not in STAGES]
    if unknown:
        raise ConfigError(f"--restart: unknown stage(s) {unknown}; name some of {STAGES}.")
    new = json.loads(config.to_json_best_effort())
    path = os.path.join(root, CONFIG_FILE)
    old = read_config(root)
    changes = [] if old is None else config_changes(old, new)
    invalid = [invalidated_stage(field) for field, _, _ in changes]
    invalid = [s for s in STAGES if s in invalid]
    first_restart = next((s for s in STAGES if s in restart), None)
    if invalid and any(has_output(root, s) for s in _later(invalid[0])) and (
            first_restart is None or STAGES.index(first_restart) > STAGES.index(invalid[0])):
        listed = ", ".join(f"config.{field} {old!r} -> {value!r}" for field, old, value in changes
                           if invalidated_stage(field))
        redo = [s for s in _later(invalid[0]) if has_output(root, s)]
        raise ConfigError(
            f"{root} was made with another config ({listed}; see {path}), which invalidates what "
            f"the {', '.join(redo)} stage(s) wrote there: use a new --workdir, or pass "
            f"--restart={invalid[0]} to delete those outputs and make them again.")
    if changes:
        print(f"[run] config changes since the last run in {root}: " + ", ".join(
            f"{field} {old!r} -> {value!r}" for field, old, value in changes), flush=True)
    if jax.process_index() != 0:  # the hosts of a multi-host job share the workdir
        return
    if first_restart:
        _delete_outputs(root, _later(first_restart))
    os.makedirs(root, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    os.replace(path + ".tmp", path)


def _delete_outputs(root: str, stages: Sequence[str]) -> None:
    for stage in stages:
        for name in OUTPUTS[stage]:
            folder = os.path.join(root, name)
            if name == "source" and not any(os.path.exists(os.path.join(folder, marker))
                                            for marker in GENERATED_MARKERS):
                continue  # only generated data is the data stage's own
            if os.path.exists(folder):
                print(f"[run] --restart: deleting {folder}", flush=True)
                if os.path.isdir(folder):
                    shutil.rmtree(folder)
                else:
                    os.remove(folder)
