"""On one tiny run: the eval stage's state-probe keys and the error breakdown of
launch.diagnose (its rollout row reproduces the eval summary, its teacher-forced first step
equals the rollout's first step)."""

import json
import os

import numpy as np
import pytest
from absl import app

from launch.diagnose import _numbers, diagnose, load_context, settings_grid, table


@pytest.fixture(scope="module")
def evaluated_run(tiny_run_with):
    """The session's tiny trained run (conftest), copied and evaluated."""
    workdir, config = tiny_run_with("eval")
    with open(os.path.join(workdir, "eval", "summary.json")) as f:
        return workdir, config, json.load(f)


def test_probe_keys_on_a_tiny_run(evaluated_run):
    _, config, summary = evaluated_run
    horizon = config.eval.horizon
    for suffix in ("", "_copy_last", "_shuffled_actions"):
        for what in ("probe_error_cm", "probe_block_error_cm"):
            values = summary[f"rollout.{what}{suffix}"]
            assert len(values) == horizon and np.all(np.isfinite(values)) and min(values) >= 0
    for key in ("probe.real_error_cm", "probe.real_block_error_cm",
                "probe.reconstruction_error_cm"):
        assert np.isfinite(summary[key]) and summary[key] >= 0
    # the probe is fitted on the 2 eval clips that are not scored, then training clips
    assert summary["probe.fit_frames_eval"] == 2 * config.data.clip_length
    assert summary["probe.fit_frames_train"] > 0
    # copy-last's error at every step is the probe's error on one fixed frame per rollout
    # against the moving truth: at step 1 it is at most real error + true motion over a step
    assert summary["rollout.probe_error_cm_copy_last"][0] < 1e3


def test_flag_lists_that_are_not_numbers_name_the_flag():
    assert _numbers("ks", ["1", "4"], int) == [1, 4]
    with pytest.raises(app.UsageError, match=r"--ks: 1,x is not a comma list of int values"):
        _numbers("ks", ["1", "x"], int)


def test_settings_grid_varies_k_then_signal():
    assert settings_grid((1, 2, 4, 8), (0.8, 0.9, 1.0), 4, 0.9, k_max=4) == [
        (1, 0.9), (2, 0.9), (4, 0.9), (4, 0.8), (4, 1.0)]


def test_breakdown_on_a_tiny_run(evaluated_run, capsys):
    workdir, config, summary = evaluated_run
    ev = config.eval
    result = diagnose(load_context(workdir), ks=(1, ev.sampling_steps), signals=(1.0,),
                      reference_steps=5)
    assert result["settings"]["rollouts"] == ev.rollouts
    assert set(result["tokenizer"]) == {"tokenizer.psnr", "tokenizer.ssim",
                                        "tokenizer.sharpness_ratio"}
    np.testing.assert_allclose(result["tokenizer"]["tokenizer.psnr"], summary["tokenizer.psnr"],
                               rtol=1e-9)
    grid = [(1, ev.context_signal), (ev.sampling_steps, ev.context_signal),
            (ev.sampling_steps, 1.0)]
    for stage in ("one_step", "rollout"):
        assert [(row["k"], row["context_signal"]) for row in result[stage]] == grid
        for row in result[stage]:
            for key in ("psnr", "ssim", "psnr_shuffled_actions", "action_gap_db",
                        "sharpness_ratio"):
                assert len(row[key]) == ev.horizon, (stage, key)
            np.testing.assert_allclose(row["action_gap_db"], np.subtract(
                row["psnr"], row["psnr_shuffled_actions"]), atol=1e-12)
    # the rollout at the eval K and signal is the eval stage's rollout, key for key
    at_eval = result["rollout"][1]
    np.testing.assert_allclose(at_eval["psnr"], summary["rollout.psnr"], rtol=1e-6)
    np.testing.assert_allclose(at_eval["psnr_shuffled_actions"],
                               summary["rollout.psnr_shuffled_actions"], rtol=1e-6)
    # teacher forcing and the rollout share the first generated frame (same context, key, noise)
    for one_step, rollout in zip(result["one_step"], result["rollout"], strict=True):
        assert one_step["psnr"][0] == pytest.approx(rollout["psnr"][0], abs=1e-3)
    np.testing.assert_allclose(result["copy_last"]["psnr"], summary["rollout.psnr_copy_last"],
                               rtol=1e-9)
    # the one-step baseline guesses frame C from frame C - 1, as copy-last does at step 1
    assert len(result["copy_previous"]["psnr"]) == ev.horizon
    assert result["copy_previous"]["psnr"][0] == pytest.approx(result["copy_last"]["psnr"][0])
    for name in ("reference", "reference_rollout"):
        assert result[name]["steps"] == 5 and all(len(result[name][key]) == ev.horizon for key in (
            "psnr", "ssim", "psnr_shuffled_actions", "action_gap_db", "sharpness_ratio"))
    # its rollout starts from the true context: step 1 is the teacher-forced guess
    assert result["reference_rollout"]["psnr"][0] == pytest.approx(
        result["reference"]["psnr"][0], abs=1e-3)
    print(table(result))
    lines = capsys.readouterr().out.splitlines()
    lines = [line for line in lines if not line.startswith("[")]  # progress lines
    assert lines[0].startswith("tokenizer: PSNR") and len(lines) == 4 + 2 * len(grid)
    assert lines[-2].startswith("ref 1-step") and lines[-1].startswith("ref roll")
    json.dumps(result)  # JSON-ready
