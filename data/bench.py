"""Loader throughput: clips/s and MB/s of the grain loader on prepared or synthetic clips.

    python -m data.bench --image_size=64 --clip_length=16 --batch_size=16
    python -m data.bench --clips=/path/to/clips --seq_lengths=96,24

Without `--clips`, random-noise clips are prepared in a temporary folder first (not timed).
"""

import tempfile
import time

from absl import app, flags

from data.clips import ClipSettings, prepare_clips
from data.episode import NoiseEpisode
from data.loader import make_loader


def measure(loader, batches: int) -> tuple[float, float]:
    """(clips/s, MB/s) over `batches` batches after two warm-up batches."""
    for _ in range(2):
        next(loader)
    clips = nbytes = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        clips += len(batch["frames"])
        nbytes += sum(value.nbytes for value in batch.values())
    elapsed = time.perf_counter() - start
    return clips / elapsed, nbytes / elapsed / 1e6


_CLIPS = flags.DEFINE_string("clips", None, "prepared clip folder; none: synthetic clips")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "synthetic: frame side")
_CLIP_LENGTH = flags.DEFINE_integer("clip_length", 16, "synthetic: frames per clip")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 512, "synthetic: clips to prepare")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "clips per batch")
_SEQ_LENGTHS = flags.DEFINE_list("seq_lengths", None, "sequence lengths (default: clip length)")
_BATCHES = flags.DEFINE_integer("batches", 50, "timed batches")
_THREADS = flags.DEFINE_integer("threads", 2, "loader threads")
_WORKERS = flags.DEFINE_integer("workers", 0, "loader worker processes")


def main(argv):
    del argv
    clips_dir = _CLIPS.value
    if clips_dir is None:
        clips_dir = tempfile.mkdtemp(prefix="bench_clips_")
        length = _CLIP_LENGTH.value
        size = (_IMAGE_SIZE.value, _IMAGE_SIZE.value)
        episodes = [
            NoiseEpisode(f"noise{k}", 4 * length, size) for k in range(_NUM_CLIPS.value // 4)
        ]
        prepare_clips({"train": episodes}, clips_dir, ClipSettings(length, length), progress=False)
    seq_lengths = [int(v) for v in _SEQ_LENGTHS.value] if _SEQ_LENGTHS.value else None
    loader = make_loader(
        clips_dir, batch_size=_BATCH_SIZE.value, seq_lengths=seq_lengths,
        num_threads=_THREADS.value, num_workers=_WORKERS.value,
    )  # fmt: skip
    clips_per_s, mb_per_s = measure(loader, _BATCHES.value)
    print(
        f"loader on {clips_dir}: {clips_per_s:.0f} clips/s, {mb_per_s:.0f} MB/s "
        f"(batch {_BATCH_SIZE.value}, threads {_THREADS.value}, workers {_WORKERS.value})"
    )


if __name__ == "__main__":
    app.run(main)
