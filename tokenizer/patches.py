"""Patchify and unpatchify video; the only place where frames become patch vectors.

A patch vector is the patch's pixels in (row, column, channel) order; patches are in raster order
(row-major over the patch grid).
"""

import jax.numpy as jnp
from jaxtyping import Array, Float, UInt8

from core import to_float

Video = UInt8[Array, "batch time height width 3"] | Float[Array, "batch time height width 3"]
Frame = UInt8[Array, "batch height width 3"] | Float[Array, "batch height width 3"]


def as_float(video: Video) -> Float[Array, "batch time height width 3"]:
    """uint8 video via core.to_float, float video cast to float32 (assumed in [0, 1])."""
    return to_float(video) if video.dtype == jnp.uint8 else video.astype(jnp.float32)


def patchify(video: Video, patch: int) -> Float[Array, "batch time patches patch_dim"]:
    """[b, t, H, W, 3] video -> float32 patch vectors [b, t, H/p * W/p, p*p*3]."""
    batch, time, height, width, channels = video.shape
    for axis, size in (("height", height), ("width", width)):
        if size % patch:
            raise ValueError(f"video {axis} {size} is not divisible by the patch size {patch}.")
    x = as_float(video)
    x = x.reshape(batch, time, height // patch, patch, width // patch, patch, channels)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(batch, time, (height // patch) * (width // patch), patch * patch * channels)


def unpatchify(
    patches: Float[Array, "batch time patches patch_dim"], image_size: tuple[int, int], patch: int
) -> Float[Array, "batch time height width 3"]:
    """Inverse of `patchify` for images of `image_size` (height, width)."""
    batch, time, count, dim = patches.shape
    rows, cols = image_size[0] // patch, image_size[1] // patch
    if rows * patch != image_size[0] or cols * patch != image_size[1]:
        raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch}.")
    if count != rows * cols or dim != patch * patch * 3:
        raise ValueError(f"patches of shape {patches.shape[2:]} do not tile {image_size} images "
                         f"with patch {patch}: expected ({rows * cols}, {patch * patch * 3}).")
    x = patches.reshape(batch, time, rows, cols, patch, patch, 3).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(batch, time, rows * patch, cols * patch, 3)
