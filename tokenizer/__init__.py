"""Causal video tokenizer: patchify, masked-autoencoder encoder with latent readout tokens and a
tanh bottleneck, decoder, loss and train step. Knows nothing about actions or dynamics."""
