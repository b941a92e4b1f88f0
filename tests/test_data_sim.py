"""The embedded tabletop simulator and its CALVIN-format demonstrations."""

import json
import os

import numpy as np
import pytest

from data.calvin import calvin_episodes, frame_path
from data.episode import DataError
from data.sim import TabletopSim
from data.sim_demos import (
    DEMOS,
    PUSH_CONTACT,
    ScriptedPolicy,
    SimSettings,
    generate_calvin_dataset,
)
from data.sim_tasks import REGION

pytest.importorskip("pybullet")


def test_relative_actions_move_the_gripper_as_commanded():
    sim = TabletopSim(image_size=48)
    sim.reset(np.random.default_rng(0))
    frame = sim.render()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8 and frame.std() > 10
    for axis, sign in [(0, 1), (1, 1), (1, -1), (2, -1), (0, -1), (2, 1)]:
        action = np.zeros(7)
        action[axis], action[6] = sign, 1.0
        before, _ = sim.tcp_pose()
        for _ in range(4):  # 4 steps of 2 cm commanded
            sim.step(action)
        moved = sim.tcp_pose()[0] - before
        assert 0.05 < sign * moved[axis] < 0.11, (axis, sign, moved)
        assert np.abs(np.delete(moved, axis)).max() < 0.015, (axis, sign, moved)
    assert sim.robot_obs()[6] > 0.07  # fingers open
    for _ in range(10):
        sim.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert sim.robot_obs()[6] < 0.01 and sim.robot_obs()[14] == -1  # closed on nothing
    assert sim.scene_obs().shape == (24,)
    sim.close()


def read_split(split_dir):
    return {
        name: dict(np.load(os.path.join(split_dir, name)))
        for name in sorted(os.listdir(split_dir))
        if name.startswith("episode_")
    }


def test_demonstrations_in_calvin_format_deterministic_and_resumable(tmp_path):
    settings = SimSettings(train_episodes=2, eval_episodes=1, episode_length=20, image_size=32)
    generate_calvin_dataset(str(tmp_path / "a"), settings, progress=False)
    train = calvin_episodes(str(tmp_path / "a"), frame_size=(32, 32))
    held = calvin_episodes(str(tmp_path / "a"), "validation", frame_size=(32, 32))
    assert [(e.first_id, e.last_id) for e in train] == [(0, 19), (20, 39)]
    assert [e.length for e in held] == [20]
    frames, actions = train[1].read(0, 20)
    assert frames.shape == (20, 32, 32, 3) and np.abs(actions).max() <= 1.0
    one_frame = np.load(frame_path(str(tmp_path / "a" / "training"), 0))
    assert {key: one_frame[key].shape for key in one_frame} == {
        "rgb_static": (32, 32, 3),
        "actions": (7,),
        "rel_actions": (7,),
        "robot_obs": (15,),
        "scene_obs": (24,),
    }
    # The recorded relative action explains the recorded motion of the gripper.
    split = read_split(str(tmp_path / "a" / "training"))
    rel = np.stack([f["rel_actions"][:3] for f in split.values()])[:19]
    tcp = np.stack([f["robot_obs"][:3] for f in split.values()])
    motion = np.diff(tcp[:20], axis=0)
    assert np.corrcoef(rel.ravel(), motion.ravel())[0, 1] > 0.8

    os.remove(frame_path(str(tmp_path / "a" / "training"), 39))  # as if killed mid-episode
    generate_calvin_dataset(str(tmp_path / "a"), settings, progress=False)
    generate_calvin_dataset(str(tmp_path / "b"), settings, num_workers=2, progress=False)
    for split_name in ("training", "validation"):
        a, b = (read_split(str(tmp_path / r / split_name)) for r in "ab")
        assert a.keys() == b.keys()
        for name in a:
            for key in a[name]:
                np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=name + key)
    with pytest.raises(DataError, match="other settings"):
        generate_calvin_dataset(str(tmp_path / "a"), SimSettings(seed=1), progress=False)


def test_frame_skip_records_every_kth_control_step(tmp_path):
    """At 10 Hz (frame_skip 3) the recorded action is the mean of the three 30 Hz actions: it
    still explains the motion between recorded frames, which is about 3x larger."""
    motions = {}
    for skip in (1, 3):
        root = str(tmp_path / f"skip{skip}")
        generate_calvin_dataset(root, SimSettings(1, 0, 16, 32, frame_skip=skip), progress=False)
        split = read_split(os.path.join(root, "training"))
        rel = np.stack([f["rel_actions"][:3] for f in split.values()])[:15]
        tcp = np.diff(np.stack([f["robot_obs"][:3] for f in split.values()]), axis=0)
        assert np.abs(rel).max() <= 1.0
        assert np.corrcoef(rel.ravel(), tcp.ravel())[0, 1] > 0.8
        motions[skip] = np.linalg.norm(tcp, axis=1).mean()
    assert 2.0 < motions[3] / motions[1] < 4.0
    with pytest.raises(ValueError, match="frame_skip"):
        SimSettings(frame_skip=0)


def test_demo_mixes_pick_their_tasks_and_scale_their_noise():
    """"lift" demonstrations plan only pick-and-place, of the block nearest to the gripper
    (otherwise a random one); the noise scale multiplies the Gaussian
    noise on the controller's action: with the same draws, the action's departure from the
    noiseless one grows by exactly the scale wherever no clipping intervenes."""
    sim = TabletopSim(32)
    sim.reset(np.random.default_rng(3))
    lift = DEMOS["lift"]
    tcp = sim.tcp_pose()[0]
    blocks = [position for position, _ in sim.block_poses()]
    nearest = min(blocks, key=lambda b: np.hypot(*(b - tcp)[:2]))
    grippers, targets = [], set()
    for seed in range(5):
        policy = ScriptedPolicy(np.random.default_rng(seed), weights=lift.weights,
                                nearest=lift.nearest)
        policy.act(sim)
        grippers.append([w.gripper for w in policy.waypoints])
        np.testing.assert_allclose(policy.waypoints[0].position[:2], nearest[:2])  # above it
        free = ScriptedPolicy(np.random.default_rng(seed), weights=lift.weights)
        free.act(sim)
        targets.add(tuple(np.round(free.waypoints[0].position[:2], 6)))
    assert grippers == [[1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0]] * 5  # the pick's plan
    assert len(targets) > 1  # without `nearest`, a random block
    push = ScriptedPolicy(np.random.default_rng(0), weights=DEMOS["push"].weights)
    push.act(sim)
    assert [w.gripper for w in push.waypoints] == [-1.0] * 4  # closed, pushing
    behind, end = push.waypoints[1].position, push.waypoints[2].position
    heading = (end - behind) / np.linalg.norm(end - behind)
    (x_low, x_high), (y_low, y_high) = REGION  # the block's centre ends at the region's
    np.testing.assert_allclose((end + PUSH_CONTACT * heading)[:2],
                               [(x_low + x_high) / 2, (y_low + y_high) / 2], atol=1e-9)
    actions = {scale: ScriptedPolicy(np.random.default_rng(7), noise_scale=scale).act(sim)
               for scale in (0.0, 1.0, 4.0)}
    base = actions[0.0]
    free = (np.abs(actions[4.0]) < 1) & (np.abs(actions[1.0]) < 1)
    free[6] = False  # the gripper entry carries no noise
    assert free.sum() >= 3
    np.testing.assert_allclose((actions[4.0] - base)[free], 4 * (actions[1.0] - base)[free],
                               rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(actions[1.0] - base)[free] > 0)
    sim.close()


def test_demo_mix_is_recorded_and_checked(tmp_path):
    """The default mix is left out of simulator.json (folders from before it resume); another
    mix is recorded, so it cannot resume a folder of the default one."""
    root = str(tmp_path / "sim")
    generate_calvin_dataset(root, SimSettings(1, 0, 4, 32), progress=False)
    with open(os.path.join(root, "simulator.json")) as f:
        assert "demos" not in json.load(f)
    with pytest.raises(DataError, match="other settings"):
        generate_calvin_dataset(root, SimSettings(1, 0, 4, 32, demos="lift"), progress=False)
    assert SimSettings(demos="lift").recorded()["demos"] == "lift"
    with pytest.raises(ValueError, match="unknown demos"):
        SimSettings(demos="juggle")
