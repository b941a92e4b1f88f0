"""The training loop every stage shares: resume, step, log, checkpoint, stop on persistent NaNs.

One compact line per `log_every` steps: stage, step/total, loss terms, steps/s, ETA; the same
scalars go to TensorBoard under `<workdir>/logs/<stage>`. Checkpoints (state + loader state) are
written every `checkpoint_every` steps and at the end; re-running resumes from the newest one with
the same next batch (the step's random key is fold_in(key, step)). If every step of a logging
interval of at least `max_skipped_in_a_row` steps was skipped for a non-finite loss, the run stops
with an error and the last checkpoint (written before the trouble) stays as it is.
"""

import os
import time

import jax
import optax
from tensorboardX import SummaryWriter

from launch.checkpoints import Checkpoints
from launch.distributed import process_batch, shard_state, state_shardings

OPTIMIZERS = ("adamw", "muon")


def wsd_schedule(train, peak: float) -> optax.Schedule:
    """Warmup-stable-decay: linear warmup to `peak`, constant, linear decay to 0 at the end."""
    stable = max(train.steps - train.warmup_steps - train.decay_steps, 0)
    return optax.join_schedules([
        optax.linear_schedule(0.0, peak, max(train.warmup_steps, 1)),
        optax.constant_schedule(peak),
        optax.linear_schedule(peak, 0.0, max(train.decay_steps, 1)),
    ], boundaries=[train.warmup_steps, train.warmup_steps + stable])


def muon_labels(params):
    """"muon" for the 2-D weights inside transformer blocks (the hidden matrices), "adamw" for
    everything else: embeddings, register and level tables, readouts, norms (the Muon recipe)."""
    def label(path, leaf):
        return "muon" if leaf.ndim == 2 and ".blocks[" in jax.tree_util.keystr(path) else "adamw"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(train) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (`train.optimizer = "adamw"`) or Muon on the transformer
    blocks' matrices with AdamW on the rest ("muon", peak rate `train.muon_lr`); both follow the
    warmup-stable-decay schedule."""
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}.")
    adamw = optax.adamw(wsd_schedule(train, train.lr), b1=train.b1, b2=train.b2,
                        weight_decay=train.weight_decay)
    update = adamw
    if train.optimizer == "muon":
        muon = optax.contrib.muon(wsd_schedule(train, train.muon_lr), beta=train.muon_beta,
                                  weight_decay=train.weight_decay)
        update = optax.multi_transform({"adamw": adamw, "muon": muon}, muon_labels)
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), update)


def _eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def restore_state(directory: str, template, mesh):
    """The newest checkpointed state of a stage laid out for `mesh`, or None."""
    restored = Checkpoints(directory).restore(template, state_shardings(mesh, template))
    return None if restored is None else restored[0]


def train(name: str, workdir: str, state, step_fn, loader, train, mesh, *, key,
          step_kwargs=lambda step: {}, export=None):
    """Runs `step_fn(state, batch, key, **step_kwargs(step))` up to `train.steps`; returns state.
    `export(model, step, overwrite=...)` is called with the trained model when training is
    complete: overwrite=True right after training, False when it already was complete."""
    checkpoints = Checkpoints(os.path.join(workdir, name))
    state = shard_state(mesh, state)
    restored = checkpoints.restore(state, state_shardings(mesh, state))
    if restored is not None:
        state, loader_state = restored
        loader.set_state(loader_state)
        print(f"[{name}] resumed from the checkpoint at step {int(state.step)}", flush=True)
    start, total = int(state.step), train.steps
    if start >= total:
        print(f"[{name}] already trained ({start}/{total} steps)", flush=True)
        if export is not None:
            export(state.model, start, overwrite=False)
        return state
    writer = SummaryWriter(os.path.join(workdir, "logs", name))
    last_time, last_step, last_skipped = time.perf_counter(), start, int(state.skipped)
    streak = 0  # consecutive skipped steps known so far
    for step in range(start, total):
        batch = process_batch(mesh, next(loader))
        state, metrics = step_fn(state, batch, jax.random.fold_in(key, step), **step_kwargs(step))
        done = step + 1
        if done % train.log_every == 0 or done == total:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            rate = (done - last_step) / (now - last_time)
            skipped = int(metrics.pop("skipped"))
            streak = streak + (done - last_step) if skipped - last_skipped == done - last_step \
                else 0
            terms = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"[{name}] step {done}/{total} {terms} skipped {skipped} | {rate:.2f} steps/s "
                  f"ETA {_eta((total - done) / rate)}", flush=True)
            for k, v in metrics.items():
                writer.add_scalar(f"{name}/{k}", v, done)
            writer.add_scalar(f"{name}/steps_per_second", rate, done)
            if streak >= train.max_skipped_in_a_row:
                writer.close()
                raise FloatingPointError(
                    f"[{name}] the last {streak} steps all had a non-finite loss or gradient; "
                    f"stopping. The newest checkpoint in {checkpoints.manager.directory} is from "
                    f"before them; lower config.train.{name}.lr or check the data.")
            last_time, last_step, last_skipped = now, done, skipped
        if done % train.checkpoint_every == 0 or done == total:
            new_skips = int(state.skipped) - last_skipped
            if streak == 0 and not (new_skips and new_skips == done - last_step):
                checkpoints.save(done, state, loader.get_state())
    writer.close()
    if export is not None:
        export(state.model, total, overwrite=True)
    return state
