"""The KV cache's ring layout against a float64 sliding window, and make_room without copies.

The reference keeps a plain list of the last `capacity` tokens (un-rotated keys, absolute
positions) and attends over it with `attention64`, which rotates every key at its absolute
position; the cache must give the same outputs while it writes into a ring that wraps.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.actions import ActionSpec
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.sampler import next_frame
from kernels import KVCache, cached_attention
from kernels.cache import write_slots
from tests.reference import attention64, rope64

HEADS, KV_HEADS, DIM, BATCH, SOFTCAP, ROPE_BASE = 4, 2, 32, 2, 4.0, 10_000.0

# capacity, tokens per step ("frame"), mask among a frame's tokens (None: causal), frames
SCENARIOS = {
    "one_token_frames": (4, 1, None, 12),  # wraps three times
    "two_token_frames_within": (6, 2, np.ones((2, 2), bool), 7),
    "two_token_frames_wrapping_write": (5, 2, np.tril(np.ones((2, 2), bool)), 7),
}


class SlidingWindow:
    """The last `capacity` tokens as (absolute position, key, value), oldest first."""

    def __init__(self, capacity):
        self.capacity, self.held = capacity, []

    def make_room(self, n):
        self.held = self.held[max(0, len(self.held) + n - self.capacity):]

    def attend(self, q, k, v, positions, mask):
        held = len(self.held)
        keys = np.concatenate([*(t[1] for t in self.held), k], axis=1)
        values = np.concatenate([*(t[2] for t in self.held), v], axis=1)
        k_pos = np.asarray([*(t[0] for t in self.held), *positions])
        visible = np.ones((len(positions), held + len(positions)), bool)
        if mask is None:
            visible &= k_pos[None, :] <= np.asarray(positions)[:, None]
        else:
            visible[:, held:] = mask
        return attention64(q, keys, values, q_pos=positions, k_pos=k_pos, mask=visible,
                           rope_base=ROPE_BASE, softcap=SOFTCAP)

    def commit(self, k, v, positions):
        self.held += [(p, k[:, i:i + 1], v[:, i:i + 1]) for i, p in enumerate(positions)]


def _tokens(rng, n):
    return tuple(rng.normal(size=(BATCH, n, h, DIM)).astype(np.float32)
                 for h in (HEADS, KV_HEADS, KV_HEADS))


@pytest.mark.parametrize("backend", ["xla", "pallas"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_ring_cache_equals_float64_sliding_window(scenario, backend):
    """Every frame: make_room, a scratch write of other tokens, the frame's write, commit.
    Outputs match the reference over more frames than the capacity, and each held token's key
    sits rotated at its absolute position in slot position % capacity."""
    capacity, n, mask, frames = SCENARIOS[scenario]
    rng = np.random.default_rng(hash(scenario) % 2**32)
    step = eqx.filter_jit(lambda c, q, k, v: cached_attention(
        c, q, k, v, mask=None if mask is None else jnp.asarray(mask), rope_base=ROPE_BASE,
        softcap=SOFTCAP, backend=backend), donate="all-except-first")
    cache, window = KVCache.create(BATCH, capacity, KV_HEADS, DIM), SlidingWindow(capacity)
    for frame in range(frames):
        cache = cache.make_room(n)
        window.make_room(n)
        positions = list(range(frame * n, (frame + 1) * n))
        _, cache = step(cache, *map(jnp.asarray, _tokens(rng, n)))  # a denoising step
        q, k, v = _tokens(rng, n)
        out, cache = step(cache, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
        want = window.attend(q, k, v, positions, mask)
        np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
        cache = cache.commit(n)
        window.commit(k, v, positions)
    assert int(cache.offset) == window.held[0][0] and int(cache.index) == len(window.held)
    for position, k, v in window.held:
        slot = position % capacity
        np.testing.assert_allclose(cache.keys[:, slot:slot + 1], rope64(k, position, ROPE_BASE),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(cache.values[:, slot:slot + 1], v)
    np.testing.assert_array_equal(cache.slot_positions() % capacity, np.arange(capacity))


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_write_wraps_around_the_end(backend):
    buffer = jnp.zeros((1, 5, 1, 32))
    new = jnp.arange(3 * 32, dtype=jnp.float32).reshape(1, 3, 1, 32) + 1.0
    got = write_slots(buffer, new, jnp.asarray(4, jnp.int32), backend=backend)
    want = np.zeros((1, 5, 1, 32), np.float32)
    want[:, [4, 0, 1]] = new
    np.testing.assert_array_equal(got, want)


def test_make_room_on_a_full_cache_leaves_the_buffers_alone():
    """make_room only moves the counters (its jaxpr passes the buffers through), and a whole
    frame on a full cache changes exactly one slot: the oldest token's."""
    rng = np.random.default_rng(0)
    cache = KVCache.create(BATCH, 3, KV_HEADS, DIM)
    for _ in range(4):
        cache = cache.make_room(1)
        cache = cached_attention(cache, *map(jnp.asarray, _tokens(rng, 1)))[1].commit(1)
    jaxpr = jax.make_jaxpr(lambda c: c.make_room(1))(cache).jaxpr
    assert jaxpr.outvars[:2] == jaxpr.invars[:2]
    before = np.asarray(cache.keys), np.asarray(cache.values)
    oldest = int(cache.offset) % 3
    cache = cache.make_room(1)
    cache = cached_attention(cache, *map(jnp.asarray, _tokens(rng, 1)))[1].commit(1)
    for old, new in zip(before, (cache.keys, cache.values), strict=True):
        changed = np.any(old != np.asarray(new), axis=(0, 2, 3))
        np.testing.assert_array_equal(changed, np.arange(3) == oldest)
    assert (int(cache.index), int(cache.offset)) == (3, 2)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def test_next_frame_touches_the_cache_buffers_only_by_the_writes():
    """In one generated frame (make_room, K denoising passes, the context pass) every operation
    with a cache-buffer-sized result is one of the 2 (K + 1) in-place writes per cache: nothing
    rolls, concatenates or copies the capacity axis."""
    config = DynamicsConfig(latent_tokens=4, latent_dim=3, action=ActionSpec("continuous", dim=2),
                            width=32, depth=2, heads=2, time_every=2, registers=1, k_max=8, pack=2)
    model = Dynamics(config, key=jax.random.key(0))
    caches = model.init_caches(2, 5)
    steps = 3
    jaxpr = jax.make_jaxpr(lambda c: next_frame(
        model, c, jnp.zeros((2, 1, 2)), jnp.ones((2, 1), bool), jax.random.key(1),
        jnp.asarray(7, jnp.int32), steps=steps, context_signal=0.9))(caches).jaxpr
    buffer = caches[0].keys.shape
    rows, capacity = buffer[0], buffer[1]
    sized = [eqn.primitive.name for eqn in _equations(jaxpr)
             if any(getattr(v.aval, "shape", ())[:2] in ((rows, capacity), (rows, 2 * capacity))
                    and v.aval.ndim == 4 for v in eqn.outvars)]
    wrappers = {"pjit", "jit", "closed_call", "custom_jvp_call", "custom_vjp_call"}
    writes = [name for name in sized if name not in wrappers]
    assert writes == ["scatter"] * (2 * (steps + 1) * len(caches)), sorted(set(sized))
