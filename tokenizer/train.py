"""Tokenizer loss with running-RMS normalisation, on the shared `core.training` train step.

Loss terms per batch: "mse" (pixel MSE of the reconstruction from MAE-masked input), when a
`PerceptualNet` is given "perceptual" (its mean distance), and when `config.edge_weight` > 0
"edges" (mean absolute difference of the reconstruction's and the truth's `core.laplacian`),
normalised by `core.training.rms_normalised` (decay `config.rms_decay`) with weight 1 for "mse",
`config.perceptual_weight` for "perceptual" and `config.edge_weight` for "edges". With
`config.latent_noise` > 0 the decoder reads each frame's latents plus Gaussian noise of a scale
drawn uniformly from [0, latent_noise]: nearby latents must then decode to similar frames, which
asks the encoder for a smoother latent space and the decoder to tolerate the dynamics model's
small errors.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from core import laplacian, psnr
from core.training import TrainState, init_state, rms_normalised
from core.training import make_train_step as make_core_step
from tokenizer.config import TokenizerConfig
from tokenizer.model import Tokenizer, sample_mae_mask
from tokenizer.patches import Video, as_float
from tokenizer.perceptual import PerceptualNet

Metrics = dict[str, Float[Array, ""]]


def loss_terms(config: TokenizerConfig, perceptual: PerceptualNet | None) -> tuple[str, ...]:
    """The names of the loss terms a tokenizer of `config` trains with."""
    return (("mse",) + (() if perceptual is None else ("perceptual",))
            + (("edges",) if config.edge_weight > 0 else ()))


def init_train_state(
    model: Tokenizer,
    optimizer: optax.GradientTransformation,
    *,
    perceptual: PerceptualNet | None = None,
) -> TrainState:
    """A `core.training.TrainState` whose loss state is the EMA of each squared loss term."""
    rms_sq = {name: jnp.zeros((), jnp.float32) for name in loss_terms(model.config, perceptual)}
    return init_state(model, optimizer, loss_state=rms_sq)


def tokenizer_loss(model: Tokenizer, rms_sq_old, step, video, *, key, perceptual=None):
    """Normalised total loss, and (metrics, updated EMAs of the squared terms)."""
    config = model.config
    target = as_float(video)
    batch, time = video.shape[:2]
    mask, _ = sample_mae_mask((batch, time, config.n_patches), config.p_max, key=key)
    latents = model.encode(target, mask=mask)
    if config.latent_noise:
        k_scale, k_noise = jax.random.split(jax.random.fold_in(key, 1))
        scale = config.latent_noise * jax.random.uniform(k_scale, (batch, time, 1, 1))
        latents = latents + scale * jax.random.normal(k_noise, latents.shape)
    recon = model.decode(latents)
    terms = {"mse": jnp.mean(jnp.square(recon - target))}
    if perceptual is not None:
        terms["perceptual"] = jnp.mean(perceptual(recon, target))
    if config.edge_weight > 0:
        terms["edges"] = jnp.mean(jnp.abs(laplacian(recon) - laplacian(target)))
    total, rms_sq = rms_normalised(terms, rms_sq_old, step, decay=config.rms_decay,
                                   weights={"perceptual": config.perceptual_weight,
                                            "edges": config.edge_weight})
    metrics = dict(terms, loss=total, psnr=jnp.mean(psnr(jnp.clip(recon, 0.0, 1.0), target)))
    return total, (metrics, rms_sq)


def make_train_step(
    optimizer: optax.GradientTransformation, *, perceptual: PerceptualNet | None = None
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Returns `step(state, video, *, key) -> (state, metrics)`, compiled once per video shape.

    `state` is donated (do not reuse it after the call); `video` [b, t, H, W, 3] (uint8, or
    float in [0, 1]) is not. Metrics: "loss" (normalised total), each raw loss term, "psnr" (mean
    per-frame PSNR of the masked-input reconstruction), "grad_norm" and "skipped".
    """
    loss = functools.partial(tokenizer_loss, perceptual=perceptual)
    compiled = make_core_step(loss, optimizer)

    def step(state: TrainState, video: Video, *, key: PRNGKeyArray) -> tuple[TrainState, Metrics]:
        terms = loss_terms(state.model.config, perceptual)
        if set(state.loss_state) != set(terms):
            raise ValueError(f"train state tracks loss terms {sorted(state.loss_state)} but this "
                             f"step computes {list(terms)}; build both with the same "
                             "`perceptual`.")
        return compiled(state, video, key)

    return step
