"""launch.bench rows on the tiny CALVIN config (the benchmark itself is run by hand)."""

import pytest

from configs.calvin import get_config
from launch import settings
from launch.bench import bench_row, floor_row, stage_setup


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_bench_row_on_tiny_config(stage):
    config = get_config("tiny")
    row = bench_row("calvin", config, stage, 2, 4, steps=2, warmup=1, peak=1e11,
                    loader_batches=2, trace=None)
    assert (row["stage"], row["batch"], row["frames"]) == (stage, 2, 4)
    assert row["ms_per_step"] > 0 and row["data_ms_per_batch"] > 0 and row["step_mb"] > 0
    tokens = stage_setup(config, stage, 2, 4, exact=True)[4]
    assert row["tokens_per_s"] * row["ms_per_step"] / 1e3 == pytest.approx(tokens)
    assert row["mfu"] == pytest.approx(row["model_gflop_per_step"] * 1e9 /
                                       (row["ms_per_step"] / 1e3) / 1e11)
    assert row["attention_share"] > 0 and row["mlp_share"] > 0


def test_flop_count_is_the_step_without_remat():
    """The model FLOPs do not depend on rematerialisation or the attention backend."""
    config = get_config("tiny")
    plain = floor_row("calvin", config, "dynamics", 2, 4, 1e12)
    config.dynamics.remat = True
    assert floor_row("calvin", config, "dynamics", 2, 4, 1e12)["model_gflop_per_step"] == \
        pytest.approx(plain["model_gflop_per_step"])
    _, make_state, _, _, tokens, _ = stage_setup(config, "dynamics", 2, 4, exact=True)
    assert tokens == 2 * 4 * make_state().model.config.tokens_per_frame
    _, _, _, _, tokens, _ = stage_setup(config, "tokenizer", 2, 4, exact=True)
    c = settings.tokenizer_config(config)
    assert tokens == 2 * 4 * 2 * (c.n_patches + c.n_latents)  # encoder and decoder
