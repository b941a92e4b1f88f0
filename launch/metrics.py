"""Frame metrics of the eval stage: pure functions of decoded frames, no model.

Frames are float in [0, 1], shaped [rollouts, time, height, width, 3]. MSE, PSNR and the
Laplacian are computed in numpy float64; SSIM is `core.ssim` (Gaussian window 11, sigma 1.5, so
frames need at least 11 x 11 pixels).

- Per-frame PSNR = 10 log10(1 / MSE), capped at `PSNR_CAP` = 20 log10(255) = 48.13 dB, the PSNR
  of an error of one 8-bit level on every pixel: an 8-bit video cannot be told apart from the
  truth more finely, and identical frames (PSNR inf) count as the cap, so the JSON stays finite.
  Averaged over rollouts per step, it is the headline number: it does not reward blur.
- `*_mse` keys: per step, the PSNR of the MSE averaged over rollouts, 10 log10(1 / mean MSE)
  (same cap). A blurry mean prediction scores better here than on per-frame PSNR; the gap between
  the two is a blur signal.
- `rollout.sharpness_ratio`: per step, the mean absolute Laplacian (`LAPLACIAN`, applied to each
  channel over the valid interior, no padding) of the imagined frames divided by that of the true
  frames, both averaged over rollouts first (a ratio of means). Below 1: blurrier than the truth.
  A step whose true frames are all flat (zero Laplacian) has no ratio: None.
"""

import math

import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from core import ssim

PSNR_CAP = 20 * math.log10(255)  # dB: MSE of (1/255)^2, one 8-bit level off on every pixel
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)

Frames = Float[Array | np.ndarray, "rollouts time height width 3"]
# The predictions compared with the true future, by the suffix of their keys.
MODEL, COPY_LAST, COPY_LAST_RECONSTRUCTION, SHUFFLED = (
    "", "_copy_last", "_copy_last_reconstruction", "_shuffled_actions")


def frame_mse(a, b) -> np.ndarray:
    """Mean squared error per frame (over height, width, channels), float64."""
    return np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                   axis=(-3, -2, -1))


def capped_psnr(mse) -> np.ndarray:
    """10 log10(1 / mse) in dB, at most `PSNR_CAP` (mse 0 gives the cap)."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(-10.0 * np.log10(mse), PSNR_CAP)


def mean_abs_laplacian(frames) -> np.ndarray:
    """Per frame: mean |LAPLACIAN * channel| over the valid interior and the channels."""
    x = np.asarray(frames, np.float64)
    height, width = x.shape[-3] - 2, x.shape[-2] - 2
    response = sum(LAPLACIAN[i, j] * x[..., i:i + height, j:j + width, :]
                   for i in range(3) for j in range(3) if LAPLACIAN[i, j])
    return np.mean(np.abs(response), axis=(-3, -2, -1))


def _ssim(a, b) -> np.ndarray:
    return np.asarray(ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), np.float64)


@jaxtyped(typechecker=beartype)
def tokenizer_metrics(truth: Frames, reconstruction: Frames) -> dict:
    """Mean per-frame PSNR (capped) and SSIM of the reconstruction over every frame, and its
    sharpness ratio (mean |Laplacian| of the reconstruction over that of the truth, both over
    every frame; None for flat frames): the ceiling of `rollout.sharpness_ratio` for a model whose
    latents were perfect."""
    edges = float(np.mean(mean_abs_laplacian(truth)))
    return {"tokenizer.psnr": float(np.mean(capped_psnr(frame_mse(reconstruction, truth)))),
            "tokenizer.ssim": float(np.mean(_ssim(reconstruction, truth))),
            "tokenizer.sharpness_ratio": (float(np.mean(mean_abs_laplacian(reconstruction))) / edges
                                          if edges > 0 else None)}


@jaxtyped(typechecker=beartype)
def rollout_metrics(truth: Frames, imagined: Frames, shuffled: Frames, reconstruction: Frames, *,
                    context: int) -> dict:
    """Per-step lists (step h = frame context + h) of the future frames against the truth.

    `imagined` / `shuffled`: the decoded rollouts (real / another rollout's actions), whose
    first `context` frames are ignored; `reconstruction`: the tokenizer's reconstruction of
    `truth`. Keys, for the model and the baselines copy_last (the last true context frame),
    copy_last_reconstruction (its reconstruction) and shuffled_actions:
    rollout.psnr[_<baseline>], rollout.ssim[_<baseline>], rollout.psnr[_<baseline>]_mse; and
    rollout.copy_last_exact (rollouts whose true frame equals the last context frame exactly)
    and rollout.sharpness_ratio (None where the true frames are flat).
    """
    time = truth.shape[1]
    if not 1 <= context < time:
        raise ValueError(f"rollout_metrics: context ({context}) must be in 1..{time - 1} "
                         f"for frames with {time} time steps.")
    truth, imagined, shuffled, reconstruction = (
        np.asarray(x) for x in (truth, imagined, shuffled, reconstruction))
    future = truth[:, context:]
    last = lambda frames: np.broadcast_to(frames[:, context - 1:context], future.shape)
    predictions = {MODEL: imagined[:, context:], COPY_LAST: last(truth),
                   COPY_LAST_RECONSTRUCTION: last(reconstruction),
                   SHUFFLED: shuffled[:, context:]}
    metrics = {}
    for suffix, frames in predictions.items():
        mse = frame_mse(frames, future)  # [rollouts, horizon]
        metrics[f"rollout.psnr{suffix}"] = capped_psnr(mse).mean(axis=0).tolist()
        metrics[f"rollout.ssim{suffix}"] = _ssim(frames, future).mean(axis=0).tolist()
        metrics[f"rollout.psnr{suffix}_mse"] = capped_psnr(mse.mean(axis=0)).tolist()
    metrics["rollout.copy_last_exact"] = np.all(future == last(truth), axis=(2, 3, 4)
                                                ).sum(axis=0).tolist()
    imagined_edges = mean_abs_laplacian(predictions[MODEL]).mean(axis=0)
    true_edges = mean_abs_laplacian(future).mean(axis=0)
    metrics["rollout.sharpness_ratio"] = [float(i / t) if t > 0 else None
                                          for i, t in zip(imagined_edges, true_edges, strict=True)]
    return metrics
