"""launch.report: the videos users look at, checked by decoding them again."""

import sys
import warnings

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.report import side_by_side, write_videos


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # reading the mp4 back runs ffmpeg
def test_videos_decode_to_the_panels_without_a_fork_warning(tmp_path):
    """The mp4 (padded to a multiple of 16) and the gif hold truth | imagined | 3 |diff|; writing
    them while JAX runs threads raises no warning (ffmpeg is a subprocess: fork, then exec)."""
    jax.block_until_ready(jnp.ones(3) + 1)  # JAX's backend and threads are up
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 200, (3, 6, 5, 3), np.uint8)
    imagined = truth.copy()
    imagined[:, 0, 0] += 10
    frames = side_by_side(truth, imagined, scale=1)
    assert frames.shape == (3, 6, 3 * 5 + 4, 3)
    np.testing.assert_array_equal(frames[:, :, :5], truth)
    np.testing.assert_array_equal(frames[:, :, 7:12], imagined)
    assert frames[:, 0, 14].tolist() == [[30, 30, 30]] * 3 and frames[:, 1:, 14:].max() == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gif, mp4 = write_videos(str(tmp_path / "eval" / "rollout_0"), frames)
    assert [str(w.message) for w in caught] == []
    decoded = iio.imread(gif, index=None)
    np.testing.assert_array_equal(decoded[..., :3], frames)
    video = iio.imread(mp4, index=None)
    assert video.shape == (3, 16, 32, 3)


def test_without_ffmpeg_only_the_gif_is_written(tmp_path, monkeypatch):
    """A machine without imageio-ffmpeg (e.g. a GPU box with no package index) still gets the
    GIF instead of an error at the end of the eval stage."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if uninstalled
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert write_videos(str(tmp_path / "r"), frames) == [str(tmp_path / "r.gif")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gif"]
