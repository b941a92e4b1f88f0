"""Causal video tokenizer: patchify, masked-autoencoder encoder with latent readout tokens and a
tanh bottleneck, decoder, loss and train step. Knows nothing about actions or dynamics.

config (TokenizerConfig), patches (patchify/unpatchify), model (Encoder, Decoder, Tokenizer, MAE
mask sampling), perceptual (LPIPS-style distance loaded from a local .npz), train (loss with
running-RMS normalisation on the shared `core.training` train step).
"""

from tokenizer.config import TokenizerConfig
from tokenizer.model import Decoder, Encoder, Tokenizer, sample_mae_mask
from tokenizer.patches import patchify, unpatchify
from tokenizer.perceptual import PerceptualNet, load_perceptual
from tokenizer.train import init_train_state, loss_terms, make_train_step, tokenizer_loss

__all__ = [
    "Decoder",
    "Encoder",
    "PerceptualNet",
    "Tokenizer",
    "TokenizerConfig",
    "init_train_state",
    "load_perceptual",
    "loss_terms",
    "make_train_step",
    "patchify",
    "sample_mae_mask",
    "tokenizer_loss",
    "unpatchify",
]
