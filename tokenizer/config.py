"""`TokenizerConfig`: every size and loss setting of the tokenizer, validated at construction."""

import dataclasses

from core import COMPUTE_DTYPES
from kernels import check_backend


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the causal video tokenizer and its loss.

    Encoder and decoder are separate axial transformers (`enc_*`, `dec_*`); a layer attends
    across time when (layer + 1) % time_every == 0. `kv_heads` sets grouped-query attention.
    The loss is MSE / RMS(MSE) + perceptual_weight * LPIPS-like / RMS(LPIPS-like)
    + edge_weight * edges / RMS(edges), where edges is the mean absolute difference of the
    reconstruction's and the truth's Laplacians (a term MSE alone leaves blurred edges to), and
    each RMS is the square root of a bias-corrected EMA (decay `rms_decay`) of the squared term.
    A zero weight leaves its term out.
    """

    image_size: tuple[int, int] = (64, 64)  # (height, width)
    patch: int = 8
    n_latents: int = 16
    latent_dim: int = 32
    enc_width: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    enc_kv_heads: int = 4
    enc_time_every: int = 2
    dec_width: int = 128
    dec_depth: int = 4
    dec_heads: int = 4
    dec_kv_heads: int = 4
    dec_time_every: int = 2
    mlp_ratio: float = 4.0
    p_max: float = 0.9
    region_skip: bool = True
    perceptual_weight: float = 0.2
    edge_weight: float = 0.0
    rms_decay: float = 0.99
    latent_noise: float = 0.0  # training: decode latents + N(0, s^2), s ~ U(0, latent_noise)
    remat: bool = False
    compute_dtype: str = "float32"
    backend: str = "auto"  # attention: "auto", "xla", "cudnn" or "pallas" (kernels package)

    def __post_init__(self):
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) > 0, got {self.image_size}.")
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        positive = ["patch", "n_latents", "latent_dim", "enc_width", "enc_depth", "enc_heads",
                    "enc_kv_heads", "enc_time_every", "dec_width", "dec_depth", "dec_heads",
                    "dec_kv_heads", "dec_time_every"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for axis, size in zip(("height", "width"), self.image_size, strict=True):
            if size % self.patch:
                raise ValueError(f"image_size {axis} {size} is not divisible by patch "
                                 f"{self.patch}.")
        for part in ("enc", "dec"):
            width, depth, heads, kv_heads, time_every = (
                getattr(self, f"{part}_{n}")
                for n in ("width", "depth", "heads", "kv_heads", "time_every")
            )
            if width % heads or (width // heads) % 2:
                raise ValueError(f"{part}_width ({width}) must be divisible by {part}_heads "
                                 f"({heads}) into an even head size (RoPE).")
            if heads % kv_heads:
                raise ValueError(f"{part}_heads ({heads}) must be a multiple of {part}_kv_heads "
                                 f"({kv_heads}).")
            if time_every > depth:
                raise ValueError(f"{part}_time_every ({time_every}) > {part}_depth ({depth}) "
                                 "leaves no time layer.")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}.")
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"p_max must be in [0, 1], got {self.p_max}.")
        if self.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {self.perceptual_weight}.")
        if self.edge_weight < 0:
            raise ValueError(f"edge_weight must be >= 0, got {self.edge_weight}.")
        if self.latent_noise < 0:
            raise ValueError(f"latent_noise must be >= 0, got {self.latent_noise}.")
        if not 0.0 <= self.rms_decay < 1.0:
            raise ValueError(f"rms_decay must be in [0, 1), got {self.rms_decay}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, "
                             f"got {self.compute_dtype!r}.")
        check_backend(self.backend)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return self.image_size[0] // self.patch, self.image_size[1] // self.patch

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * 3
