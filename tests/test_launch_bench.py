"""launch.bench rows on the tiny CALVIN config (the benchmark itself is run by hand)."""

import equinox as eqx
import jax
import pytest

from configs.calvin import get_config
from core.timing import compile_timed
from launch import settings
from launch.bench import bench_row, floor_row, memory_estimate, stage_setup


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_bench_row_on_tiny_config(stage):
    config = get_config("tiny")
    row = bench_row("calvin", config, stage, 2, 4, steps=2, warmup=1, peak=1e11,
                    loader_batches=2, trace=None)
    assert (row["stage"], row["batch"], row["frames"]) == (stage, 2, 4)
    assert row["ms_per_step"] > 0 and row["data_ms_per_batch"] > 0 and row["step_mb"] > 0
    tokens = stage_setup(config, stage, 2, 4, exact=True).tokens
    assert row["tokens_per_s"] * row["ms_per_step"] / 1e3 == pytest.approx(tokens)
    assert row["mfu"] == pytest.approx(row["model_gflop_per_step"] * 1e9 /
                                       (row["ms_per_step"] / 1e3) / 1e11)
    assert row["attention_share"] > 0 and row["mlp_share"] > 0
    assert row["estimate_mb"] == pytest.approx(
        memory_estimate(config, stage, 2, 4)["estimate_gib"] * 1024)


def test_flop_count_is_the_step_without_remat():
    """The model FLOPs do not depend on rematerialisation or the attention backend."""
    config = get_config("tiny")
    plain = floor_row("calvin", config, "dynamics", 2, 4, 1e12)
    config.dynamics.remat = True
    assert floor_row("calvin", config, "dynamics", 2, 4, 1e12)["model_gflop_per_step"] == \
        pytest.approx(plain["model_gflop_per_step"])
    setup = stage_setup(config, "dynamics", 2, 4, exact=True)
    assert setup.tokens == 2 * 4 * setup.make_state().model.config.tokens_per_frame
    c = settings.tokenizer_config(config)
    assert stage_setup(config, "tokenizer", 2, 4, exact=True).tokens == \
        2 * 4 * 2 * (c.n_patches + c.n_latents)  # encoder and decoder


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_memory_estimate_parts(stage):
    """State and gradients counted from the real state; remat keeps fewer activations (only the
    blocks' inputs) and adds one recomputed block; without remat XLA:CPU's own memory analysis
    of the compiled step (which this estimate exists to replace where remat is on) agrees
    within 30% (5-13% at the small config's sizes, BENCHMARKS.md)."""
    config = get_config("tiny")
    plain = memory_estimate(config, stage, 2, 4)
    setup = stage_setup(config, stage, 2, 4, exact=True)
    state = setup.make_state()
    params = sum(x.nbytes for x in jax.tree.leaves(eqx.filter(state.model, eqx.is_inexact_array)))
    assert plain["grads_gib"] * 2**30 == params and plain["block_gib"] == 0
    assert plain["state_gib"] * 2**30 == sum(x.nbytes for x in jax.tree.leaves(state)
                                             if eqx.is_array(x))
    assert plain["estimate_gib"] == pytest.approx(plain["state_gib"] + plain["grads_gib"]
                                                  + plain["saved_gib"])
    xla_mib = compile_timed(setup.step, state, setup.batch, jax.random.key(0),
                            **setup.static)[2]
    assert plain["estimate_gib"] * 1024 == pytest.approx(xla_mib, rel=0.3)
    config.tokenizer.remat = config.dynamics.remat = True
    remat = memory_estimate(config, stage, 2, 4)
    assert remat["saved_gib"] < plain["saved_gib"] and remat["block_gib"] > 0
