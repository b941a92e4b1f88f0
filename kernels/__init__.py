"""Attention math, its backends and the KV cache.

`rope_attention` is the single attention function of the project: every model calls it, and each
backend implements the same contract: "xla" (pure-jnp reference), "cudnn"
(jax.nn.dot_product_attention, RoPE applied by XLA, GPU only), "pallas" (RoPE-fused flash
attention with its own backward; interpret mode on CPU) and "auto". `KVCache` and
`cached_attention` serve autoregressive generation with in-place cache writes.
"""

from kernels.attention import BACKENDS, check_backend, rope_attention, select_backend
from kernels.cache import KVCache, cached_attention
from kernels.rope import apply_rope, rope_cos_sin

__all__ = [
    "BACKENDS",
    "KVCache",
    "apply_rope",
    "cached_attention",
    "check_backend",
    "rope_attention",
    "rope_cos_sin",
    "select_backend",
]
