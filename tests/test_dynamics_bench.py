"""dynamics.bench rows run on a tiny model (the benchmark itself is run by hand)."""

import jax
import pytest

from dynamics.bench import ACTION, bench_row
from dynamics.model import Dynamics, DynamicsConfig


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
