"""Pure Equinox building blocks shared by the tokenizer and the dynamics model.

layers (Linear, Embedding, RMSNorm, SwiGLU), attention (GQA, QK-norm, RoPE, soft-cap), masks
(block-causal, modality), transformer (space-time axial stack), images (uint8 <-> float, PSNR,
SSIM, Laplacian). Nothing here knows about datasets, configs or files.
"""

from core.attention import Attention
from core.images import laplacian, psnr, ssim, to_float, to_uint8
from core.layers import COMPUTE_DTYPES, Embedding, Linear, RMSNorm, SwiGLU
from core.masks import block_causal_mask, causal_mask, frame_mask, modality_mask
from core.transformer import AxialTransformer, TransformerBlock

__all__ = [
    "COMPUTE_DTYPES",
    "Attention",
    "AxialTransformer",
    "Embedding",
    "Linear",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "block_causal_mask",
    "causal_mask",
    "frame_mask",
    "laplacian",
    "modality_mask",
    "psnr",
    "ssim",
    "to_float",
    "to_uint8",
]
