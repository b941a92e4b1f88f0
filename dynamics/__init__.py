"""Dynamics model: action encoders and alignment (`actions`), the model (`model`), shortcut-
forcing and MeanFlow objectives (`objectives`), the KV-cached autoregressive sampler (`sampler`)
and the loss and train step over dataset batches (`train`). Works on tokenizer latents; knows
nothing about pixels or files."""

from dynamics.actions import ActionEncoder, ActionSpec, align_actions
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.objectives import dynamics_loss
from dynamics.sampler import generate, generate_uncached

__all__ = [
    "ActionEncoder",
    "ActionSpec",
    "Dynamics",
    "DynamicsConfig",
    "align_actions",
    "dynamics_loss",
    "generate",
    "generate_uncached",
]
