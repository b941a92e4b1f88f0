"""What users look at: side-by-side videos (mp4 and gif, also as TensorBoard summaries) and the
PSNR / SSIM over horizon plot."""

import os
import warnings

import imageio.v2 as imageio
import imageio.v3 as iio
import matplotlib
import numpy as np
from tensorboardX.proto.summary_pb2 import Summary

matplotlib.use("Agg")
from matplotlib import pyplot as plt
from matplotlib.ticker import MaxNLocator


def side_by_side(truth: np.ndarray, imagined: np.ndarray, scale: int = 4) -> np.ndarray:
    """uint8 [T, H, W, 3] pair -> [T, H*scale, 3*W*scale + gaps, 3]: truth | imagined | |diff|."""
    diff = np.clip(np.abs(truth.astype(np.int16) - imagined.astype(np.int16)) * 3, 0, 255)
    gap = np.full((*truth.shape[:2], 2, 3), 255, np.uint8)
    row = np.concatenate([truth, gap, imagined, gap, diff.astype(np.uint8)], axis=2)
    return row.repeat(scale, axis=1).repeat(scale, axis=2)


def have_mp4_writer() -> bool:
    """imageio's ffmpeg plugin (the imageio-ffmpeg package, a dependency) is importable."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_videos(stem: str, frames: np.ndarray, fps: int = 8) -> list[str]:
    """frames uint8 [T, H, W, 3] -> stem.gif and, if `have_mp4_writer()`, stem.mp4; returns
    the paths written."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(f"{stem}.gif", "wb") as f:
        f.write(gif_bytes(frames, fps))
    if not have_mp4_writer():
        return [f"{stem}.gif"]
    height, width = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, -height % 16), (0, -width % 16), (0, 0)))
    with warnings.catch_warnings():
        # imageio runs ffmpeg through subprocess (fork, then exec: no Python runs in the child),
        # which JAX's fork hook reports as a likely deadlock; that warning does not apply here.
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        imageio.mimwrite(f"{stem}.mp4", list(padded), fps=fps, macro_block_size=16,
                         format="FFMPEG")
    return [f"{stem}.gif", f"{stem}.mp4"]


def gif_bytes(frames: np.ndarray, fps: int = 8) -> bytes:
    """uint8 [T, H, W, 3] -> an endlessly looping animated GIF."""
    return iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)


def gif_summary(tag: str, gif_path: str) -> Summary:
    """A TensorBoard image summary holding the animated GIF at `gif_path` (what tensorboardX's
    add_video writes, without its moviepy dependency); TensorBoard plays it."""
    with open(gif_path, "rb") as f:
        encoded = f.read()
    height, width = iio.improps(encoded, extension=".gif", index=0).shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=3,
                          encoded_image_string=encoded)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def plot_curves(path: str, panels: dict[str, dict[str, list[float]]]) -> str:
    """One panel per y-axis label (side by side), one line per named curve over horizon steps
    1..H."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (ylabel, curves) in zip(axes[0], panels.items(), strict=True):
        for name, values in curves.items():
            axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("steps into the future")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
