"""Orbax checkpoints of a train state plus the data iterator's state.

A checkpoint holds the state's array leaves (model, optimizer, loss state, step) and the loader
state (JSON). Orbax writes each step to a temporary folder and renames it when complete, so a
process killed at any moment leaves the last complete checkpoint intact. Restoring reads the
leaves straight into the shardings of the current mesh, so a checkpoint written on N devices
restores on M.
"""

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Checkpoints of one stage under `directory` (the newest `keep` are kept)."""

    def __init__(self, directory: str, *, keep: int = 2):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
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
        """(state, loader_state) of the newest checkpoint, laid out like `shardings`; or None."""
        step = self.latest_step()
        if step is None:
            return None
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in
                    zip(jax.tree.leaves(template), jax.tree.leaves(shardings), strict=True)]
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), loader=ocp.args.JsonRestore()))
        return jax.tree.unflatten(jax.tree.structure(template), restored.state), restored.loader
