"""Test-wide settings: strict rank and dtype promotion so implicit broadcasting or mixed-precision
arithmetic in project code fails loudly. Runtime shape checking (jaxtyping + beartype) is switched
on for the project packages by `--jaxtyping-packages` in pyproject.toml."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A workdir with the tiny CALVIN config trained through data, tokenizer, latents and
    dynamics (about a minute on 2 cores), shared by the tests that need a trained world model."""
    from configs import calvin
    from launch.run import run

    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    config = calvin.get_config("tiny")
    config.stages = "data,tokenizer,latents,dynamics"
    run(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def tiny_run_with(tiny_run, tmp_path_factory):
    """run_with(stages) -> (workdir, config): a copy of `tiny_run` on which the tiny CALVIN
    config has run `stages` (e.g. "eval"), leaving the shared run untouched."""
    import shutil

    from configs import calvin
    from launch.run import run

    def run_with(stages: str):
        workdir = str(tmp_path_factory.mktemp(stages.replace(",", "_")))
        shutil.copytree(tiny_run, workdir, dirs_exist_ok=True)
        config = calvin.get_config("tiny")
        config.stages = stages
        run(config, workdir)
        return workdir, config

    return run_with
