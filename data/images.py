"""Frame resizing on the host: exact area averaging (box filter) as two small matrix products."""

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """float32 [size_out, size_in]: the overlap of each output pixel with each input pixel.

    Output pixel i covers input coordinates [i * s, (i + 1) * s) with s = size_in / size_out;
    rows sum to 1, so a constant image stays constant and integer factors give block means.
    """
    scale = size_in / size_out
    lo = np.arange(size_out)[:, None] * scale
    hi = lo + scale
    left = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, left + 1) - np.maximum(lo, left), 0.0, None)
    return (overlap / scale).astype(np.float32)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [..., H, W, 3] -> uint8 [..., h, w, 3] by area averaging (rounded to nearest)."""
    height, width = frames.shape[-3:-1]
    if (height, width) == tuple(size):
        return frames
    rows, cols = area_weights(height, size[0]), area_weights(width, size[1])
    out = np.einsum("hH,...HWc,wW->...hwc", rows, frames.astype(np.float32), cols, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
