"""The command line that turns any source (`data/sources.py`) into clips.

    python -m data.prepare --format=sim --path=runs/sim_calvin --out=runs/clips \
        --length=16 --stride=8 --image_size=64 --workers=2

`--format`: `calvin` (a CALVIN root: training/ and, if present, validation/ as the eval split),
`episodes` (a folder of .npz episodes), `vpt` (a folder of Minecraft VPT <id>.mp4 + <id>.jsonl
segments, decoded at `--image_size`, default 224x384), or a generator that first writes its data
at `--path`, resumably: `sim` (the embedded simulator's demonstrations in CALVIN format),
`coinrun` (procgen CoinRun, random actions) or `craftax` (Craftax, sticky random actions), the
last two as .npz episodes (`--gen_episodes`, `--gen_max_length`). Sources without their own
validation split hold out `--eval_fraction` of their episodes. Re-running the same command
resumes both steps.
"""

import os

from absl import app, flags

from data.clips import ClipSettings, prepare_clips
from data.sim_demos import DEMOS, SimSettings
from data.sources import NAMES, SourceOptions, source_splits

_FORMAT = flags.DEFINE_enum("format", "sim", NAMES, "source format (data/sources.py)")
_PATH = flags.DEFINE_string("path", None, "source folder (generators: where to write it)")
_OUT = flags.DEFINE_string("out", None, "output folder for the clips")
_LENGTH = flags.DEFINE_integer("length", 16, "frames per clip")
_STRIDE = flags.DEFINE_integer("stride", 16, "frames between clip starts")
_IMAGE_SIZE = flags.DEFINE_list("image_size", None, "resize to H,W (or one number); none: keep")
_CLIPS_PER_SHARD = flags.DEFINE_integer("clips_per_shard", 64, "clips per shard")
_EVAL_FRACTION = flags.DEFINE_float("eval_fraction", 0.05, "held-out episode fraction")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the held-out split and generators")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "worker processes")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "leave bad files out (with a warning count)")
_SIM_TRAIN = flags.DEFINE_integer("sim_train_episodes", 64, "sim: training episodes")
_SIM_EVAL = flags.DEFINE_integer("sim_eval_episodes", 8, "sim: validation episodes")
_SIM_LENGTH = flags.DEFINE_integer("sim_episode_length", 120, "sim: frames per episode")
_SIM_RENDER = flags.DEFINE_integer("sim_render_size", 200, "sim: rendered frame side")
_SIM_FRAME_SKIP = flags.DEFINE_integer("sim_frame_skip", 1, "sim: 30 Hz steps per frame")
_SIM_DEMOS = flags.DEFINE_enum("sim_demos", "tasks", list(DEMOS), "sim: demonstrations' mix")
_GEN_EPISODES = flags.DEFINE_integer("gen_episodes", 100, "coinrun/craftax: episodes")
_GEN_MAX_LENGTH = flags.DEFINE_integer("gen_max_length", 1000, "coinrun/craftax: frames at most")
_CRAFTAX_CLASSIC = flags.DEFINE_bool("craftax_classic", True, "craftax: Classic (else full)")
_COINRUN_LEVELS = flags.DEFINE_integer("coinrun_levels", 0, "coinrun: levels (0: one per episode)")
_COINRUN_SCRIPTED = flags.DEFINE_float(
    "coinrun_scripted", 0.0, "coinrun: share of episodes played by the scripted player")


def main(argv):
    del argv
    size = [int(v) for v in _IMAGE_SIZE.value or []]
    image_size = tuple(size * 2 if len(size) == 1 else size) or None
    sim = SimSettings(
        _SIM_TRAIN.value, _SIM_EVAL.value, _SIM_LENGTH.value, _SIM_RENDER.value, _SEED.value,
        _SIM_FRAME_SKIP.value, _SIM_DEMOS.value,
    )
    options = SourceOptions(
        seed=_SEED.value, workers=_WORKERS.value, eval_fraction=_EVAL_FRACTION.value,
        skip_bad=_SKIP_BAD.value, sim=sim, episodes=_GEN_EPISODES.value,
        max_length=_GEN_MAX_LENGTH.value, craftax_classic=_CRAFTAX_CLASSIC.value,
        coinrun_levels=_COINRUN_LEVELS.value, coinrun_scripted=_COINRUN_SCRIPTED.value,
    )
    splits = source_splits(_FORMAT.value, _PATH.value, options, image_size)
    settings = ClipSettings(_LENGTH.value, _STRIDE.value, image_size, _CLIPS_PER_SHARD.value)
    index = prepare_clips(
        splits, _OUT.value, settings, num_workers=_WORKERS.value, skip_bad=_SKIP_BAD.value
    )
    counts = {split: sum(n for _, n in shards) for split, shards in index["shards"].items()}
    print(f"clips in {_OUT.value}: {counts}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["path", "out"])
    app.run(main)
