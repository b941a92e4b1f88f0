"""Frame conversion and image metrics.

`to_float` is the one place where uint8 video becomes model input (float32 in [0, 1]); `to_uint8`
inverts it. PSNR and SSIM come from dm-pix and act on [..., height, width, channels] in [0, 1],
returning one value per image. `laplacian` is the 5-point Laplacian of each channel (the edges a
blurred image loses).
"""

import dm_pix
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, UInt8


def to_float(frames: UInt8[Array, "*batch h w c"]) -> Float[Array, "*batch h w c"]:
    return frames.astype(jnp.float32) / 255.0


def to_uint8(images: Float[Array, "*batch h w c"]) -> UInt8[Array, "*batch h w c"]:
    return jnp.round(jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.uint8)


def _per_image(metric, a, b):
    """Applies a dm-pix metric to images with any number of leading axes."""
    lead, image = a.shape[:-3], a.shape[-3:]
    flat = [x.astype(jnp.float32).reshape(-1, *image) for x in (a, b)]
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        return metric(*flat).reshape(lead)


def psnr(
    a: Float[Array, "*batch h w c"], b: Float[Array, "*batch h w c"]
) -> Float[Array, "*batch"]:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (inf for identical images)."""
    return _per_image(dm_pix.psnr, a, b)


def ssim(
    a: Float[Array, "*batch h w c"], b: Float[Array, "*batch h w c"]
) -> Float[Array, "*batch"]:
    """Structural similarity (Gaussian window 11, sigma 1.5) for images in [0, 1]."""
    return _per_image(dm_pix.ssim, a, b)


def laplacian(images: Float[Array, "*batch h w c"]) -> Float[Array, "*batch _h2 _w2 c"]:
    """The 5-point Laplacian (up + down + left + right - 4 * centre) of each channel over the
    valid interior, no padding: [..., h - 2, w - 2, c]."""
    h, w = images.shape[-3] - 2, images.shape[-2] - 2
    rows, cols = slice(1, 1 + h), slice(1, 1 + w)
    return (images[..., :h, cols, :] + images[..., 2:, cols, :] + images[..., rows, :w, :]
            + images[..., rows, 2:, :] - 4.0 * images[..., rows, cols, :])
