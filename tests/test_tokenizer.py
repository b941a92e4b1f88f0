"""Causal video tokenizer: patches, shapes, exact causality, MAE masking, bottleneck range, loss
normalisation, perceptual weights, the edge term, and learning on a small generated video."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenizer import (
    Tokenizer,
    TokenizerConfig,
    init_train_state,
    load_perceptual,
    loss_terms,
    make_train_step,
    patchify,
    sample_mae_mask,
    tokenizer_loss,
    unpatchify,
)
from tokenizer.patches import as_float

SMALL = dict(image_size=(16, 16), patch=4, n_latents=4, latent_dim=8, enc_width=32, enc_depth=2,
             enc_heads=2, enc_kv_heads=1, dec_width=32, dec_depth=2, dec_heads=2, dec_kv_heads=1)

encode, decode = eqx.filter_jit(Tokenizer.encode), eqx.filter_jit(Tokenizer.decode)


def _model(seed=0, **kw):
    return Tokenizer(TokenizerConfig(**(SMALL | kw)), key=jax.random.key(seed))


def _video(b=2, t=4, h=16, w=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t, h, w, 3)), jnp.uint8)


def moving_shapes(batch, time, size, seed=0):
    """uint8 [batch, time, size, size, 3]: a square and a disc of random colours moving in
    straight lines over a dark background of random colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    video = np.zeros((batch, time, size, size, 3))
    for b in range(batch):
        video[b] = rng.uniform(0.0, 0.3, 3)
        for shape in ("square", "disc"):
            colour, radius = rng.uniform(0.4, 1.0, 3), rng.uniform(2.0, 4.0)
            start, velocity = rng.uniform(4, size - 4, 2), rng.uniform(-1.5, 1.5, 2)
            for t in range(time):
                dy, dx = yy - (start[0] + t * velocity[0]), xx - (start[1] + t * velocity[1])
                if shape == "square":
                    inside = (np.abs(dy) < radius) & (np.abs(dx) < radius)
                else:
                    inside = dy**2 + dx**2 < radius**2
                video[b, t][inside] = colour
    return np.round(video * 255).astype(np.uint8)


def test_attention_backend_is_the_configured_one():
    """`backend="pallas"` (the kernel in interpret mode here) encodes and decodes like the XLA
    reference with the same weights, masks included (head size 32, the kernel's minimum)."""
    sizes = dict(enc_width=64, dec_width=64)
    video = _video(b=1, t=3)
    mask = sample_mae_mask((1, 3, 16), 0.5, key=jax.random.key(1))[0]
    outputs = []
    for backend in ("xla", "pallas"):
        model = _model(backend=backend, **sizes)
        traced = str(jax.make_jaxpr(lambda m, v: m.decode(m.encode(v)))(model, video))
        assert ("pallas_call" in traced) == (backend == "pallas")
        latents = encode(model, video, mask=mask)
        outputs.append((latents, decode(model, latents)))
    for got, want in zip(outputs[1], outputs[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


# --- patches -------------------------------------------------------------------------------------

def test_patchify_matches_loop_reference_and_round_trips():
    video = _video(b=1, t=2, h=8, w=12)
    got = np.asarray(patchify(video, 4))
    frames = np.asarray(video, np.float64) / 255.0
    assert got.shape == (1, 2, 6, 48) and got.dtype == np.float32
    for t in range(2):
        for r in range(2):
            for c in range(3):
                want = frames[0, t, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1)
                np.testing.assert_allclose(got[0, t, 3 * r + c], want, rtol=1e-6)
    back = unpatchify(jnp.asarray(got), (8, 12), 4)
    np.testing.assert_allclose(back, frames, rtol=1e-6)
    floats = jnp.asarray(frames, jnp.float32)
    np.testing.assert_allclose(patchify(floats, 4), got, rtol=1e-6)


def test_patchify_rejects_indivisible_frames():
    with pytest.raises(ValueError, match="width 10 is not divisible by the patch size 4"):
        patchify(_video(h=8, w=10), 4)
    with pytest.raises(ValueError, match="height 6"):
        patchify(_video(h=6, w=8), 4)


# --- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(image_size=(16, 18)), "image_size width 18 is not divisible by patch 4"),
    (dict(n_latents=0), "n_latents must be >= 1"),
    (dict(enc_width=30), r"enc_width \(30\) must be divisible by enc_heads"),
    (dict(dec_heads=2, dec_kv_heads=3), r"dec_heads \(2\) must be a multiple of dec_kv_heads"),
    (dict(dec_time_every=3), r"dec_time_every \(3\) > dec_depth \(2\)"),
    (dict(p_max=1.5), "p_max must be in"),
    (dict(rms_decay=1.0), "rms_decay must be in"),
    (dict(compute_dtype="float16"), "compute_dtype must be one of"),
    (dict(backend="triton"), "Unknown attention backend 'triton'"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**(SMALL | change))


# --- encode / decode -----------------------------------------------------------------------------

@pytest.mark.parametrize("image_size, patch, n_latents, latent_dim, dtype", [
    ((16, 16), 4, 4, 8, "float32"),
    ((8, 24), 4, 3, 16, "float32"),
    ((16, 32), 8, 8, 4, "bfloat16"),
])
def test_encode_decode_shapes_and_dtypes(image_size, patch, n_latents, latent_dim, dtype):
    model = _model(image_size=image_size, patch=patch, n_latents=n_latents,
                   latent_dim=latent_dim, compute_dtype=dtype)
    video = _video(b=2, t=3, h=image_size[0], w=image_size[1])
    latents = encode(model, video)
    assert latents.shape == (2, 3, n_latents, latent_dim) and latents.dtype == jnp.float32
    recon = decode(model, latents)
    assert recon.shape == (2, 3, *image_size, 3) and recon.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(recon)))


def test_shape_mismatches_are_reported():
    model = _model()
    with pytest.raises(ValueError, match=r"built for image_size \(16, 16\)"):
        encode(model, _video(h=8, w=8))
    with pytest.raises(ValueError, match=r"expected \(n_latents, latent_dim\)"):
        decode(model, jnp.zeros((1, 2, 4, 9), jnp.float32))


def test_bottleneck_is_inside_open_interval():
    model = _model(seed=1)
    videos = [_video(b=1, t=2, seed=3), jnp.full((1, 2, 16, 16, 3), 255, jnp.uint8),
              jnp.zeros((1, 2, 16, 16, 3), jnp.uint8)]
    for video in videos:
        z = np.asarray(encode(model, video))
        assert np.all(np.abs(z) < 1.0)
    assert np.std(np.asarray(encode(model, videos[0]))) > 0.1  # the bottleneck is used


def test_latents_and_frames_never_depend_on_the_future():
    """Exact equality: changing frames (or latents) after t leaves frame t's outputs untouched;
    encoding a prefix alone gives the same latents (frame-by-frame use)."""
    model = _model(enc_depth=4, dec_depth=4)
    video, other = _video(t=5, seed=1), _video(t=5, seed=2)
    latents = encode(model, video)
    for t in range(4):
        changed = video.at[:, t + 1:].set(other[:, t + 1:])
        z = encode(model, changed)
        np.testing.assert_array_equal(z[:, :t + 1], latents[:, :t + 1])
        assert np.any(np.asarray(z[:, t + 1:] != latents[:, t + 1:]))
    np.testing.assert_allclose(encode(model, video[:, :2]), latents[:, :2], atol=1e-5)
    recon = decode(model, latents)
    for t in range(4):
        frames = decode(model, latents.at[:, t + 1:].set(-latents[:, t + 1:]))
        np.testing.assert_array_equal(frames[:, :t + 1], recon[:, :t + 1])
    # Time layers do carry information forward: frame 0 changes the latents of frame 3.
    z = encode(model, video.at[:, 0].set(other[:, 0]))
    assert np.any(np.asarray(z[:, 3] != latents[:, 3]))


# --- MAE masking ---------------------------------------------------------------------------------

def test_mask_fraction_matches_p():
    n = 2048
    mask, p = sample_mae_mask((16, 8, n), 0.9, key=jax.random.key(0))
    mask, p = np.asarray(mask), np.asarray(p, np.float64)
    assert mask.dtype == bool and p.shape == (16, 8)
    assert p.min() >= 0.0 and p.max() <= 0.9
    fraction = mask.mean(axis=-1)
    bound = 5 * np.sqrt(p * (1 - p) / n) + 1e-9  # five binomial standard deviations
    assert np.all(np.abs(fraction - p) <= bound)
    assert abs(p.mean() - 0.45) < 0.1 and abs(p.var() - 0.9**2 / 12) < 0.03  # U(0, 0.9)
    never, p0 = sample_mae_mask((4, 4, 64), 0.0, key=jax.random.key(1))
    assert not np.any(np.asarray(never)) and np.all(np.asarray(p0) == 0.0)


def test_masked_patches_are_replaced_by_the_mask_token():
    """Latents ignore the content of masked patches exactly; a fully masked frame is seen as
    mask tokens only."""
    model = _model()
    video, other = _video(t=3, seed=4), _video(t=3, seed=5)
    mask, _ = sample_mae_mask((2, 3, 16), 0.9, key=jax.random.key(2))
    pixel_mask = jnp.repeat(jnp.repeat(mask.reshape(2, 3, 4, 4), 4, axis=2), 4, axis=3)
    swapped = jnp.where(pixel_mask[..., None], other, video)
    np.testing.assert_array_equal(encode(model, video, mask=mask),
                                  encode(model, swapped, mask=mask))
    everything = jnp.ones((2, 3, 16), bool)
    np.testing.assert_array_equal(encode(model, video, mask=everything),
                                  encode(model, other, mask=everything))
    assert np.any(np.asarray(encode(model, video) != encode(model, video, mask=mask)))


# --- perceptual weights --------------------------------------------------------------------------

def _perceptual_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        conv0_weight=rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        conv0_bias=rng.normal(0, 0.1, 4).astype(np.float32),
        lin0=rng.uniform(0, 1, 4).astype(np.float32),
        conv1_weight=rng.normal(0, 0.3, (5, 4, 1, 1)).astype(np.float32),
        conv1_bias=rng.normal(0, 0.1, 5).astype(np.float32),
        lin1=rng.uniform(0, 1, 5).astype(np.float32),
    )


def _perceptual64(arrays, a, b):
    """float64 numpy reference of the documented network and distance."""
    def features(x):
        x, out = 2.0 * np.asarray(x, np.float64) - 1.0, []
        for i in range(2):
            w, bias = arrays[f"conv{i}_weight"], arrays[f"conv{i}_bias"]
            if i:
                n, h, wd, c = x.shape
                x = x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
            k, (n, h, wd, _) = w.shape[-1], x.shape
            padded = np.pad(x, ((0, 0), (k // 2,) * 2, (k // 2,) * 2, (0, 0)))
            y = np.zeros((n, h, wd, w.shape[0])) + bias
            for dy in range(k):
                for dx in range(k):
                    y += padded[:, dy:dy + h, dx:dx + wd] @ w[:, :, dy, dx].T
            x = np.maximum(y, 0.0)
            out.append(x / np.sqrt(np.sum(x**2, axis=-1, keepdims=True) + 1e-8))
        return out

    return sum(np.mean((fa - fb) ** 2 @ arrays[f"lin{i}"], axis=(1, 2))
               for i, (fa, fb) in enumerate(zip(features(a), features(b), strict=True)))


def test_perceptual_distance_matches_reference(tmp_path):
    arrays = _perceptual_arrays()
    np.savez(tmp_path / "weights.npz", **arrays)
    net = load_perceptual(tmp_path / "weights.npz")
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 8, 8, 3)), rng.random((3, 8, 8, 3))
    got = net(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, _perceptual64(arrays, a, b), rtol=1e-4)
    same = net(jnp.asarray(a, jnp.float32)[None], jnp.asarray(a, jnp.float32)[None])
    assert same.shape == (1, 3) and np.all(np.asarray(same) == 0.0)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("lin1"), "array 'lin1' is missing"),
    (lambda d: d.update(conv1_weight=np.zeros((5, 3, 1, 1), np.float32)),
     r"'conv1_weight' has shape \(5, 3, 1, 1\), expected \(out, 4, k, k\)"),
    (lambda d: d.update(conv0_bias=np.zeros(3, np.float32)), r"'conv0_bias' has shape \(3,\)"),
    (lambda d: d.update(lin0=-np.ones(4, np.float32)), "'lin0' has negative values"),
    (lambda d: d.update(extra=np.zeros(2, np.float32)), r"unexpected arrays \['extra'\]"),
    (lambda d: d.update(conv0_weight=np.zeros((4, 3, 3, 3), np.int32)), "expected a float"),
    (lambda d: d.clear(), "'conv0_weight' is missing"),
])
def test_perceptual_file_errors_name_file_and_problem(tmp_path, edit, message):
    arrays = _perceptual_arrays()
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_perceptual(path)
    assert str(path) in str(info.value)


def test_missing_or_unreadable_perceptual_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz does not exist"):
        load_perceptual(tmp_path / "nowhere.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz is not a readable \.npz file"):
        load_perceptual(tmp_path / "text.npz")


# --- train step ----------------------------------------------------------------------------------

def test_train_step_normalises_terms_by_running_rms(tmp_path):
    """The state's EMAs and the reported loss follow the documented formula, computed here in
    float64 from the reported raw terms; the old state is donated."""
    np.savez(tmp_path / "w.npz", **_perceptual_arrays())
    net = load_perceptual(tmp_path / "w.npz")
    model = _model(rms_decay=0.9, perceptual_weight=0.5, edge_weight=0.3)
    optimizer = optax.adam(1e-3)
    state = init_train_state(model, optimizer, perceptual=net)
    step = make_train_step(optimizer, perceptual=net)
    video, ema = _video(t=3), {"mse": 0.0, "perceptual": 0.0, "edges": 0.0}
    for i in range(3):
        old = state
        state, metrics = step(state, video, key=jax.random.key(i))
        assert old.step.is_deleted() and not video.is_deleted()
        want = 0.0
        for name, weight in (("mse", 1.0), ("perceptual", 0.5), ("edges", 0.3)):
            value = float(metrics[name])
            ema[name] = 0.9 * ema[name] + 0.1 * value**2
            np.testing.assert_allclose(state.loss_state[name], ema[name], rtol=1e-5)
            want += weight * value / np.sqrt(ema[name] / (1 - 0.9 ** (i + 1)))
        np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    assert int(state.step) == 3
    assert set(metrics) == {"loss", "mse", "perceptual", "edges", "psnr", "grad_norm", "skipped"}
    with pytest.raises(ValueError, match="build both with the same"):
        make_train_step(optimizer)(state, video, key=jax.random.key(0))


def test_edge_term_is_the_mean_laplacian_difference_of_the_reconstruction():
    """The "edges" term against a float64 Laplacian of the same masked reconstruction; with
    edge_weight 0 the term is absent."""
    model, video, key = _model(edge_weight=0.3), _video(t=2), jax.random.key(3)
    rms_sq = {"mse": jnp.zeros(()), "edges": jnp.zeros(())}
    _, (metrics, _) = tokenizer_loss(model, rms_sq, jnp.zeros((), jnp.int32), video, key=key)
    mask, _ = sample_mae_mask((2, 2, model.config.n_patches), model.config.p_max, key=key)
    recon = np.asarray(model.decode(model.encode(as_float(video), mask=mask)), np.float64)
    truth = np.asarray(video, np.float64) / 255.0

    def lap(x):
        return (x[..., :-2, 1:-1, :] + x[..., 2:, 1:-1, :] + x[..., 1:-1, :-2, :]
                + x[..., 1:-1, 2:, :] - 4 * x[..., 1:-1, 1:-1, :])

    np.testing.assert_allclose(metrics["edges"], np.mean(np.abs(lap(recon) - lap(truth))),
                               rtol=1e-4)
    assert loss_terms(_model().config, None) == ("mse",)


def test_small_tokenizer_overfits_moving_shapes():
    """Learning: a ~0.2M-parameter tokenizer (16x16 frames, 16 patches, 16 latents x 16) trained
    without masking (p_max = 0) on one fixed batch of 2 clips x 4 frames of moving shapes
    reconstructs it at >= 28 dB PSNR (a flat mean-colour frame scores ~14 dB) within 250 Adam
    steps. It shows that gradients reach every part of encoder, bottleneck and decoder and that
    the 16-latent bottleneck carries frame-specific detail, not just the mean."""
    config = TokenizerConfig(image_size=(16, 16), patch=4, n_latents=16, latent_dim=16,
                             enc_width=64, enc_depth=2, enc_heads=4, enc_kv_heads=2,
                             dec_width=64, dec_depth=2, dec_heads=4, dec_kv_heads=2, p_max=0.0)
    steps = 250
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
        optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, steps, 1.5e-4)))
    state = init_train_state(Tokenizer(config, key=jax.random.key(0)), optimizer)
    step = make_train_step(optimizer)
    video = jnp.asarray(moving_shapes(2, 4, 16))
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, video, key=jax.random.key(i))
    model = state.model
    recon = np.clip(np.asarray(decode(model, encode(model, video)), np.float64), 0.0, 1.0)
    target = np.asarray(video, np.float64) / 255.0
    psnr = -10 * np.log10(np.mean((recon - target) ** 2, axis=(2, 3, 4)))
    print(f"overfit: PSNR {psnr.mean():.1f} dB (min frame {psnr.min():.1f}) after {steps} steps "
          f"in {time.perf_counter() - start:.1f} s")
    assert psnr.min() >= 28.0
    assert abs(float(metrics["psnr"]) - psnr.mean()) < 3.0  # the step's PSNR tracks the same


def test_region_matrix_hand_case():
    from tokenizer.model import region_matrix

    np.testing.assert_allclose(region_matrix(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(region_matrix(3, 4), [[0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])



def test_latent_noise_perturbs_what_the_decoder_reads(monkeypatch):
    """With latent_noise s the decoder reads the encoder's latents plus Gaussian noise whose
    per-frame scale lies in [0, s] (measured by its standard deviation); with 0 it reads them
    exactly."""
    from tokenizer.train import tokenizer_loss
    video, read = _video(b=4, t=3), {}

    def recording(method, name):
        def wrapped(self, *args, **kwargs):
            read[name] = args[0] if name == "decoded" else method(self, *args, **kwargs)
            return method(self, *args, **kwargs) if name == "decoded" else read[name]
        return wrapped

    monkeypatch.setattr(Tokenizer, "encode", recording(Tokenizer.encode, "encoded"))
    monkeypatch.setattr(Tokenizer, "decode", recording(Tokenizer.decode, "decoded"))
    for noise in (0.0, 0.5):
        tokenizer_loss(_model(latent_noise=noise), {"mse": jnp.zeros(())}, jnp.asarray(0), video,
                       key=jax.random.key(1))
        delta = np.asarray(read["decoded"] - read["encoded"], np.float64)
        per_frame = delta.std(axis=(2, 3))
        if noise == 0.0:
            assert np.abs(delta).max() == 0.0
        else:
            assert 0.02 < per_frame.max() < 0.5 * 1.2
            assert len(np.unique(np.round(per_frame, 4))) == per_frame.size  # a scale per frame
