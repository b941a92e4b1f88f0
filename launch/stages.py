"""The stages of the main job. Each reads only what earlier stages wrote to the workdir.

data       source (embedded simulator by default) -> <workdir>/clips (frames, actions)
tokenizer  clips -> <workdir>/tokenizer (checkpoints of the MAE tokenizer)
latents    clips + frozen encoder -> <workdir>/latents (same shard layout, latents not frames)
dynamics   latents -> <workdir>/dynamics (checkpoints of the world model)
eval       see launch/evaluate.py
The registry of these stages (order, reads, writes, checks) is launch/pipeline.py.
Every stage is resumable: finished work is found and skipped, checkpoints resume training. The
training stages keep optimizer and loader state in their checkpoints and, once finished, save the
model alone to <workdir>/models/<stage> (`world.WorldModel.load(workdir)` reads both), which is
what the latents and eval stages load.
Each stage's folder records what it was made from (launch/provenance.py).
"""

import dataclasses
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from core.training import init_state
from data.clips import ClipSettings, ClipStore, prepare_clips, save_shard, write_json
from data.jobs import Progress
from data.loader import make_loader
from data.sources import source_splits
from dynamics import ActionSpec, Dynamics
from dynamics import train as dynamics_train
from launch import pipeline, provenance, settings
from launch.trainer import make_optimizer, train
from tokenizer import Tokenizer, init_train_state, load_perceptual
from tokenizer import make_train_step as make_tokenizer_step
from world import load_tokenizer, save_part
from world.model import model_folder
from world.serialise import HEADER


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: str

    def __getattr__(self, name: str) -> str:
        if name in pipeline.FOLDERS:  # the top-level folders of the stage registry
            return os.path.join(self.root, name)
        raise AttributeError(name)


def data_stage(config, work: Workdir) -> None:
    """Generates the embedded default when the format is a generator and no path is given,
    then cuts clips at the configured size."""
    data = config.data
    path = data.path or work.source
    print(f"[data] source {data.format} at {path}", flush=True)
    size = settings.image_size(config)
    splits = source_splits(data.format, path, settings.source_options(config), size)
    print(f"[data] clips -> {work.clips}", flush=True)
    index = prepare_clips(splits, work.clips, ClipSettings(data.clip_length, data.clip_stride,
                                                           size),
                          num_workers=data.workers, skip_bad=data.skip_bad)
    store = ClipStore(work.clips, index=index)
    counts = {split: store.count(split) for split in store.splits}
    print(f"[data] clips per split: {counts}", flush=True)
    check_data_actions(config, store)


def shared_data_stage(config, work: Workdir, mesh) -> None:
    """The data stage on process 0 (the hosts of a multi-host job share the workdir); every
    process waits for it."""
    del mesh
    if jax.process_index() == 0:
        data_stage(config, work)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data stage")


def _loader(config, folder: str, train, *, split="train", extra=None):
    return make_loader(folder, split, batch_size=train.batch // jax.process_count(),
                       seq_lengths=tuple(train.seq_lengths),
                       length_weights=tuple(train.length_weights) or None, seed=config.seed,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       num_threads=config.data.loader_threads, extra=extra)


def _perceptual(config):
    path = config.tokenizer.perceptual_weights
    return load_perceptual(path) if path else None


def new_tokenizer_state(config):
    model = Tokenizer(settings.tokenizer_config(config), key=jax.random.key(config.seed))
    optimizer = make_optimizer(config.train.tokenizer)
    return init_train_state(model, optimizer, perceptual=_perceptual(config)), optimizer


def tokenizer_stage(config, work: Workdir, mesh) -> None:
    state, optimizer = new_tokenizer_state(config)
    step = make_tokenizer_step(optimizer, perceptual=_perceptual(config))
    train("tokenizer", work.root, state, lambda s, b, k: step(s, b["frames"], key=k),
          _loader(config, work.clips, config.train.tokenizer), config.train.tokenizer, mesh,
          key=jax.random.key(config.seed + 1), export=model_saver(work, "tokenizer"))


def model_saver(work: Workdir, part: str):
    """export(model, step, overwrite) for `train`: saves the finished model to
    <workdir>/models/<part>; without `overwrite` only when no model of that step is there (a
    workdir written before models were saved)."""
    folder = os.path.join(work.models, part)

    def export(model, step: int, *, overwrite: bool) -> None:
        if not overwrite:
            try:
                with open(os.path.join(folder, HEADER)) as f:
                    if json.load(f)["step"] == step:
                        return
            except (OSError, ValueError, KeyError):
                pass
        save_part(folder, model, step=step)
        print(f"[{part}] saved the model to {folder}", flush=True)

    return export


def trained_tokenizer(work: Workdir) -> Tokenizer:
    """The finished tokenizer, from <workdir>/models/tokenizer."""
    return load_tokenizer(model_folder(work.root, "tokenizer"))


def latents_stage(config, work: Workdir, mesh, *, batch: int = 8) -> None:
    """Encodes every clip of every split once with the frozen encoder (resumable per shard)."""
    del mesh  # the frozen encoder runs on the default device
    encoder = trained_tokenizer(work)
    provenance.latents_inputs(work)  # after the restore, which may set an unreadable one aside
    encode = eqx.filter_jit(lambda model, frames: model.encode(frames))
    encode_clips(work.clips, work.latents, lambda frames: encode(encoder, frames), batch=batch)


# What the latent shards copy from the clip shards, where these hold it.
LATENT_SHARD_COPIES = ("actions", "has_action", "states", "rewards", "continues", "task")


def encode_clips(clips_dir: str, latents_dir: str, encode, *, batch: int = 8,
                 progress: bool = True) -> None:
    """Writes `encode(frames)` of every clip shard as a latent shard with the same layout
    (`LATENT_SHARD_COPIES` that the clip shard holds and the clip ids copied; shards already
    written are skipped), then the index with the training latents' `latent_stats`."""
    clips = ClipStore(clips_dir)
    latents_store = ClipStore(latents_dir, index=clips.index)
    shards = [(split, name) for split in clips.splits for name, _ in clips.shards(split)]
    bar = Progress("[latents] encoding", len(shards), "shards")
    for split, name in shards:
        final = latents_store.shard_dir(split, name)
        if not os.path.isdir(final):
            arrays = clips.read_shard(split, name)
            frames = arrays["frames"]
            latents = np.concatenate([np.asarray(encode(jnp.asarray(frames[i:i + batch])))
                                      for i in range(0, len(frames), batch)])
            os.makedirs(os.path.dirname(final), exist_ok=True)
            copies = {key: np.asarray(arrays[key]) for key in LATENT_SHARD_COPIES
                      if key in arrays}
            save_shard(final, {"latents": latents.astype(np.float32), **copies},
                       clips.shard_clips(split, name))
        if progress:
            bar.update()
    index = dict(clips.index, latent_stats=latent_stats(latents_store))
    write_json(os.path.join(latents_dir, "index.json"), index)


def latent_stats(latents: ClipStore, *, max_shards: int = 64) -> dict:
    """{"mean", "std"} over every value of the first `max_shards` training latent shards
    (float64 sums, one shard in memory at a time): the dynamics model standardises with them.
    With continuous actions also "action_mean" / "action_std", per action dimension over the
    known actions of the same shards (a dimension that never varies gets std 1)."""
    train_shards = latents.shards("train") if "train" in latents.splits else []
    if not train_shards:
        raise ValueError(f"{latents.folder}: no training clips to take latent statistics from.")
    count = total = squares = 0.0
    actions = Moments()
    for name, _ in train_shards[:max_shards]:
        shard = latents.read_shard("train", name)
        values = np.asarray(shard["latents"], np.float64)
        count += values.size
        total += values.sum()
        squares += np.square(values).sum()
        action = np.asarray(shard["actions"])
        if action.dtype.kind == "f" and action.ndim == 3:
            actions.add(action[np.asarray(shard["has_action"])].astype(np.float64))
    mean = total / count
    std = np.sqrt(max(squares / count - mean**2, 0.0))
    stats = {"mean": float(mean), "std": float(max(std, 1e-6))}
    if actions.count > 1:
        action_mean, action_std = actions.mean_std()
        stats["action_mean"] = action_mean.tolist()
        stats["action_std"] = np.where(action_std > 1e-6, action_std, 1.0).tolist()
    return stats


class Moments:
    """Running per-column count, sum and sum of squares of [n, d] float64 rows."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, rows: np.ndarray) -> None:
        self.count += len(rows)
        self.total = self.total + rows.sum(axis=0)
        self.squares = self.squares + np.square(rows).sum(axis=0)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        return mean, np.sqrt(np.maximum(self.squares / self.count - mean**2, 0.0))


def _known_actions(store: ClipStore, parts: int):
    """(split, shard name, int actions [n, parts]) of the known actions of every shard."""
    for split in store.splits:
        for name, _ in store.shards(split):
            shard = store.read_shard(split, name)
            known = np.asarray(shard["has_action"]).reshape(-1)
            actions = np.asarray(shard["actions"]).reshape(known.size, parts)[known]
            if actions.size:
                yield split, name, actions


def check_action_classes(store: ClipStore, spec: ActionSpec) -> None:
    """Raises ConfigError if a known discrete / multi-part action of any shard (of clips or
    latents) lies outside 0 .. classes - 1 of its part (the embedding lookup would silently
    clamp it)."""
    if spec.kind == "continuous":
        return
    classes = np.asarray(spec.classes)
    for split, name, actions in _known_actions(store, len(classes)):
        where = (f"config.data.action_classes: {split}/{name} in {store.folder} has actions "
                 f"from {actions.min(axis=0).tolist()} to {actions.max(axis=0).tolist()} "
                 f"(per part)")
        if actions.min() < 0:
            raise settings.ConfigError(
                f"{where}; actions must be 0 .. classes - 1: map negative ones (e.g. a -1 "
                "'no action' sentinel) to a class of their own in the episode files, or "
                "leave the `actions` array out of episodes without actions.")
        if np.any(actions.max(axis=0) >= classes):
            raise settings.ConfigError(
                f"{where}, outside the classes {spec.classes}; give at least the largest "
                "action + 1 per part (--config.data.action_classes=...).")


def check_data_actions(config, clips: ClipStore) -> None:
    """After the data stage: the action classes must fit the clips' actions (ConfigError naming
    config.data.action_classes, with the counts the data needs when none are given)."""
    layout = clips.action_layout
    given = tuple(config.data.action_classes) or settings.default_action_classes(config)
    if layout.kind != "continuous" and not given:
        parts = 1 if layout.kind == "discrete" else layout.shape[0]
        largest = np.max([a.max(axis=0) for _, _, a in _known_actions(clips, parts)]
                         or [np.zeros(parts, int)], axis=0)
        raise settings.ConfigError(
            f"config.data.action_classes: the clips in {clips.folder} have {layout.kind} actions "
            f"({parts} part(s)) with no class counts given; the largest action per part is "
            f"{largest.tolist()}, so e.g. --config.data.action_classes=\""
            f"{tuple(int(m) + 1 for m in largest)}\"")
    check_action_classes(clips, settings.action_spec(config, layout))


def dynamics_model(config, work: Workdir) -> Dynamics:
    latents = ClipStore(work.latents)
    if "latent_stats" not in latents.index:
        raise FileNotFoundError(f"{work.latents}/index.json has no latent_stats (written by an "
                                "older version); run the 'latents' stage again "
                                "(--config.stages=latents): it keeps the encoded shards.")
    spec = settings.action_spec(config, latents.action_layout)
    return Dynamics(settings.dynamics_config(config, spec, latents.index["latent_stats"]),
                    key=jax.random.key(config.seed + 2))


def dynamics_loss_fn(config):
    """The dynamics loss over dataset batches (`dynamics.train`) at config.train.dynamics'
    objective settings."""
    train = config.train.dynamics
    return dynamics_train.loss_fn(objective=train.objective, mean_fraction=train.mean_fraction,
                                  image_fraction=train.image_fraction,
                                  action_dropout=train.action_dropout,
                                  context_fraction=train.context_fraction,
                                  noise_fraction=train.noise_fraction,
                                  twin_signal=train.twin_signal)


def new_dynamics_state(config, work: Workdir):
    return init_state(dynamics_model(config, work), make_optimizer(config.train.dynamics))


def bootstrap_rows(train_config) -> int:
    """Rows of each dynamics batch trained on the shortcut's bootstrap targets (the first ones)."""
    return round(train_config.bootstrap_fraction * train_config.batch)


def dynamics_stage(config, work: Workdir, mesh) -> None:
    train_config = config.train.dynamics
    step = dynamics_train.make_train_step(make_optimizer(train_config), dynamics_loss_fn(config))
    latents = ClipStore(work.latents)
    check_action_classes(latents, settings.action_spec(config, latents.action_layout))
    rows = bootstrap_rows(train_config)
    train("dynamics", work.root, new_dynamics_state(config, work), step,
          _loader(config, work.latents, train_config), train_config, mesh,
          key=jax.random.key(config.seed + 3), export=model_saver(work, "dynamics"),
          step_kwargs=lambda i: {"bootstrap_rows": rows if i >= train_config.bootstrap_start
                                 else 0})
