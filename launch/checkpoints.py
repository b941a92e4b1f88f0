"""Orbax checkpoints of a train state plus the data iterator's state.

A checkpoint holds the state's array leaves (model, optimizer, loss state, step) and the loader
state (JSON). Orbax writes each step to a temporary folder and renames it when complete, so a
process killed at any moment leaves the last complete checkpoint intact. Restoring reads the
leaves straight into the shardings of the current mesh, so a checkpoint written on N devices
restores on M.

Restoring takes the newest checkpoint that restores. One that does not (a damaged or truncated
file) is moved aside to `<directory>/unreadable_step_<step>` with a printed line that names it
and the reason, and the next older one is tried. A checkpoint whose stored array shapes differ
from the state being restored (the model or optimizer config changed) raises
CheckpointMismatchError before any array is read.
"""

import os

import jax
import orbax.checkpoint as ocp

SET_ASIDE = "unreadable_step_"  # prefix of checkpoints that failed to restore


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not fit the state being restored; the message says which."""


class Checkpoints:
    """Checkpoints of one stage under `directory` (the newest `keep` are kept)."""

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "loader": ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, loader_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.tree.leaves(state)),
            loader=ocp.args.JsonSave(loader_state),
        ), force=True)
        self.manager.wait_until_finished()

    def restore(self, template, shardings):
        """(state, loader_state) of the newest checkpoint that restores, laid out like
        `shardings`; or None when there is none (see the module docstring)."""
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in
                    zip(jax.tree.leaves(template), jax.tree.leaves(shardings), strict=True)]
        set_aside = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._check_fits(step, abstract)
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), loader=ocp.args.JsonRestore()))
            except CheckpointMismatchError:
                raise
            except Exception as error:  # tensorstore reports damaged files as plain Exceptions
                set_aside.append(self._set_aside(step, error))
                continue
            state = jax.tree.unflatten(jax.tree.structure(template), restored.state)
            return state, restored.loader
        if set_aside:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory} restores; moved aside: {', '.join(set_aside)}."
                " Run again to train this stage from the start.")
        return None

    def _check_fits(self, step: int, abstract: list) -> None:
        stored = self.manager.item_metadata(step)["state"].tree
        advice = (f"the model or optimizer config changed since it was written: use a new "
                  f"--workdir, or --restart={os.path.basename(self.directory)} to train this "
                  "stage anew")
        where = f"the checkpoint of step {step} in {self.directory}"
        if len(stored) != len(abstract):
            raise CheckpointMismatchError(f"{where} holds {len(stored)} arrays where the "
                                          f"configured state has {len(abstract)}; {advice}")
        for i, (have, want) in enumerate(zip(stored, abstract, strict=True)):
            if tuple(have.shape) != tuple(want.shape):
                raise CheckpointMismatchError(
                    f"{where}: array {i} is stored as {tuple(have.shape)}, the configured state "
                    f"has {tuple(want.shape)}; {advice}")

    def _set_aside(self, step: int, error: Exception) -> str:
        """Moves a checkpoint that does not restore out of the manager's sight; says so."""
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        target = os.path.join(self.directory, f"{SET_ASIDE}{step}")
        suffix = 1
        while os.path.exists(target):
            target = os.path.join(self.directory, f"{SET_ASIDE}{step}.{suffix}")
            suffix += 1
        if jax.process_index() == 0:
            os.rename(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        print(f"[checkpoints] skipped the checkpoint of step {step} in {self.directory}: it does "
              f"not restore ({type(error).__name__}: {reason}); moved it to {target}", flush=True)
        return target
