"""The agent on CoinRun (needs procgen): `CoinRunEpisodes` plays the documented levels and scores
procgen's return, as a game played directly does; the three agent stages on a tiny CoinRun run
with scripted episodes write a `return` entry."""

import json
import os

import numpy as np
import pytest

from configs import coinrun
from data.coinrun import RIGHT, CoinRunSettings
from launch.agent_eval import EVAL_SPLIT, CoinRunEpisodes, summary_of

procgen = pytest.importorskip("procgen")


def test_levels_are_the_pool_or_fresh_draws():
    config = coinrun.get_config("tiny")
    config.seed, config.data.coinrun_levels = 3, 2
    pool = np.random.default_rng(3).integers(2**31 - 1, size=2)
    env = CoinRunEpisodes(config, 2)
    assert [env.level(k) for k in range(4)] == [pool[0], pool[1], pool[0], pool[1]]
    config.data.coinrun_levels = 0
    env = CoinRunEpisodes(config, 2)
    assert env.level(5) == np.random.default_rng((3, EVAL_SPLIT, 5)).integers(2**31 - 1)
    assert CoinRunSettings(seed=3, levels=2).level(1, np.random.default_rng(0)) == pool[1]


def test_episodes_score_procgen_return_like_a_direct_game():
    config = coinrun.get_config("tiny")
    config.data.image_size, config.data.coinrun_levels = (64, 64), 0
    env = CoinRunEpisodes(config, 2)
    frames = env.reset(range(2))
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
    returns, ended = np.zeros(2), np.zeros(2, bool)
    direct = [procgen.ProcgenGym3Env(num=1, env_name="coinrun", start_level=env.level(k),
                                     num_levels=1) for k in range(2)]
    for k in range(2):
        np.testing.assert_array_equal(direct[k].observe()[1]["rgb"][0], frames[k])
    for _ in range(300):  # run right: reaches the coin or dies within procgen's limit
        frames = env.step(np.full(2, RIGHT))
        for k, game in enumerate(direct):
            if ended[k]:
                continue
            game.act(np.array([RIGHT], np.int32))
            reward, observation, first = game.observe()
            returns[k] += reward[0]
            ended[k] = first[0]
            if not ended[k]:
                np.testing.assert_array_equal(observation["rgb"][0], frames[k])
        np.testing.assert_array_equal(env.done, ended)
        if ended.all():
            break
    np.testing.assert_array_equal(env.score, returns)
    env.close()


def test_summary_standard_error_is_that_of_the_mean():
    scores = np.array([0.0, 10.0, 10.0, 0.0, 0.0])
    out = summary_of(scores)
    assert out["mean"] == 4.0 and out["episodes"] == 5
    assert out["stderr"] == pytest.approx(np.sqrt(24.0 / 5))  # population variance 24


def test_agent_stages_on_a_tiny_coinrun_run(tmp_path):
    from launch.run import run

    config = coinrun.get_config("tiny")
    config.data.coinrun_scripted = 0.5
    config.stages = "data,tokenizer,latents,dynamics,agent_finetune,agent_rl,agent_eval"
    run(config, str(tmp_path))
    with open(tmp_path / "eval" / "agent_summary.json") as f:
        (entry,) = json.load(f)["results"]
    assert (entry["env"], entry["task"], entry["metric"]) == ("coinrun", "coin", "return")
    for policy in ("bc", "rl"):
        assert entry[policy]["episodes"] == config.agent.eval_episodes
        assert entry[policy]["mean"] in (0.0, 5.0, 10.0)  # 2 episodes, 0 or 10 each
        assert os.path.isfile(tmp_path / "eval" / f"agent_{policy}_0.gif")
