"""Attention math and its backends.

`rope_attention` is the single attention function of the project: every model calls it, and
each backend (the pure-jnp "xla" reference today) implements the same contract. RoPE lives here
too because fused kernels rotate q and k themselves.
"""

from kernels.attention import BACKENDS, rope_attention
from kernels.rope import apply_rope, rope_cos_sin

__all__ = ["BACKENDS", "apply_rope", "rope_attention", "rope_cos_sin"]
