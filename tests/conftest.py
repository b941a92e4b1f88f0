"""Test-wide settings: strict rank and dtype promotion so implicit broadcasting or mixed-precision
arithmetic in project code fails loudly. Runtime shape checking (jaxtyping + beartype) is switched
on for the project packages by `--jaxtyping-packages` in pyproject.toml."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
