"""Tiny random-weight world models and context clips for the player's tests."""

import equinox as eqx
import jax
import numpy as np

from dynamics import ActionSpec, Dynamics, DynamicsConfig
from play.env import Contexts
from tokenizer import Tokenizer, TokenizerConfig
from world import WorldModel

TOKENIZER = TokenizerConfig(image_size=(16, 16), patch=4, n_latents=4, latent_dim=8, enc_width=32,
                            enc_depth=2, enc_heads=2, enc_kv_heads=1, dec_width=32, dec_depth=2,
                            dec_heads=2, dec_kv_heads=1)


CALVIN = ActionSpec("continuous", dim=7)


def tiny_world(action: ActionSpec = CALVIN, seed: int = 0) -> WorldModel:
    """Random weights, with a random pixel read-out so that different latents decode to different
    frames."""
    keys = jax.random.split(jax.random.key(seed))
    dynamics = DynamicsConfig(latent_tokens=4, latent_dim=8, action=action, width=32, depth=2,
                              heads=2, time_every=2, registers=1, k_max=4, latent_mean=0.1,
                              latent_std=0.5)
    tokenizer = Tokenizer(TOKENIZER, key=keys[0])
    pixels = tokenizer.decoder.to_pixels.weight  # zero at initialisation: frames would be grey
    tokenizer = eqx.tree_at(lambda t: t.decoder.to_pixels.weight, tokenizer,
                            0.5 * jax.random.normal(jax.random.key(seed + 1), pixels.shape))
    return WorldModel(tokenizer, Dynamics(dynamics, key=keys[1]))


def tiny_contexts(spec: ActionSpec, clips: int = 3, length: int = 6, seed: int = 0) -> Contexts:
    """Random frames and valid random actions (dataset convention)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (clips, length, *TOKENIZER.image_size, 3), dtype=np.uint8)
    if spec.kind == "continuous":
        actions = rng.uniform(-1, 1, (clips, length, spec.dim)).astype(np.float32)
    else:
        actions = rng.integers(0, spec.classes, (clips, length, len(spec.classes)))
        actions = actions.astype(np.int32)[..., 0] if spec.kind == "discrete" else actions
    return Contexts(frames, actions.astype(actions.dtype), np.ones((clips, length), bool))
