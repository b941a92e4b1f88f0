"""core.timing's memory accounting against hand-counted cases."""

import jax
import jax.numpy as jnp

from core.timing import backward_residual_bytes

B, D = 64, 32


def chain(weights, x, *, wrap=lambda layer: layer, act=lambda h: h):
    for w in weights:
        x = wrap(lambda h, w: act(h @ w))(x, w)
    return jnp.sum(x)


def test_linear_chain_keeps_each_hidden_input():
    """d loss / d w_i = h_{i-1}^T g: h_1..h_3 are kept, h_0 = x is an input (not counted)."""
    weights = [jax.ShapeDtypeStruct((D, D), jnp.float32)] * 4
    x = jax.ShapeDtypeStruct((B, D), jnp.float32)
    assert backward_residual_bytes(chain, weights, x) == 3 * B * D * 4


def test_checkpointed_block_keeps_only_its_input():
    """One `jax.checkpoint`ed block of four tanh layers after a first matmul: only the block's
    input (x @ w0) is kept; without the checkpoint every layer keeps at least one array."""
    weights = [jax.ShapeDtypeStruct((D, D), jnp.bfloat16)] * 5
    x = jax.ShapeDtypeStruct((B, D), jnp.bfloat16)

    def loss(weights, x, wrap):
        block = lambda h, ws: chain(ws, h, act=jnp.tanh)
        return wrap(block)(x @ weights[0], weights[1:])

    assert backward_residual_bytes(lambda w, x: loss(w, x, jax.checkpoint), weights, x) == \
        B * D * 2
    assert backward_residual_bytes(lambda w, x: loss(w, x, lambda f: f), weights, x) >= \
        5 * B * D * 2


def test_abstract_shapes_far_beyond_memory():
    """Traced only: a 64 GiB activation is counted without being allocated."""
    w = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    x = jax.ShapeDtypeStruct((2**24, 1024), jnp.float32)
    assert backward_residual_bytes(lambda w, x: jnp.sum(jnp.tanh(x @ w)), w, x) >= 2**24 * 1024 * 4
