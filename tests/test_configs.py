"""The config files: every variant resolves to the values recorded in configs_resolved.json,
and the model sections hold the model dataclasses' own defaults.

After changing a config on purpose, record the new values with `python -m tests.test_configs`
(from the repository root) and review the diff of tests/configs_resolved.json.
"""

import dataclasses
import importlib
import json
import os

import pytest

from configs.common import DYNAMICS_FROM_DATA, TOKENIZER_FROM_DATA, base_config
from dynamics import ActionSpec, DynamicsConfig
from launch import settings
from tokenizer import TokenizerConfig

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs_resolved.json")
VARIANTS = [f"{name}:{variant}" for name in ("calvin", "coinrun", "minecraft")
            for variant in ("full", "small", "tiny")]


def resolved(name_variant: str) -> dict:
    """The config tree and the tokenizer and dynamics configs it resolves to (with 7-D
    continuous actions), as JSON values."""
    name, variant = name_variant.split(":")
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    as_json = lambda c: json.loads(json.dumps(dataclasses.asdict(c)))
    return {"config": json.loads(config.to_json_best_effort()),
            "tokenizer": as_json(settings.tokenizer_config(config)),
            "dynamics": as_json(settings.dynamics_config(config, ActionSpec("continuous", dim=7)))}


@pytest.mark.parametrize("name_variant", VARIANTS)
def test_variant_resolves_to_the_recorded_values(name_variant):
    with open(RECORD) as f:
        assert resolved(name_variant) == json.load(f)[name_variant]


def test_model_sections_are_the_dataclass_defaults():
    """Every model field that does not come from the data is a config field, with the model's
    default (kv_heads: None is 0 in the config); so a new model field is configurable."""
    config = base_config("x", "tiny", "test")
    for section, cls, from_data in ((config.tokenizer, TokenizerConfig, TOKENIZER_FROM_DATA),
                                    (config.dynamics, DynamicsConfig, DYNAMICS_FROM_DATA)):
        fields = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in from_data}
        assert {k: v for k, v in section.items() if k != "perceptual_weights"} == \
            {k: 0 if v is None else v for k, v in fields.items()}
    assert config.dynamics.kv_heads == 0 and config.dynamics.softcap == 50.0
    assert settings.dynamics_config(config, ActionSpec("continuous", dim=1)).kv_heads is None


if __name__ == "__main__":
    with open(RECORD, "w") as f:
        json.dump({v: resolved(v) for v in VARIANTS}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {RECORD}")
