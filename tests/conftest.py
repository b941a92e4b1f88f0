"""Test-wide settings: strict rank and dtype promotion so implicit broadcasting or mixed-precision
arithmetic in project code fails loudly. Runtime shape checking (jaxtyping + beartype) is switched
on for the project packages by `--jaxtyping-packages` in pyproject.toml. Session fixtures that
several test files share live here."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def tiny_trained_workdir(tmp_path_factory) -> str:
    """A workdir of the tiny CALVIN config trained through the dynamics stage (no eval), made
    once per test session: data/clips, models/tokenizer, models/dynamics, config.json."""
    from configs import calvin
    from launch.run import run

    config = calvin.get_config("tiny")
    config.stages = "data,tokenizer,latents,dynamics"
    for stage in (config.train.tokenizer, config.train.dynamics):  # one compiled step each,
        stage.update(dict(steps=4, checkpoint_every=100))              # one checkpoint each
    config.train.dynamics.update(dict(seq_lengths=(8,), length_weights=()))
    workdir = str(tmp_path_factory.mktemp("tiny_trained"))
    run(config, workdir)
    return workdir
