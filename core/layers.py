"""Dense building blocks: Linear, Embedding, RMSNorm, SwiGLU.

Parameters are float32; every layer computes in its static `compute_dtype` ("float32" or
"bfloat16"), except norms, which always compute in float32 and return the input dtype. Layers act
on the last axis and accept any leading axes.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype: str) -> str:
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
    return compute_dtype


def truncated_normal_init(
    key: PRNGKeyArray, shape: tuple[int, ...], std: float
) -> Float[Array, "..."]:
    """Normal(0, std) truncated at two standard deviations (rescaled to keep the std)."""
    return std / 0.87962566 * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


def expand_to(x: Float[Array, "..."], ndim: int) -> Float[Array, "..."]:
    """Prepends singleton axes so that x broadcasts explicitly against an ndim-rank array."""
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


class Linear(eqx.Module):
    """y = x @ W (+ b); W ~ truncated normal with std init_scale / sqrt(d_in), or zeros."""

    weight: Float[Array, "d_in d_out"]
    bias: Float[Array, " d_out"] | None
    compute_dtype: str = eqx.field(static=True)

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        use_bias: bool = False,
        init_scale: float = 1.0,
        compute_dtype: str = "float32",
        key: PRNGKeyArray,
    ):
        std = init_scale / math.sqrt(d_in)
        self.weight = (
            truncated_normal_init(key, (d_in, d_out), std)
            if init_scale > 0
            else jnp.zeros((d_in, d_out), jnp.float32)
        )
        self.bias = jnp.zeros((d_out,), jnp.float32) if use_bias else None
        self.compute_dtype = check_compute_dtype(compute_dtype)

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        dtype = jnp.dtype(self.compute_dtype)
        # One 2-D matmul over the flattened leading axes: XLA:CPU lowers the weight gradient of
        # an N-D matmul (several contracting axes) to a loop about 4x slower than this GEMM.
        d_in, d_out = self.weight.shape
        y = jnp.matmul(x.reshape(-1, d_in).astype(dtype), self.weight.astype(dtype))
        y = y.reshape(*x.shape[:-1], d_out)
        if self.bias is not None:
            y = y + expand_to(self.bias.astype(dtype), y.ndim)
        return y


class Embedding(eqx.Module):
    """Lookup table [count, dim] initialised with N(0, init_std)."""

    table: Float[Array, "count dim"]
    compute_dtype: str = eqx.field(static=True)

    def __init__(
        self,
        count: int,
        dim: int,
        *,
        init_std: float = 0.02,
        compute_dtype: str = "float32",
        key: PRNGKeyArray,
    ):
        self.table = truncated_normal_init(key, (count, dim), init_std)
        self.compute_dtype = check_compute_dtype(compute_dtype)

    def __call__(self, ids: Int[Array, "*batch"]) -> Float[Array, "*batch dim"]:
        return jnp.take(self.table, ids, axis=0).astype(jnp.dtype(self.compute_dtype))


class RMSNorm(eqx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32."""

    scale: Float[Array, " dim"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, eps: float = 1e-6, init: float = 1.0):
        self.scale = jnp.full((dim,), init, jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * inv_rms * expand_to(self.scale, x.ndim)).astype(x.dtype)


class SwiGLU(eqx.Module):
    """y = W_down (silu(x W_gate) * (x W_up)); gate and up share one matmul."""

    gate_up: Linear
    down: Linear
    hidden: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        out_init_scale: float = 1.0,
        compute_dtype: str = "float32",
        key: PRNGKeyArray,
    ):
        k1, k2 = jax.random.split(key)
        self.gate_up = Linear(dim, 2 * hidden, compute_dtype=compute_dtype, key=k1)
        self.down = Linear(
            hidden, dim, init_scale=out_init_scale, compute_dtype=compute_dtype, key=k2
        )
        self.hidden = hidden

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
        return self.down(jax.nn.silu(gate) * up)
