"""Dynamics model: action encoders and alignment, shortcut-forcing and MeanFlow losses, and the
KV-cached autoregressive sampler. Works on tokenizer latents; knows nothing about pixels or
files."""
