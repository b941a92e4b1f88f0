"""dynamics.bench rows run on a tiny model, and the presets of launch.generation_bench (the
benchmark itself is run by hand)."""

import jax
import pytest
from absl import app

from dynamics.actions import ActionSpec
from dynamics.bench import bench_row, floor_row
from dynamics.model import Dynamics, DynamicsConfig
from launch.generation_bench import preset

ACTION = ActionSpec("continuous", dim=7)


def test_bench_row_on_tiny_model():
    config = DynamicsConfig(latent_tokens=4, latent_dim=3, action=ACTION, width=16, depth=1,
                            heads=2, time_every=1, registers=1, k_max=8)
    row = bench_row("tiny", Dynamics(config, key=jax.random.key(0)), 2, 3, steps=1, warmup=1,
                    repeats=2)
    assert (row["model"], row["batch"], row["context"]) == ("tiny", 2, 3)
    for name in ("cached", "uncached"):
        assert row[f"{name}_ms"] > 0 and row[f"{name}_compile_s"] > 0 and row[f"{name}_fn_mb"] > 0
        assert row[f"{name}_fps"] == pytest.approx(1e3 / row[f"{name}_ms"])
    assert row["ratio"] == pytest.approx(row["uncached_ms"] / row["cached_ms"])
    assert row["peak_mb"] > 0


def test_floor_row_counts_every_pass_over_weights_and_cache():
    config = DynamicsConfig(latent_tokens=4, latent_dim=3, action=ACTION, width=16, depth=2,
                            heads=2, kv_heads=1, time_every=2, registers=1, k_max=8)
    batch, context, steps = 2, 5, 4
    row = floor_row("tiny", config, batch, context, steps=steps, peak_flops=1e12, bandwidth=1e11)
    model = Dynamics(config, key=jax.random.key(0))
    params = sum(x.size for x in jax.tree.leaves(model) if isinstance(x, jax.Array))
    head_dim = 16 // 2
    cache = 2 * batch * config.tokens_per_frame * (context + 1) * 1 * head_dim  # 1 time layer, K+V
    assert row["gb_per_frame"] * 1e9 == pytest.approx((steps + 1) * (params + cache) * 4)
    assert row["resident_gb"] * 1e9 == pytest.approx((params + cache) * 4)
    blocks = sum(x.size for x in jax.tree.leaves(model.transformer) if isinstance(x, jax.Array))
    matmul_lower_bound = 2 * 0.9 * blocks * batch * config.tokens_per_frame * (steps + 1)
    assert row["gflop_per_frame"] * 1e9 > matmul_lower_bound
    seconds = max(row["gflop_per_frame"] * 1e9 / 1e12, row["gb_per_frame"] * 1e9 / 1e11)
    assert row["floor_fps"] == pytest.approx(1 / seconds)


def test_config_presets_are_the_full_configs_models():
    """The sizes written out from configs/<name>.py:full, with their sources' actions (the
    simulator's 7-D continuous, CoinRun's 15 and Craftax-Classic's 17 discrete ones)."""
    full = dict(time_every=4, remat=True, compute_dtype="bfloat16")
    expected = {
        "calvin": DynamicsConfig(latent_tokens=32, latent_dim=32, action=ACTION, width=768,
                                 depth=8, heads=12, kv_heads=4, registers=4, k_max=128, **full),
        "coinrun": DynamicsConfig(latent_tokens=16, latent_dim=32,
                                  action=ActionSpec("discrete", classes=(15,)), width=768,
                                  depth=12, heads=12, kv_heads=4, registers=4, k_max=128, **full),
        "minecraft": DynamicsConfig(latent_tokens=128, latent_dim=16, pack=2,
                                    action=ActionSpec("discrete", classes=(17,)), width=1024,
                                    depth=16, heads=16, kv_heads=4, registers=8, k_max=64,
                                    **full),
    }
    for name, config in expected.items():
        assert (preset(name).config, preset(name).batch) == (config, 1)
    assert preset("small").batch == 4
    with pytest.raises(app.UsageError, match=r"no preset 'huge'; use small or one of"):
        preset("huge")
