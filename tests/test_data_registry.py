"""The data source registry (data/sources.py) and how the launch reads it."""

import os

import numpy as np
import pytest

from configs import calvin, minecraft
from data import sources
from data.episode import ActionLayout
from data.sources import SourceOptions, source, source_splits
from dynamics import ActionSpec
from launch import settings


def test_names_and_generators():
    assert sources.NAMES == ("sim", "calvin", "episodes", "vpt", "coinrun", "craftax")
    assert sources.GENERATED == ("sim", "coinrun", "craftax")
    assert all(source(name).name == name for name in sources.NAMES)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown data format 'hdf5'; use one of \('sim', "
                                         r"'calvin', 'episodes', 'vpt', 'coinrun', 'craftax'\)"):
        source("hdf5")
    with pytest.raises(ValueError, match="'hdf5'"):
        sources.episode_splits("hdf5", "/nowhere")


def test_action_layouts_and_default_classes():
    options = SourceOptions()
    expected = {
        "sim": (ActionLayout("continuous", (7,)), ()),
        "calvin": (ActionLayout("continuous", (7,)), ()),
        "episodes": (None, ()),
        "vpt": (ActionLayout("multipart", (24,)), (2,) * 23 + (121,)),
        "coinrun": (ActionLayout("discrete", ()), (15,)),
        "craftax": (ActionLayout("discrete", ()), (17,)),
    }
    for name, (layout, classes) in expected.items():
        assert (source(name).actions, source(name).action_classes(options)) == (layout, classes)
    full = SourceOptions(craftax_classic=False)
    assert source("craftax").action_classes(full) == (43,)


def test_frame_size_rule():
    """VPT decodes at the clip size; the others read at the generator's size (or their own)."""
    assert source("vpt").reader_frame_size(None, (18, 32)) == (18, 32)
    assert source("vpt").reader_frame_size(None, None) is None
    assert source("sim").reader_frame_size((32, 32), (16, 16)) == (32, 32)
    assert source("episodes").reader_frame_size(None, (16, 16)) is None


def test_source_splits_of_an_episode_folder(tmp_path):
    """A read-only source: no generation; 4 episodes, eval_fraction 0.5 -> the 2 episodes at the
    first 2 positions of the seeded permutation are held out."""
    for e in range(4):
        np.savez(tmp_path / f"ep{e}.npz", frames=np.zeros((5, 4, 4, 3), np.uint8))
    splits = source_splits("episodes", str(tmp_path), SourceOptions(eval_fraction=0.5, seed=3),
                           (8, 8))
    held = sorted(np.random.default_rng(3).permutation(4)[:2].tolist())
    assert [e.name for e in splits["eval"]] == [f"ep{i}" for i in held]
    assert [e.name for e in splits["train"]] == [f"ep{i}" for i in range(4) if i not in held]
    assert sorted(os.listdir(tmp_path)) == [f"ep{e}.npz" for e in range(4)]  # nothing written


def test_launch_action_spec_uses_the_source_classes():
    config = minecraft.get_config("tiny")  # craftax
    assert settings.action_spec(config, ActionLayout("discrete", ())) == \
        ActionSpec("discrete", classes=(17,))
    config.data.craftax_classic = False
    assert settings.action_spec(config, ActionLayout("discrete", ())) == \
        ActionSpec("discrete", classes=(43,))
    config.data.action_classes = (5,)
    assert settings.action_spec(config, ActionLayout("discrete", ())) == \
        ActionSpec("discrete", classes=(5,))
    config = calvin.get_config("tiny")
    config.data.format = "vpt"
    assert settings.action_spec(config, ActionLayout("multipart", (24,))).classes == \
        (2,) * 23 + (121,)
    config.data.format = "episodes"  # no default classes: the config must give them
    with pytest.raises(settings.ConfigError, match=r"config\.data\.action_classes: the data has "
                                                   r"discrete actions with 1 part"):
        settings.action_spec(config, ActionLayout("discrete", ()))


def test_frame_rates():
    """The simulator records every `frame_skip`-th 30 Hz step; unknown rates are None."""
    from data.sim_demos import SimSettings

    rates = {name: source(name).frame_rate(SourceOptions()) for name in sources.NAMES}
    assert rates == {"sim": 30.0, "calvin": 30.0, "episodes": None, "vpt": 20.0,
                     "coinrun": 15.0, "craftax": None}
    assert source("sim").frame_rate(SourceOptions(sim=SimSettings(frame_skip=3))) == 10.0
