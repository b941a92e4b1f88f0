"""Training batches from prepared clips, built on grain (imported only when a loader is made).

Pipeline: all clips of a split (memory-mapped shards) -> this process's share
(`clips[process_index::process_count]`) -> global shuffle, reshuffled every epoch, repeated
forever -> per element a window of the batch's sequence length at a random start inside the clip
-> batches -> prefetched by threads (and optionally processes).

Batch k has one sequence length for all its rows, drawn from `seq_lengths` with
`length_weights` by a generator seeded with (seed, k): the dynamics recipe's mix of short and long
sequences. Every random choice is a pure function of (seed, position in the stream), so the
iterator's state (`it.get_state()`, a JSON-able dict) restored into a loader made with the same
arguments (`it.set_state(state)`) continues with exactly the batch that would have come next.

A batch is a dict of every array the clips hold, cut to the window: from clip folders frames
uint8 [B, T, H, W, 3], from latent folders latents float32 [B, T, ...], and actions [B, T, ...]
(float32 or int32, see the index's action layout) and has_action bool [B, T]; where the data has
them also rewards float32 [B, T] (`rewards[t]` earned by `actions[t]`), continues float32 [B, T]
(0 where the episode ended) and task int32 [B, T] (and, from clip folders, states float32
[B, T, S]; `data.clips` describes the shards). `extra` arrays ([clips of the split, L, ...], by
clip position) join each clip's arrays and are cut to the same window: per-frame values a caller
derives from the clips (agent finetuning's returns-to-go).
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from data.clips import ClipStore
from data.episode import DataError


def _import_grain():
    try:
        import grain
    except ImportError as e:
        raise ImportError(
            "the clip loader needs grain (pip install 'grain>=0.2.18'); training and "
            "preparation are otherwise unaffected"
        ) from e
    return grain


class ClipSource:
    """Random access to every clip of one split: `source[i]` -> dict of [L, ...] array views."""

    def __init__(self, clips_dir: str, split: str, extra: Mapping[str, np.ndarray] | None = None):
        self.store, self.split = ClipStore(clips_dir), split
        self.clips = self.store.count(split)
        if not self.clips:
            raise DataError(f"{clips_dir}: split {split!r} holds no clips")
        self.clip_length = self.store.clip_length
        self.extra = dict(extra or {})
        for key, value in self.extra.items():
            if value.shape[:2] != (self.clips, self.clip_length):
                raise ValueError(f"extra array {key!r} is {value.shape}; it needs one row per clip "
                                 f"of split {split!r} and one value per frame: "
                                 f"({self.clips}, {self.clip_length}, ...)")

    def __len__(self) -> int:
        return self.clips

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.store.clip(self.split, i) | {k: v[i] for k, v in self.extra.items()}


@dataclasses.dataclass(frozen=True)
class SampleWindow:
    """Cuts element i of the stream to its batch's length at a start drawn from (seed, i)."""

    seed: int
    batch_size: int
    clip_length: int
    seq_lengths: tuple[int, ...]
    length_weights: tuple[float, ...]

    def batch_length(self, batch_index: int) -> int:
        rng = np.random.default_rng((self.seed, 0, batch_index))
        return int(rng.choice(self.seq_lengths, p=self.length_weights))

    def __call__(self, index: int, clip: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        length = self.batch_length(index // self.batch_size)
        start = int(
            np.random.default_rng((self.seed, 1, index)).integers(self.clip_length - length + 1)
        )
        return {key: value[start : start + length] for key, value in clip.items()}


def make_loader(
    clips_dir: str,
    split: str = "train",
    *,
    batch_size: int,
    seq_lengths: Sequence[int] | None = None,
    length_weights: Sequence[float] | None = None,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch_batches: int = 4,
    num_workers: int = 0,
    extra: Mapping[str, np.ndarray] | None = None,
):
    """A grain iterator over batches (see the module docstring); never ends.

    `seq_lengths` defaults to the clip length; each must be <= the clip length. `length_weights`
    defaults to uniform. `num_workers` > 0 adds grain worker processes on top of the threads.
    """
    grain = _import_grain()
    source = ClipSource(clips_dir, split, extra)
    seq_lengths = tuple(seq_lengths or (source.clip_length,))
    if max(seq_lengths) > source.clip_length or min(seq_lengths) < 1:
        raise ValueError(
            f"seq_lengths {seq_lengths} must lie in 1..{source.clip_length} (the clip length)"
        )
    weights = np.asarray(length_weights or [1.0] * len(seq_lengths), np.float64)
    if len(weights) != len(seq_lengths) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"length_weights {length_weights} do not fit seq_lengths {seq_lengths}")
    shard = grain.MapDataset.source(source)[process_index::process_count]
    if len(shard) < batch_size:
        raise DataError(
            f"{clips_dir}: process {process_index} of {process_count} gets {len(shard)} "
            f"clips of split {split!r}, fewer than one batch of {batch_size}"
        )
    window = SampleWindow(
        seed, batch_size, source.clip_length, seq_lengths, tuple((weights / weights.sum()).tolist())
    )
    dataset = (
        shard.shuffle(seed=seed)
        .repeat()
        .map_with_index(window)
        .batch(batch_size, drop_remainder=True)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
        )
    )
    if num_workers > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(dataset)
