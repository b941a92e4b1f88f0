"""The data sources, by format name: how each is read and generated, and what its actions are.

`SOURCES` maps a format name (`config.data.format`, `python -m data.prepare --format`) to a
`Source`:
- `read(path, frame_size, skip_bad)`: the source's episodes, either a list (then
  `eval_fraction` of them is held out by episode) or {"train": [...], "eval": [...]} when the
  source has its own held-out split (CALVIN's validation/);
- `generate(path, options)`: the generator that first writes the data at `path`, resumably
  (None for sources that are only read); it returns the frame size the reader must be told, if
  any (the simulator's render size);
- `actions`: the per-step action layout of every episode (None: whatever the episode files
  hold) and `action_classes(options)`: the class count per part of discrete / multi-part
  actions (the model's default when `config.data.action_classes` is empty);
- `decodes_at_clip_size`: the reader decodes frames at the clip size instead of its own size
  (VPT's videos), so no second resize happens;
- `frame_rate(options)`: frames per second of its episodes (None: unknown), e.g. for playback.
A new source is one entry here (and its reader / generator module).
"""

import dataclasses
import os
from collections.abc import Callable

from data.calvin import CALVIN_ACTIONS, CALVIN_FRAME_SIZE, calvin_episodes
from data.clips import hold_out_episodes
from data.coinrun import COINRUN_ACTIONS, CoinRunSettings, generate_coinrun
from data.craftax import CRAFTAX_ACTIONS, CraftaxSettings, generate_craftax
from data.episode import ActionLayout, EpisodeRef
from data.episodes import npz_episodes
from data.sim_demos import SimSettings, generate_calvin_dataset
from data.vpt import VPT_ACTION_CLASSES, VPT_ACTIONS, VPT_FRAME_SIZE, vpt_episodes

Episodes = list[EpisodeRef] | dict[str, list[EpisodeRef]]
DISCRETE = ActionLayout("discrete", ())


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """The settings of reading and generating a source (config.data, data.prepare's flags):
    `seed` (held-out split and generators), `workers`, `eval_fraction` (sources without their
    own held-out split), `skip_bad`; `sim` (the simulator's settings; default: its defaults
    with `seed`); `episodes` and `max_length` (CoinRun, Craftax); `craftax_classic`;
    `coinrun_levels` (0: a new level per episode) and `coinrun_scripted` (the share of CoinRun
    episodes played by the scripted player, data/coinrun.py)."""

    seed: int = 0
    workers: int = 1
    eval_fraction: float = 0.05
    skip_bad: bool = False
    sim: SimSettings | None = None
    episodes: int = 100
    max_length: int = 1000
    craftax_classic: bool = True
    coinrun_levels: int = 0
    coinrun_scripted: float = 0.0


@dataclasses.dataclass(frozen=True)
class Source:
    """One data format; see the module docstring."""

    name: str
    read: Callable[[str, tuple[int, int] | None, bool], Episodes]
    generate: Callable[[str, SourceOptions], tuple[int, int] | None] | None = None
    actions: ActionLayout | None = None
    action_classes: Callable[[SourceOptions], tuple[int, ...]] = lambda options: ()
    decodes_at_clip_size: bool = False
    frame_rate: Callable[[SourceOptions], float | None] = lambda options: None

    def reader_frame_size(self, generated: tuple[int, int] | None,
                          clip_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The frame size to read at: the clip size for sources that decode at it, else what
        the generator reported (None: the reader's own)."""
        return clip_size if self.decodes_at_clip_size and clip_size else generated


def _calvin(path: str, frame_size, skip_bad: bool) -> Episodes:
    """CALVIN layout: training/, and validation/ as the eval split when it exists."""
    frame_size = frame_size or CALVIN_FRAME_SIZE
    train = calvin_episodes(path, "training", frame_size=frame_size, skip_bad=skip_bad)
    if not os.path.isdir(os.path.join(path, "validation")):
        return train
    held = calvin_episodes(path, "validation", frame_size=frame_size, skip_bad=skip_bad)
    return {"train": train, "eval": held}


def _npz(path: str, frame_size, skip_bad: bool) -> Episodes:
    del frame_size  # .npz episodes are read at their own size
    return npz_episodes(path, skip_bad=skip_bad)


def _vpt(path: str, frame_size, skip_bad: bool) -> Episodes:
    return vpt_episodes(path, frame_size=frame_size or VPT_FRAME_SIZE, skip_bad=skip_bad)


def _generate_sim(path: str, options: SourceOptions) -> tuple[int, int]:
    sim = options.sim or SimSettings(seed=options.seed)
    generate_calvin_dataset(path, sim, num_workers=options.workers)
    return (sim.image_size, sim.image_size)


def _generate_coinrun(path: str, options: SourceOptions) -> None:
    settings = CoinRunSettings(options.episodes, options.max_length, options.seed,
                               levels=options.coinrun_levels,
                               scripted_fraction=options.coinrun_scripted)
    generate_coinrun(path, settings, num_workers=options.workers)


def _generate_craftax(path: str, options: SourceOptions) -> None:
    generate_craftax(path, CraftaxSettings(options.episodes, options.max_length, options.seed,
                                           options.craftax_classic))


SOURCES: dict[str, Source] = {source.name: source for source in (
    Source("sim", _calvin, _generate_sim, CALVIN_ACTIONS,
           frame_rate=lambda o: 30.0 / (o.sim or SimSettings()).frame_skip),
    Source("calvin", _calvin, actions=CALVIN_ACTIONS, frame_rate=lambda o: 30.0),
    Source("episodes", _npz),
    Source("vpt", _vpt, actions=VPT_ACTIONS, action_classes=lambda o: VPT_ACTION_CLASSES,
           decodes_at_clip_size=True, frame_rate=lambda o: 20.0),
    Source("coinrun", _npz, _generate_coinrun, DISCRETE, lambda o: (COINRUN_ACTIONS,),
           frame_rate=lambda o: 15.0),
    Source("craftax", _npz, _generate_craftax, DISCRETE,
           lambda o: (CRAFTAX_ACTIONS[o.craftax_classic],)),
)}
NAMES = tuple(SOURCES)
GENERATED = tuple(name for name, source in SOURCES.items() if source.generate is not None)


def source(name: str) -> Source:
    """The source called `name` (ValueError naming the known ones otherwise)."""
    if name not in SOURCES:
        raise ValueError(f"unknown data format {name!r}; use one of {NAMES}")
    return SOURCES[name]


def episode_splits(name: str, path: str, *, eval_fraction: float = 0.05, seed: int = 0,
                   skip_bad: bool = False, frame_size: tuple[int, int] | None = None
                   ) -> dict[str, list[EpisodeRef]]:
    """{"train": [...], "eval": [...]} episodes of the source at `path`, split by episode: the
    source's own held-out split, or `eval_fraction` of its episodes (seeded by `seed`).
    `frame_size`: the size to read at (None: the reader's own; CALVIN 200x200, VPT 224x384)."""
    episodes = source(name).read(path, frame_size, skip_bad)
    if isinstance(episodes, dict):
        return episodes
    return hold_out_episodes(episodes, eval_fraction, seed)


def generate_source(name: str, path: str, options: SourceOptions) -> tuple[int, int] | None:
    """Runs the source's generator at `path` (resumable; nothing for sources that are only
    read); returns the frame size its episodes have when the reader must be told (sim)."""
    generate = source(name).generate
    return generate(path, options) if generate is not None else None


def source_splits(name: str, path: str, options: SourceOptions,
                  clip_size: tuple[int, int] | None = None) -> dict[str, list[EpisodeRef]]:
    """Generates the source if it is a generator, then its train / eval episodes, read at the
    size the source's frame-size rule gives for clips of `clip_size` (None: kept)."""
    generated = generate_source(name, path, options)
    return episode_splits(name, path, eval_fraction=options.eval_fraction, seed=options.seed,
                          skip_bad=options.skip_bad,
                          frame_size=source(name).reader_frame_size(generated, clip_size))
