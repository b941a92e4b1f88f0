"""A trained world model as one object (`WorldModel`: load, save, encode, decode) and
imagination with a policy in the loop (`imagine`). Composes the tokenizer and dynamics packages;
knows nothing about datasets or training."""

from world.imagine import Frame, Imagination, imagine, imagine_step, replay
from world.model import (
    Sampling,
    WorldModel,
    load_dynamics,
    load_tokenizer,
    read_sampling,
    save_part,
)

__all__ = [
    "Frame",
    "Imagination",
    "Sampling",
    "WorldModel",
    "imagine",
    "imagine_step",
    "load_dynamics",
    "load_tokenizer",
    "read_sampling",
    "replay",
    "save_part",
]
