"""Eval metrics and evaluators: launch.metrics against a float64 numpy reference and hand-computed
cases, the evaluator registry and its config check, the per-batch sampling keys, the plot."""

import math

import equinox as eqx
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import convolve2d

from configs import calvin
from dynamics import ActionSpec, Dynamics, generate
from launch import evaluators, settings
from launch.evaluate import EvalContext, print_summary, run_evaluators
from launch.metrics import (
    PSNR_CAP,
    capped_psnr,
    mean_abs_laplacian,
    rollout_metrics,
    tokenizer_metrics,
)
from launch.report import plot_curves
from tokenizer import Tokenizer


def psnr64(mse):
    return np.minimum(10 * np.log10(1 / mse), 20 * np.log10(255)) if mse else 20 * np.log10(255)


def ssim64(a, b):
    """SSIM (Gaussian window 11, sigma 1.5, valid filtering, K1 0.01, K2 0.03) of two
    [h, w, c] images, mean over the map."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    g /= g.sum()
    blur = lambda z: np.apply_along_axis(lambda v: np.convolve(v, g, "valid"), 0,
                                         np.apply_along_axis(lambda v: np.convolve(v, g, "valid"),
                                                             1, z))
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                   / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))


def laplacian64(image):
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float)
    return np.mean([np.abs(convolve2d(image[..., c], kernel, "valid"))
                    for c in range(image.shape[-1])])


def test_psnr_cap_is_one_8_bit_level_on_every_pixel():
    one_level_mse = (1 / 255) ** 2
    assert abs(PSNR_CAP - 10 * math.log10(1 / one_level_mse)) < 1e-12
    assert 48.13 < PSNR_CAP < 48.14
    assert capped_psnr(np.zeros(2)).tolist() == [PSNR_CAP, PSNR_CAP]  # identical frames
    assert capped_psnr((1 / 255) ** 2 / 2) == PSNR_CAP  # finer than one level
    assert capped_psnr(1e-2) == pytest.approx(20.0, rel=1e-12)


def test_rollout_metrics_match_a_float64_reference():
    rng = np.random.default_rng(0)
    rollouts, context, horizon = 3, 2, 4
    truth = rng.random((rollouts, context + horizon, 12, 12, 3))
    truth[0, context + 1] = truth[0, context - 1]  # rollout 0, step 2: a static frame
    truth[2, context + 3] = truth[2, context - 1]  # rollout 2, step 4
    imagined = np.clip(truth + rng.normal(scale=0.1, size=truth.shape), 0, 1)
    imagined[:, context] = truth[:, context]  # step 1 imagined exactly: the cap
    imagined[1, context + 2] = truth[1, context + 2]
    imagined[1, context + 2, 3, 4, 0] += 1 / 255 / 2  # below one level: the cap too
    shuffled = rng.random(truth.shape)
    reconstruction = np.clip(truth + rng.normal(scale=0.05, size=truth.shape), 0, 1)
    got = rollout_metrics(truth, imagined, shuffled, reconstruction, context=context)

    future = truth[:, context:]
    predictions = {"": imagined[:, context:], "_shuffled_actions": shuffled[:, context:],
                   "_copy_last": np.repeat(truth[:, context - 1:context], horizon, axis=1),
                   "_copy_last_reconstruction": np.repeat(reconstruction[:, context - 1:context],
                                                          horizon, axis=1)}
    for suffix, frames in predictions.items():
        mse = np.array([[np.mean((frames[r, h] - future[r, h]) ** 2) for h in range(horizon)]
                        for r in range(rollouts)])
        want = np.mean([[psnr64(m) for m in row] for row in mse], axis=0)
        np.testing.assert_allclose(got[f"rollout.psnr{suffix}"], want, rtol=1e-12)
        np.testing.assert_allclose(got[f"rollout.psnr{suffix}_mse"],
                                   [psnr64(m) for m in mse.mean(axis=0)], rtol=1e-12)
        want = [np.mean([ssim64(frames[r, h], future[r, h]) for r in range(rollouts)])
                for h in range(horizon)]
        np.testing.assert_allclose(got[f"rollout.ssim{suffix}"], want, atol=2e-5)
    assert got["rollout.psnr_mse"][0] == PSNR_CAP  # mean MSE 0: exactly the cap
    assert got["rollout.psnr"][0] == pytest.approx(PSNR_CAP, rel=1e-15)  # a mean of caps
    assert got["rollout.psnr_copy_last"][1] > got["rollout.psnr_copy_last"][0]
    assert got["rollout.copy_last_exact"] == [0, 1, 0, 1]
    want = [np.mean([laplacian64(imagined[r, context + h]) for r in range(rollouts)])
            / np.mean([laplacian64(future[r, h]) for r in range(rollouts)])
            for h in range(horizon)]
    np.testing.assert_allclose(got["rollout.sharpness_ratio"], want, rtol=1e-12)
    assert got["rollout.sharpness_ratio"][0] == pytest.approx(1.0)


def test_sharpness_ratio_of_bright_pixels_by_hand():
    """One pixel of value v inside a frame: |Laplacian| sums to 4v + 4 * v = 8v over the valid
    interior (10 x 10 x 3 values of a 12 x 12 frame); a corner pixel is outside every 3 x 3
    window's centre ring and counts nothing. The ratio is of means over rollouts."""
    truth, imagined = np.zeros((2, 2, 3, 12, 12, 3))
    truth[0, 1, 5, 5, 0] = 1.0  # rollout 0, step 1: one bright pixel -> 8 / 300
    truth[1, 1, 3, 3, 1] = truth[1, 1, 7, 8, 2] = 1.0  # rollout 1, step 1: two -> 16 / 300
    imagined[0, 1, 5, 5, 0] = 0.5  # half as bright -> 4 / 300
    imagined[0, 1, 0, 0, :] = 1.0  # a corner pixel: nothing
    # rollout 1 imagines a flat frame; step 2 is flat in the truth: no ratio
    assert mean_abs_laplacian(truth[0, 1]) == pytest.approx(8 / 300, rel=1e-12)
    assert mean_abs_laplacian(imagined[0, 1]) == pytest.approx(4 / 300, rel=1e-12)
    got = rollout_metrics(truth, imagined, imagined, truth, context=1)
    assert got["rollout.sharpness_ratio"][0] == pytest.approx((4 + 0) / (8 + 16), rel=1e-12)
    assert got["rollout.sharpness_ratio"][1] is None
    # the tokenizer's ratio is of means over every frame: (4 + 0 + 0 + 0) / (8 + 0 + 16 + 0)
    tok = tokenizer_metrics(truth, imagined)
    assert tok["tokenizer.sharpness_ratio"] == pytest.approx(4 / 24, rel=1e-12)
    assert tokenizer_metrics(imagined * 0, imagined)["tokenizer.sharpness_ratio"] is None


def test_rollout_metrics_reject_bad_context_and_shapes():
    frames = np.zeros((1, 3, 12, 12, 3))
    with pytest.raises(ValueError, match="context"):
        rollout_metrics(frames, frames, frames, frames, context=3)
    with pytest.raises(Exception, match="imagined"):  # jaxtyping: time differs
        rollout_metrics(frames, frames[:, :2], frames, frames, context=1)


def test_unknown_evaluator_fails_validation_listing_the_known_ones(monkeypatch):
    config = calvin.get_config("tiny")
    assert settings.evaluators(config) == ["tokenizer", "rollout", "probe", "speed"]
    config.eval.evaluators = "rollout,returns"
    with pytest.raises(settings.ConfigError, match=r"config\.eval\.evaluators: .*\['returns'\].*"
                                                   r"'tokenizer', 'rollout', 'probe', 'speed'"):
        settings.validate(config, device_count=1)
    config.eval.evaluators = " , "
    with pytest.raises(settings.ConfigError, match="no evaluators"):
        settings.validate(config, device_count=1)
    monkeypatch.setitem(evaluators.EVALUATORS, "returns", lambda ctx: {"returns.mean": 1.5})
    config.eval.evaluators = "rollout,returns"
    settings.validate(config, device_count=1)  # one registry entry makes it known


def test_evaluators_merge_and_clashing_keys_fail(monkeypatch, capsys):
    monkeypatch.setitem(evaluators.EVALUATORS, "a", lambda ctx: {"a.x": ctx, "a.y": [1, 2]})
    monkeypatch.setitem(evaluators.EVALUATORS, "b", lambda ctx: {"b.z": 3.0})
    monkeypatch.setitem(evaluators.EVALUATORS, "c", lambda ctx: {"b.z": 4.0})
    assert run_evaluators(["a", "b"], 7) == {"a.x": 7, "a.y": [1, 2], "b.z": 3.0}
    with pytest.raises(ValueError, match=r"'b' and 'c' both return \['b.z'\]"):
        run_evaluators(["a", "b", "c"], 7)
    print_summary({"b.z": 3.0}, [])
    assert capsys.readouterr().out == "[eval] b.z: 3.0\n"  # other evaluators' keys, as they are


def test_print_summary_reports_mse_psnr_and_sharpness(capsys):
    summary = rollout_metrics(*np.full((4, 2, 4, 12, 12, 3), 0.5), context=2) | {
        "rollout.count": 2, "rollout.horizon": 2, "rollout.sampling_steps": 4}
    print_summary(summary, ["x/summary.json"])
    out = capsys.readouterr().out
    assert f"PSNR of the MSE averaged over rollouts (rewards blur), mean over steps: model " \
           f"{PSNR_CAP:.2f} dB" in out
    assert "sharpness, mean |Laplacian| imagined / true (below 1: blurrier): step 1 n/a" in out
    assert "copy-last scores the 48.13 dB cap" in out and "wrote x/summary.json" in out


def test_each_eval_batch_samples_with_its_own_key():
    """Identical rollouts in batches of one: batch b samples with fold_in(key(seed), b), so
    rows differ, and each equals the decoded generation with its batch's key."""
    config = calvin.get_config("tiny")
    config.eval.update(dict(batch=1, context_frames=2, horizon=2, sampling_steps=2))
    spec = ActionSpec("continuous", dim=2)
    ctx = EvalContext(config, None, None)
    tokenizer = Tokenizer(settings.tokenizer_config(config), key=jax.random.key(1))
    params, static = eqx.partition(tokenizer, eqx.is_inexact_array)
    noise = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.key(3), x.shape, x.dtype),
                         params)  # the decoder's zero-initialised output layer would hide rollouts
    ctx.tokenizer = eqx.combine(jax.tree.map(jnp.add, params, noise), static)
    ctx.model = Dynamics(settings.dynamics_config(config, spec), key=jax.random.key(2))
    rng = np.random.default_rng(0)
    latents = jnp.asarray(np.repeat(rng.normal(size=(1, 4, 4, 8)), 3, axis=0), jnp.float32)
    actions = jnp.asarray(np.repeat(rng.normal(size=(1, 4, 2)), 3, axis=0), jnp.float32)
    has = jnp.ones((3, 4), bool)
    ctx._latent_clips = {"latents": latents, "actions": actions, "has_action": has}
    imagined = np.asarray(ctx.imagined)
    assert imagined.shape == (3, 4, 16, 16, 3)
    assert np.abs(imagined[0, 2:] - imagined[1, 2:]).max() > 1e-3
    for b in range(3):
        future = generate(ctx.model, latents[b:b + 1, :2], actions[b:b + 1], has[b:b + 1],
                          key=jax.random.fold_in(jax.random.key(config.seed), b), steps=2,
                          context_signal=config.eval.context_signal)
        want = ctx.tokenizer.decode(jnp.concatenate([latents[b:b + 1, :2], future], axis=1))
        np.testing.assert_allclose(imagined[b], np.clip(want[0], 0, 1), atol=1e-5)


def test_plot_has_a_panel_per_metric(tmp_path):
    curves = {"model": [20.0, 19.0], "copy last frame": [25.0, 18.0]}
    one = iio.imread(plot_curves(str(tmp_path / "one.png"), {"PSNR (dB)": curves}))
    two = iio.imread(plot_curves(str(tmp_path / "two.png"), {"PSNR (dB)": curves,
                                                              "SSIM": curves}))
    assert one.shape[:2] == (480, 720) and two.shape[:2] == (480, 1440)
