"""launch.bench rows on the tiny CALVIN config, and the full variants traced at their sizes (the
benchmark itself is run by hand)."""

import importlib
import os
import subprocess
import sys
import textwrap

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


@pytest.mark.parametrize("name", ["calvin", "coinrun", "minecraft"])
def test_full_variants_are_valid_and_estimated_to_fit_one_gpu(name):
    """The full variants pass validation, their train steps trace at the configured batch and
    longest sequence, and the shape-based estimate stays under half of an 80 GB H100 (the
    other half for XLA's scratch space). Measuring them needs a GPU (BENCHMARKS.md)."""
    config = importlib.import_module(f"configs.{name}").get_config("full")
    settings.validate(config, device_count=1)
    for stage in ("tokenizer", "dynamics"):
        train = config.train[stage]
        memory = memory_estimate(config, stage, train.batch, max(train.seq_lengths))
        assert memory["saved_gib"] > 0 and memory["estimate_gib"] < 40


def test_full_calvin_lowers_for_cuda_with_the_pallas_kernels(monkeypatch):
    """As on a GPU ('auto' picks Pallas, not in interpret mode): the full CALVIN tokenizer and
    dynamics train steps (bf16, remat, bootstrap rows) lower for CUDA with the attention kernels
    forward and backward, and so does the cached sampler's next frame with the in-place cache
    write (in a subprocess with EQX_ON_ERROR=off: the cache's runtime checks are host callbacks,
    which only lower on the platform they run on)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    config = get_config("full")
    for stage in ("tokenizer", "dynamics"):
        setup = stage_setup(config, stage, 1, max(config.train[stage].seq_lengths), exact=True)
        text = setup.step.trace(eqx.filter_eval_shape(setup.make_state), setup.batch,
                                jax.random.key(0), **setup.static).lower(
            lowering_platforms=("cuda",)).as_text()
        for kernel in ("rope_flash_forward", "rope_flash_dq", "rope_flash_dkv"):
            assert kernel in text, (stage, kernel)
    script = textwrap.dedent("""
        import equinox as eqx, jax, jax.numpy as jnp
        jax.default_backend = lambda: "gpu"
        from configs.calvin import get_config
        from dynamics.sampler import next_frame
        from launch.bench import stage_setup
        setup = stage_setup(get_config("full"), "dynamics", 1, 24, exact=True)
        model = eqx.filter_eval_shape(setup.make_state).model
        caches = eqx.filter_eval_shape(lambda m: m.init_caches(1, 33), model)
        shape = jax.ShapeDtypeStruct
        text = next_frame.trace(model, caches, shape((1, 1, 7), jnp.float32),
                                shape((1, 1), jnp.bool_), jax.random.key(0),
                                shape((), jnp.int32), steps=4, context_signal=0.9).lower(
            lowering_platforms=("cuda",)).as_text()
        print("rope_flash_forward" in text, "kv_cache_write" in text)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "EQX_ON_ERROR": "off"}, timeout=600)
    assert done.stdout.split() == ["True", "True"], done.stderr[-3000:]
