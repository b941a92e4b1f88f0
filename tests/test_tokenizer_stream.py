"""Per-frame tokenizer (tokenizer.stream): streamed encode/decode against the whole-sequence
models, the sliding window past the capacity, compiling once, and shape errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizer import Tokenizer, TokenizerConfig, decode_frame, encode_frame, patchify, unpatchify

SMALL = dict(image_size=(16, 16), patch=4, n_latents=4, latent_dim=8, enc_width=32, enc_depth=2,
             enc_heads=2, enc_kv_heads=1, dec_width=32, dec_depth=2, dec_heads=2, dec_kv_heads=1)
ATOL = 1e-5

encode, decode = eqx.filter_jit(Tokenizer.encode), eqx.filter_jit(Tokenizer.decode)


@eqx.filter_jit
def encode_masked(model, video, time_mask):
    return model.encoder(patchify(video, model.config.patch), time_mask=time_mask)


@eqx.filter_jit
def decode_masked(model, latents, time_mask):
    patches = model.decoder(latents, time_mask=time_mask)
    return unpatchify(patches, model.config.image_size, model.config.patch)


def _model(seed=0, **kw):
    """A tiny tokenizer whose pixel read-out is random (it is initialised to zero, which would
    make every decoded frame mid-grey whatever the decoder computes)."""
    model = Tokenizer(TokenizerConfig(**(SMALL | kw)), key=jax.random.key(seed))
    weight = model.decoder.to_pixels.weight
    random = 0.5 * jax.random.normal(jax.random.key(seed + 100), weight.shape)
    return eqx.tree_at(lambda m: m.decoder.to_pixels.weight, model, random)


def _video(b=2, t=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t, 16, 16, 3)), jnp.uint8)


def _latents(b=2, t=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-0.99, 0.99, (b, t, 4, 8)), jnp.float32)


def _stream(model, inputs, capacity, step):
    """Feeds inputs [batch, time, ...] frame by frame through `step`; stacks the outputs."""
    caches = model.init_caches(inputs.shape[0], capacity)
    out = []
    for t in range(inputs.shape[1]):
        y, caches = step(model, inputs[:, t], caches)
        out.append(y)
    return jnp.stack(out, axis=1)


def _window_mask(batch, time, capacity):
    """Frame i sees frame j iff i - capacity < j <= i (built here, independently of the cache)."""
    i, j = np.arange(time)[:, None], np.arange(time)[None, :]
    return jnp.asarray(np.broadcast_to((j <= i) & (j > i - capacity), (batch, time, time)))


def test_stream_equals_whole_sequence_while_the_window_has_room():
    """Capacity = length: no frame leaves, so every streamed frame equals the whole-sequence
    encode / decode. Float frames in [0, 1] stream like the uint8 video they came from."""
    model, video, latents = _model(), _video(t=5), _latents(t=5)
    frames = video.astype(jnp.float32) / 255.0
    np.testing.assert_allclose(_stream(model, frames, 5, encode_frame), encode(model, video),
                               atol=ATOL)
    decoded = _stream(model, latents, 5, decode_frame)
    assert decoded.shape == (2, 5, 16, 16, 3) and decoded.dtype == jnp.float32
    np.testing.assert_allclose(decoded, decode(model, latents), atol=ATOL)
    assert np.std(np.asarray(decoded)) > 0.05  # not the constant grey of an untrained read-out


@pytest.mark.parametrize("time_every", [1, 2])  # two time layers per transformer, or one
def test_sliding_window_equals_the_window_masked_sequence(time_every):
    """Past the capacity, each streamed frame equals the whole-sequence Encoder / Decoder call in
    which frame i sees only frames i - capacity + 1 .. i, at the same time positions."""
    capacity, time = 3, 7
    model = _model(enc_time_every=time_every, dec_time_every=time_every)
    video, latents = _video(t=time, seed=1), _latents(t=time, seed=1)
    window = _window_mask(2, time, capacity)
    want = encode_masked(model, video, window)
    got = _stream(model, video, capacity, encode_frame)
    np.testing.assert_allclose(got, want, atol=ATOL)
    want = decode_masked(model, latents, window)
    np.testing.assert_allclose(_stream(model, latents, capacity, decode_frame), want, atol=ATOL)
    # The window does bound the context: the unmasked sequence differs once frames slid out.
    assert np.max(np.abs(np.asarray(got[:, capacity:] - encode(model, video)[:, capacity:]))) > 1e-3


@pytest.mark.parametrize("capacity", [1, 3])
def test_one_time_layer_window_equals_encoding_the_window_alone(capacity):
    """With a single time layer (depth 2, time_every 2) streamed frame t equals frame t of
    encode / decode of frames t - capacity + 1 .. t alone (positions 0.. instead of t - ..:
    RoPE sees only differences)."""
    model, video, latents = _model(seed=2), _video(t=6, seed=2), _latents(t=6, seed=2)
    encoded = _stream(model, video, capacity, encode_frame)
    decoded = _stream(model, latents, capacity, decode_frame)
    for t in range(capacity, 6):
        window = slice(t - capacity + 1, t + 1)
        np.testing.assert_allclose(encoded[:, t], encode(model, video[:, window])[:, -1],
                                   atol=ATOL)
        np.testing.assert_allclose(decoded[:, t], decode(model, latents[:, window])[:, -1],
                                   atol=ATOL)


def test_per_frame_functions_compile_once_and_consume_the_caches():
    """Twice the capacity in frames, one compilation each; the donated caches are spent."""
    model = _model(seed=3)
    video = _video(b=3, t=6, seed=3)  # batch 3: shapes no other test compiles
    caches = model.init_caches(3, 3)
    before = encode_frame._cache_size(), decode_frame._cache_size()
    for t in range(6):
        latents, caches = encode_frame(model, video[:, t], caches)
        _, caches = decode_frame(model, latents, caches)
        assert (encode_frame._cache_size(), decode_frame._cache_size()) == (before[0] + 1,
                                                                            before[1] + 1)
    spent = caches
    _, caches = encode_frame(model, video[:, 0], caches)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(spent.encoder))


def test_step_shape_errors_name_the_problem():
    model = _model()
    caches = model.init_caches(2, 4)
    with pytest.raises(ValueError, match=r"frame images are \(8, 8\), .*image_size \(16, 16\)"):
        model.encode_step(jnp.zeros((2, 8, 8, 3), jnp.uint8), caches)
    with pytest.raises(ValueError, match=r"frame has batch 1, .*made for batch 2"):
        model.encode_step(jnp.zeros((1, 16, 16, 3), jnp.uint8), caches)
    with pytest.raises(ValueError, match=r"latents have shape \(4, 9\) per frame"):
        model.decode_step(jnp.zeros((2, 4, 9), jnp.float32), caches)
    with pytest.raises(ValueError, match=r"latents has batch 3, .*init_caches\(3, capacity\)"):
        model.decode_step(jnp.zeros((3, 4, 8), jnp.float32), caches)
    with pytest.raises(ValueError, match=r"capacity \(0, in frames\) must be >= 1"):
        model.init_caches(2, 0)
