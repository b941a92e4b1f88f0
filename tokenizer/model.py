"""Encoder, decoder and MAE masking of the causal video tokenizer.

Encoder: each frame is [patch embeddings (some replaced by the mask token), learned latent
tokens]; within a frame latents see patches and latents, patches see only patches. The latent
outputs go through Linear -> RMS normalisation over the channels -> tanh: the bottleneck
[batch, time, n_latents, latent_dim] in (-1, 1). (Without the normalisation Adam drives the
pre-activations into tanh saturation within ~50 steps and the latents stop carrying the frame.)
Decoder: each frame is [learned per-patch readout tokens, bottleneck projected to width]; readouts
see readouts and latents, latents see only latents. Readout outputs -> Linear -> pixels.

`region_skip` (default on): latent i also starts from the mean embedding of its region of patches
(a contiguous run in raster order) and, in the decoder, each readout token starts from its
region's latent. Attention alone initially averages over all patches of nearly identical frames,
so the encoder output barely depends on the frame and training sits at the mean-frame PSNR for
hundreds of steps; the region paths give every latent a frame-dependent start (measured on the
simulator's 48x48 clips: 22.3 dB after 300 steps with them, 20.1 dB = mean frame without).
Both are `core.AxialTransformer`s, block-causal in time, so frame t never depends on later frames
and encode/decode work frame by frame on growing prefixes. Pixels enter as 2x - 1 and leave as
(y + 1) / 2; the residual stream is float32 and matmuls run in `config.compute_dtype`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from core import AxialTransformer, Linear, modality_mask
from core.layers import expand_to, truncated_normal_init
from tokenizer.config import TokenizerConfig
from tokenizer.patches import Video, patchify, unpatchify

# Within-frame rules between the token groups (first group, latents), True = may attend.
ENCODER_RULES = ((True, False), (True, True))  # patches -> patches; latents -> everything
DECODER_RULES = ((True, True), (False, True))  # readouts -> everything; latents -> latents


def sample_mae_mask(
    shape: tuple[int, int, int], p_max: float, *, key: PRNGKeyArray
) -> tuple[Bool[Array, "batch time patches"], Float[Array, "batch time"]]:
    """Per frame p ~ U(0, p_max); each patch is masked (True) independently with probability p."""
    kp, km = jax.random.split(key)
    p = jax.random.uniform(kp, shape[:2], maxval=p_max)
    return jax.random.uniform(km, shape) < p[..., None], p


def _transformer(config: TokenizerConfig, part: str, *, key: PRNGKeyArray) -> AxialTransformer:
    size = {n: getattr(config, f"{part}_{n}") for n in ("width", "depth", "heads", "kv_heads")}
    return AxialTransformer(
        **size, time_every=getattr(config, f"{part}_time_every"), mlp_ratio=config.mlp_ratio,
        remat=config.remat, compute_dtype=config.compute_dtype, backend=config.backend, key=key,
    )


def region_matrix(n_latents: int, patches: int) -> Float[Array, "n_latents patches"]:
    """Row i averages the patches of latent i's region: patch p (raster order) belongs to region
    p * n_latents // patches, so regions are contiguous runs of patches."""
    region = (jnp.arange(patches) * n_latents) // patches
    member = (region[None, :] == jnp.arange(n_latents)[:, None]).astype(jnp.float32)
    return member / jnp.maximum(jnp.sum(member, axis=1, keepdims=True), 1.0)


def _broadcast_tokens(tokens: Float[Array, "n width"], batch: int, time: int):
    return jnp.broadcast_to(tokens[None, None], (batch, time, *tokens.shape))


class Encoder(eqx.Module):
    """Patch vectors [b, t, patches, patch_dim] -> bottleneck [b, t, n_latents, latent_dim]."""

    patch_embed: Linear
    mask_token: Float[Array, " width"]
    latent_tokens: Float[Array, "n_latents width"]
    transformer: AxialTransformer
    to_bottleneck: Linear
    region_skip: bool = eqx.field(static=True)

    def __init__(self, config: TokenizerConfig, *, key: PRNGKeyArray):
        ke, km, kl, kt, kb = jax.random.split(key, 5)
        width, dtype = config.enc_width, config.compute_dtype
        self.patch_embed = Linear(config.patch_dim, width, use_bias=True, compute_dtype=dtype,
                                  key=ke)
        self.mask_token = truncated_normal_init(km, (width,), 0.02)
        self.latent_tokens = truncated_normal_init(kl, (config.n_latents, width), 0.02)
        self.transformer = _transformer(config, "enc", key=kt)
        self.to_bottleneck = Linear(width, config.latent_dim, use_bias=True, compute_dtype=dtype,
                                    key=kb)
        self.region_skip = config.region_skip

    def __call__(
        self,
        patches: Float[Array, "batch time patches patch_dim"],
        *,
        mask: Bool[Array, "batch time patches"] | None = None,
    ) -> Float[Array, "batch time n_latents latent_dim"]:
        batch, time, count, _ = patches.shape
        x = self.patch_embed(2.0 * patches - 1.0).astype(jnp.float32)
        if mask is not None:
            x = jnp.where(mask[..., None], expand_to(self.mask_token, x.ndim), x)
        latents = _broadcast_tokens(self.latent_tokens, batch, time)
        if self.region_skip:
            pool = region_matrix(latents.shape[2], count)
            latents = latents + jnp.einsum("lp,btpw->btlw", pool, x)
        rules = modality_mask([count, latents.shape[2]], ENCODER_RULES)
        y = self.transformer(jnp.concatenate([x, latents], axis=2), space_mask=jnp.asarray(rules))
        pre = self.to_bottleneck(y[:, :, count:]).astype(jnp.float32)
        pre = pre * jax.lax.rsqrt(jnp.mean(jnp.square(pre), axis=-1, keepdims=True) + 1e-6)
        return jnp.tanh(pre)


class Decoder(eqx.Module):
    """Bottleneck [b, t, n_latents, latent_dim] -> patch vectors [b, t, patches, patch_dim]."""

    from_bottleneck: Linear
    readout_tokens: Float[Array, "patches width"]
    transformer: AxialTransformer
    to_pixels: Linear
    region_skip: bool = eqx.field(static=True)

    def __init__(self, config: TokenizerConfig, *, key: PRNGKeyArray):
        kb, kr, kt, kp = jax.random.split(key, 4)
        width, dtype = config.dec_width, config.compute_dtype
        self.from_bottleneck = Linear(config.latent_dim, width, use_bias=True,
                                      compute_dtype=dtype, key=kb)
        self.readout_tokens = truncated_normal_init(kr, (config.n_patches, width), 0.02)
        self.transformer = _transformer(config, "dec", key=kt)
        self.to_pixels = Linear(width, config.patch_dim, use_bias=True, init_scale=0.0,
                                compute_dtype=dtype, key=kp)  # starts as mid-grey
        self.region_skip = config.region_skip

    def __call__(
        self, latents: Float[Array, "batch time n_latents latent_dim"]
    ) -> Float[Array, "batch time patches patch_dim"]:
        batch, time, n_latents, _ = latents.shape
        readouts = _broadcast_tokens(self.readout_tokens, batch, time)
        count = readouts.shape[2]
        lifted = self.from_bottleneck(latents).astype(jnp.float32)
        if self.region_skip:
            spread = (region_matrix(n_latents, count) > 0).astype(jnp.float32)
            readouts = readouts + jnp.einsum("lp,btlw->btpw", spread, lifted)
        x = jnp.concatenate([readouts, lifted], axis=2)
        rules = modality_mask([count, n_latents], DECODER_RULES)
        y = self.transformer(x, space_mask=jnp.asarray(rules))
        return (self.to_pixels(y[:, :, :count]).astype(jnp.float32) + 1.0) * 0.5


class Tokenizer(eqx.Module):
    """Causal video tokenizer: `encode(video) -> latents`, `decode(latents) -> video`."""

    encoder: Encoder
    decoder: Decoder
    config: TokenizerConfig = eqx.field(static=True)

    def __init__(self, config: TokenizerConfig, *, key: PRNGKeyArray):
        ke, kd = jax.random.split(key)
        self.encoder = Encoder(config, key=ke)
        self.decoder = Decoder(config, key=kd)
        self.config = config

    def encode(
        self,
        video: Video,
        *,
        mask: Bool[Array, "batch time patches"] | None = None,
    ) -> Float[Array, "batch time n_latents latent_dim"]:
        """Video (uint8, or float in [0, 1]) -> bottleneck in (-1, 1); `mask` marks MAE-masked
        patches (training only). Latents of frame t depend only on frames 0..t."""
        if video.shape[2:4] != self.config.image_size:
            raise ValueError(f"video frames are {video.shape[2:4]}, the tokenizer was built for "
                             f"image_size {self.config.image_size}.")
        return self.encoder(patchify(video, self.config.patch), mask=mask)

    def decode(
        self, latents: Float[Array, "batch time n_latents latent_dim"]
    ) -> Float[Array, "batch time height width 3"]:
        """Bottleneck -> float32 video, roughly in [0, 1] (unclipped); frame t uses latents 0..t."""
        want = (self.config.n_latents, self.config.latent_dim)
        if latents.shape[2:] != want:
            raise ValueError(f"latents have shape {latents.shape[2:]} per frame, expected "
                             f"(n_latents, latent_dim) = {want}.")
        return unpatchify(self.decoder(latents), self.config.image_size, self.config.patch)
