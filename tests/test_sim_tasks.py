"""Task detectors on hand-made states, and on the simulator itself: a scripted pick lifts a block
(the lift detector fires), a scripted hover above a block does not, a scripted push to the
region ends with a block resting in it."""

import numpy as np
import pytest

from data.sim import BLOCK_HALF, TABLE_TOP
from data.sim_tasks import REGION, episode_success, rewards, satisfied, success

REST = TABLE_TOP + BLOCK_HALF


def state(red=(0.5, -0.1, REST), blue=(0.6, 0.0, REST), pink=(0.4, -0.2, REST), tcp=(0.5, 0, 0.8)):
    return np.array([*tcp, *red, *blue, *pink], np.float32)


def test_lift_by_hand():
    assert not success("lift", state())
    assert not success("lift", state(blue=(0.6, 0.0, REST + 0.049)))
    assert success("lift", state(blue=(0.6, 0.0, REST + 0.051)))


def test_push_to_region_by_hand():
    (x_low, x_high), (y_low, y_high) = REGION
    centre = ((x_low + x_high) / 2, (y_low + y_high) / 2)
    assert success("push_to_region", state(pink=(*centre, REST)))
    assert not success("push_to_region", state(pink=(*centre, REST + 0.05)))  # held, not resting
    assert not success("push_to_region", state(pink=(centre[0], y_low - 0.01, REST)))


def test_a_second_block_in_the_region_earns_the_reward():
    """Rewards count blocks: a scene that starts with one block in the region is won by pushing
    another one in, not by leaving the first one there."""
    (x_low, x_high), (y_low, y_high) = REGION
    inside = ((x_low + x_high) / 2, (y_low + y_high) / 2, REST)
    near = (x_low + 0.01, y_high - 0.01, REST)
    one, two = state(pink=inside), state(pink=inside, red=near)
    assert satisfied("push_to_region", np.stack([state(), one, two])).tolist() == [0, 1, 2]
    states = np.stack([one, one, two, two, one])
    np.testing.assert_array_equal(rewards("push_to_region", states), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(rewards("push_to_region", states, dense=True), [1, 1, 1, 1, 0])
    assert episode_success("push_to_region", states)
    assert not episode_success("push_to_region", np.stack([one, one, one]))


def test_rewards_mark_the_step_that_achieves_the_task():
    lifted = state(red=(0.5, -0.1, REST + 0.1))
    states = np.stack([state(), state(), lifted, lifted, state(), lifted])
    np.testing.assert_array_equal(rewards("lift", states), [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(rewards("lift", states, dense=True), [0, 1, 1, 0, 1, 0])
    assert episode_success("lift", states)
    assert not episode_success("lift", np.stack([lifted, lifted]))  # done before it started
    with pytest.raises(ValueError, match="unknown task"):
        success("stack", states)
    with pytest.raises(ValueError, match="12"):
        success("lift", states[:, :9])


def scripted_episode(kind: str, steps: int) -> np.ndarray:
    """States of one simulator episode in which the scripted policy does task `kind` and stops
    when its waypoints are done (at most `steps` actions)."""
    from data.calvin import CALVIN_STATE_INDICES
    from data.sim import TabletopSim
    from data.sim_demos import ScriptedPolicy, _task

    sim = TabletopSim(image_size=32)
    try:
        rng = np.random.default_rng(0)
        sim.reset(rng)
        policy = ScriptedPolicy(rng)
        policy.waypoints = _task(kind, sim, rng)
        states = []
        for _ in range(steps):
            obs = np.concatenate([sim.robot_obs(), sim.scene_obs()])
            states.append(obs[list(CALVIN_STATE_INDICES)])
            if not policy.waypoints:
                break
            sim.step(policy.act(sim))
        return np.stack(states)
    finally:
        sim.close()


def test_the_simulator_s_scripted_pick_lifts_and_reach_does_not():
    pick = scripted_episode("pick", 300)
    assert episode_success("lift", pick)
    assert np.max(pick[:, 5::3][:, :]) > REST + 0.1  # a block went well above the threshold
    assert not episode_success("lift", scripted_episode("reach", 300))


def test_the_simulator_s_scripted_region_push_puts_a_block_in_the_region():
    push = scripted_episode("region", 300)
    assert episode_success("push_to_region", push)
    assert not episode_success("lift", push)  # pushed along the table, not carried
