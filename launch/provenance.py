"""What each stage's output was made from, so that no stage uses or mixes outputs of other inputs.

Each stage folder holds `made_from.json`, written before the stage writes anything else there:

    tokenizer/made_from.json  {"clips": C}
    latents/made_from.json    {"clips": C, "tokenizer": T}   T: the checkpoint that encoded them
    dynamics/made_from.json   {"latents": L}
    eval/made_from.json       {"tokenizer": T, "latents": L, "dynamics": D}   (after eval)

C is the sha256 of the clip plan (clips/index.json), a checkpoint T or D is {"step", "sha256" of
its files}, and L is {"sha256" of the latents' record and statistics, "tokenizer_step"}.

When a stage's inputs are not what its record says:
- tokenizer or dynamics with checkpoints: the run stops naming --restart=<stage>;
- latents: encoded again from scratch (with a message), unless dynamics checkpoints were trained
  on them: then the run stops naming --restart=dynamics (re-encoding would change the latents
  and their statistics under that model);
- eval: stops naming the stage to run again.
A workdir written before these records existed gets them at the start of a run (`adopt`), which
takes its outputs as made from the inputs the workdir holds then, and says so.
"""

import hashlib
import json
import os
import shutil

from data.clips import INDEX_FILE, read_index, write_json
from launch.workdir import WorkdirError

RECORD = "made_from.json"


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def read_record(folder: str) -> dict | None:
    path = os.path.join(folder, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_record(folder: str, record: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, RECORD), record)


def checkpoint_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in `directory` (orbax names them by step)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def checkpoint_identity(directory: str) -> dict | None:
    """{"step", "sha256"} of the newest checkpoint's files (names and contents), or None."""
    steps = checkpoint_steps(directory)
    if not steps:
        return None
    root = os.path.join(directory, str(steps[-1]))
    digest = hashlib.sha256()
    for folder, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return {"step": steps[-1], "sha256": digest.hexdigest()}


def clips_identity(work) -> str:
    return _sha(read_index(work.clips)["plan"])


def latents_identity(work) -> dict | None:
    """The identity of finished latents (None while they are missing or unfinished)."""
    record = read_record(work.latents)
    index_path = os.path.join(work.latents, INDEX_FILE)
    if record is None or not os.path.isfile(index_path):
        return None
    with open(index_path) as f:
        stats = json.load(f).get("latent_stats")
    return {"sha256": _sha([record, stats]), "tokenizer_step": record["tokenizer"]["step"]}


def _has_latents(work) -> bool:
    return os.path.isdir(work.latents) and bool(set(os.listdir(work.latents)) - {RECORD})


def _describe(record: dict | None) -> str:
    if not record:
        return "nothing recorded"
    parts = []
    if "clips" in record:
        parts.append(f"clips {record['clips'][:8]}")
    for key in ("tokenizer", "dynamics"):
        if record.get(key):
            parts.append(f"the {key} checkpoint of step {record[key]['step']} "
                         f"({record[key]['sha256'][:8]})")
    if record.get("latents"):
        parts.append(f"latents {record['latents']['sha256'][:8]} (encoded by the tokenizer of "
                     f"step {record['latents']['tokenizer_step']})")
    return ", ".join(parts)


def _stale(folder: str, record: dict | None, current: dict) -> str:
    return (f"{folder} was made from {_describe(record)}, but the workdir now holds "
            f"{_describe(current)}")


def _require(folder: str, stage: str, current: dict) -> None:
    """Before a training stage: its checkpoints must come from `current`; records it."""
    record = read_record(folder)
    if record == current:
        return
    if checkpoint_steps(folder):
        raise WorkdirError(f"{_stale(folder, record, current)}; use a new --workdir, or pass "
                           f"--restart={stage} to train it again on them.")
    write_record(folder, current)


def tokenizer_inputs(work) -> None:
    """Before the tokenizer stage."""
    _require(work.tokenizer, "tokenizer", {"clips": clips_identity(work)})


def dynamics_inputs(work) -> None:
    """Before the dynamics stage (the latents must be finished)."""
    latents = latents_identity(work)
    if latents is None:
        raise WorkdirError(f"{work.latents} is missing or unfinished; run the latents stage "
                           "(--config.stages=latents,dynamics).")
    _require(work.dynamics, "dynamics", {"latents": latents})


def latents_inputs(work) -> None:
    """Before encoding (after the tokenizer was restored): latents of another tokenizer or other
    clips are deleted to be encoded again, unless dynamics checkpoints were trained on them."""
    current = {"clips": clips_identity(work), "tokenizer": checkpoint_identity(work.tokenizer)}
    record = read_record(work.latents)
    if record == current:
        return
    if _has_latents(work):
        trained_on = read_record(work.dynamics)
        if checkpoint_steps(work.dynamics) and trained_on and trained_on.get(
                "latents") == latents_identity(work):
            raise WorkdirError(
                f"{_stale(work.latents, record, current)}. Encoding them again would change the "
                f"latents (and their statistics) under the dynamics checkpoints in "
                f"{work.dynamics}, which were trained on them: pass --restart=dynamics to encode "
                "again and train dynamics anew, or use a new --workdir.")
        print(f"[latents] {_stale(work.latents, record, current)}: encoding every clip again",
              flush=True)
        shutil.rmtree(work.latents)
    write_record(work.latents, current)


def check_eval_inputs(work) -> None:
    """Before eval: the latents must come from the current tokenizer, dynamics from them."""
    current = {"clips": clips_identity(work), "tokenizer": checkpoint_identity(work.tokenizer)}
    record = read_record(work.latents)
    if record != current:
        raise WorkdirError(f"{_stale(work.latents, record, current)}; eval would decode them "
                           "with another tokenizer: run the latents stage first "
                           "(--config.stages=latents,dynamics,eval).")
    trained_on = read_record(work.dynamics)
    latents = {"latents": latents_identity(work)}
    if trained_on != latents:
        raise WorkdirError(f"{_stale(work.dynamics, trained_on, latents)}; run the dynamics stage "
                           "first (--restart=dynamics --config.stages=dynamics,eval).")


def record_eval(work) -> None:
    """After eval: what its outputs were made from."""
    write_record(work.eval, {"tokenizer": checkpoint_identity(work.tokenizer),
                             "latents": latents_identity(work),
                             "dynamics": checkpoint_identity(work.dynamics)})


def adopt(work) -> None:
    """Gives the outputs of a workdir written before records existed the records of the inputs
    it holds now (before any stage runs), and says so."""
    def note(folder):
        print(f"[run] {folder} has no {RECORD} (written by an older version): taking it as made "
              "from what the workdir holds now", flush=True)

    if not os.path.isfile(os.path.join(work.clips, INDEX_FILE)):
        return
    if checkpoint_steps(work.tokenizer) and read_record(work.tokenizer) is None:
        note(work.tokenizer)
        write_record(work.tokenizer, {"clips": clips_identity(work)})
    if _has_latents(work) and read_record(work.latents) is None and checkpoint_steps(
            work.tokenizer):
        note(work.latents)
        write_record(work.latents, {"clips": clips_identity(work),
                                    "tokenizer": checkpoint_identity(work.tokenizer)})
    latents = latents_identity(work)
    if checkpoint_steps(work.dynamics) and read_record(work.dynamics) is None and latents:
        note(work.dynamics)
        write_record(work.dynamics, {"latents": latents})
