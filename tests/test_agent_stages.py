"""The agent stages on the session's tiny trained run: finetune, imagination RL and the
closed-loop evaluation in the simulator write what they promise; rewards come from the task's
detector on the clips' states; the config checks name the fields."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import calvin
from data.sim import BLOCK_HALF, TABLE_TOP
from launch.agent_stages import action_box, agent_problems, with_task_rewards
from launch.settings import ConfigError


@pytest.fixture(scope="module")
def agent_run(tiny_run_with):
    return tiny_run_with("agent_finetune,agent_rl,agent_eval")[0]


def test_the_agent_stages_write_models_and_the_summary(agent_run):
    for part in ("agent/dynamics", "agent/heads", "agent_rl/heads"):
        assert os.path.isfile(os.path.join(agent_run, "models", part, "header.json")), part
    with open(os.path.join(agent_run, "eval", "agent_summary.json")) as f:
        summary = json.load(f)
    (entry,) = summary["results"]
    assert (entry["env"], entry["task"], entry["metric"]) == ("sim", "lift", "success")
    for policy in ("bc", "rl"):
        result = entry[policy]
        assert result["episodes"] == 2 and 0.0 <= result["mean"] <= 1.0
        p = result["mean"]
        assert result["stderr"] == pytest.approx(np.sqrt(p * (1 - p) / 2))
        assert os.path.isfile(os.path.join(agent_run, "eval", f"agent_{policy}_0.gif"))
    assert np.isfinite(entry["imagined_rl_return"])
    with open(os.path.join(agent_run, "eval", "agent_world_model.json")) as f:
        compared = json.load(f)
    for key in ("psnr", "gap", "ssim"):
        assert compared["change"][key] == pytest.approx(
            compared["after"][key] - compared["before"][key])
    with open(os.path.join(agent_run, "models", "agent_rl", "rl_metrics.json")) as f:
        assert len(json.load(f)["history"]) == 2


def test_rewards_come_from_the_task_detector_on_the_states():
    rest = TABLE_TOP + BLOCK_HALF
    calm = [0.5, 0.0, 0.8, 0.5, -0.1, rest, 0.6, 0.0, rest, 0.4, -0.2, rest]
    lifted = list(calm)
    lifted[8] = rest + 0.1  # the blue block, 10 cm up
    states = jnp.asarray([[calm, calm, lifted, lifted]], jnp.float32)
    batch = with_task_rewards({"states": states}, "lift")
    np.testing.assert_array_equal(batch["rewards"], [[0, 1, 1, 0]])  # dense: every step up
    given = {"states": states, "rewards": jnp.ones((1, 4))}
    assert with_task_rewards(given, "lift") is given  # the data's own rewards win
    with pytest.raises(ConfigError, match="hold none"):
        with_task_rewards({"latents": states}, "lift")
    with pytest.raises(ConfigError, match="takes its rewards from the data"):
        with_task_rewards({"states": states}, "coin")  # a task named by data with rewards


def test_the_action_box_is_the_training_actions_range(tiny_run):
    from data.clips import ClipStore

    store = ClipStore(os.path.join(tiny_run, "latents"))
    low, high = action_box(store)
    shards = [store.read_shard("train", name) for name, _ in store.shards("train")]
    actions = np.concatenate([np.asarray(shard["actions"])[np.asarray(shard["has_action"])]
                              for shard in shards])
    np.testing.assert_allclose(low, actions.min(0), rtol=1e-6)
    assert np.all(np.asarray(high) >= actions.max(0) - 1e-6)


def test_agent_config_problems_name_the_fields():
    config = calvin.get_config("tiny")
    assert agent_problems(config, 1) == []
    config.agent.task = "stack"
    config.agent.rl_batch = 0
    config.agent.reward_decode = "median"
    config.agent.context_rows = config.train.dynamics.batch + 1
    config.stages = "agent_eval"
    problems = " | ".join(agent_problems(config, 1))
    assert "config.agent.task: unknown task 'stack'" in problems  # the simulator has states
    assert "rl_batch must be >= 1" in problems
    assert "config.agent.reward_decode must be 'mode' or 'mean', got 'median'" in problems
    rows = config.train.dynamics.batch - round(config.train.dynamics.bootstrap_fraction
                                               * config.train.dynamics.batch)
    assert (f"config.agent.context_rows must be in 0..{rows} (the batch's rows less its "
            f"bootstrap rows), got {config.train.dynamics.batch + 1}") in problems
    config.data.format = "episodes"
    problems = " | ".join(agent_problems(config, 1))
    assert "unknown task" not in problems  # episodes may bring their own rewards
    assert "config.data.format in ('sim', 'coinrun') (got 'episodes')" in problems


def test_agent_eval_has_an_environment_for_each_format_the_checks_allow():
    from launch.agent_eval import ENVIRONMENTS
    from launch.agent_stages import EVAL_ENVIRONMENTS

    assert tuple(ENVIRONMENTS) == EVAL_ENVIRONMENTS
    assert all(env.env == name for name, env in ENVIRONMENTS.items())
