"""Causal video tokenizer: patchify, masked-autoencoder encoder with latent readout tokens and a
tanh bottleneck, decoder, loss and train step. Knows nothing about actions or dynamics.

config (TokenizerConfig), patches (patchify/unpatchify), model (Encoder, Decoder, Tokenizer, MAE
mask sampling), stream (per-frame encode/decode for live loops: TokenizerCaches and the compiled
encode_frame / decode_frame), perceptual (LPIPS-style distance loaded from a local .npz), train
(loss with running-RMS normalisation on the shared `core.training` train step).
"""

from tokenizer.config import TokenizerConfig
from tokenizer.model import Decoder, Encoder, Tokenizer, sample_mae_mask
from tokenizer.patches import patchify, unpatchify
from tokenizer.perceptual import PerceptualNet, load_perceptual
from tokenizer.stream import TokenizerCaches, decode_frame, encode_frame
from tokenizer.train import init_train_state, loss_terms, make_train_step, tokenizer_loss

__all__ = [
    "Decoder",
    "Encoder",
    "PerceptualNet",
    "Tokenizer",
    "TokenizerCaches",
    "TokenizerConfig",
    "decode_frame",
    "encode_frame",
    "init_train_state",
    "load_perceptual",
    "loss_terms",
    "make_train_step",
    "patchify",
    "sample_mae_mask",
    "tokenizer_loss",
    "unpatchify",
]
