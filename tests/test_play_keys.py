"""Key maps of the player: held keys, mouse -> action, per action layout, against hand-computed
actions."""

import itertools

import numpy as np
import pytest

from data.vpt import VPT_ACTION_CLASSES, VPT_BUTTONS
from dynamics import ActionSpec
from play.keys import ActionLayoutError, key_map, known_codes

CALVIN = ActionSpec("continuous", dim=7)
COINRUN = ActionSpec("discrete", classes=(15,))
VPT = ActionSpec("multipart", classes=VPT_ACTION_CLASSES)


def test_calvin_keys_axes_magnitude_and_gripper():
    keys = key_map(CALVIN)
    act = lambda *held, m=1.0: keys.action(frozenset(held), magnitude=m).tolist()
    assert act() == [0, 0, 0, 0, 0, 0, 1]  # nothing held: still, gripper open
    np.testing.assert_allclose(act("KeyW", "KeyA", "Space", m=0.3),
                               [-0.3, 0.3, 0, 0, 0, 0, -1], rtol=1e-6)
    assert act("KeyR", "KeyL", "KeyK", "KeyO") == [0, 0, 1, 1, -1, 1, 1]
    assert act("KeyD", "KeyA") == [0, 0, 0, 0, 0, 0, 1]  # opposite keys cancel
    assert act("KeyF", "KeyJ", "KeyI", "KeyU", "KeyS", m=0.5) == [0, -0.5, -0.5, -0.5, 0.5, -0.5,
                                                                   1]
    assert keys.action(frozenset()).dtype == np.float32
    assert known_codes(keys) == {"KeyD", "KeyA", "KeyW", "KeyS", "KeyR", "KeyF", "KeyL", "KeyJ",
                                 "KeyI", "KeyK", "KeyO", "KeyU", "Space"}


def test_other_continuous_dimensions():
    keys = key_map(ActionSpec("continuous", dim=2))
    assert keys.action(frozenset({"KeyD", "KeyS", "Space", "KeyR"})).tolist() == [1, -1]
    keys = key_map(ActionSpec("continuous", dim=9))
    assert keys.action(frozenset({"KeyO", "Space"})).tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0]


def test_procgen_layout_reaches_every_coinrun_action():
    keys = key_map(COINRUN)
    act = lambda *held: int(keys.action(frozenset(held)))
    assert act() == 4  # no-op
    assert [act("ArrowLeft", "ArrowDown"), act("ArrowLeft"), act("ArrowLeft", "ArrowUp"),
            act("ArrowDown"), act("ArrowUp"), act("ArrowRight", "ArrowDown"), act("ArrowRight"),
            act("ArrowRight", "ArrowUp")] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert [act(k) for k in ("KeyD", "KeyA", "KeyW", "KeyS", "KeyQ", "KeyE")] == list(
        range(9, 15))
    assert act("ArrowRight", "KeyQ") == 7  # arrows win over letters
    assert act("ArrowLeft", "ArrowRight") == 4
    codes = sorted(known_codes(keys))
    reached = {act(*held) for n in range(4) for held in itertools.combinations(codes, n)}
    assert reached == set(range(15))


def test_other_discrete_class_counts_use_index_keys():
    keys = key_map(ActionSpec("discrete", classes=(17,)))  # Craftax-Classic
    act = lambda *held: int(keys.action(frozenset(held)))
    assert [act(), act("Digit3"), act("KeyA"), act("Digit5", "Digit2"), act("KeyG")] == [
        0, 3, 10, 2, 16]
    assert act("KeyH") == 0  # action 17 does not exist
    assert len(keys.legend()) == 17


def test_vpt_buttons_mouse_and_camera_bins():
    keys = key_map(VPT)
    index = {name: i for i, name in enumerate(VPT_BUTTONS)}
    action = keys.action(frozenset({"KeyW", "Space", "ShiftLeft", "Digit3", "Mouse0", "Mouse2"}))
    assert action.dtype == np.int32 and action.shape == (24,)
    on = {VPT_BUTTONS[i] for i in np.flatnonzero(action[:23])}
    assert on == {"forward", "jump", "sneak", "hotbar.3", "attack", "use"}
    assert action[23] == 60  # camera: no movement is class 11 * 5 + 5
    assert keys.action(frozenset({"Mouse1", "KeyF", "Escape"}))[
        [index["pickItem"], index["swapHands"], index["ESC"]]].tolist() == [1, 1, 1]
    camera = lambda held=(), mouse=(0.0, 0.0): int(keys.action(frozenset(held), mouse=mouse)[23])
    # 5 degrees: mu-law 10 ln(1 + 5) / ln 11 = 7.47 -> bin round(8.74) = 9; 10 degrees -> bin 10.
    assert camera({"ArrowRight"}) == 11 * 5 + 9
    assert camera({"ArrowLeft"}) == 11 * 5 + 1
    assert camera({"ArrowUp"}) == 11 * 1 + 5  # looking up: negative pitch
    assert camera(mouse=(400.0 / 6, 0.0)) == 11 * 5 + 10  # 66.7 px = 10 degrees of yaw
    assert camera(mouse=(0.0, 1e4)) == 11 * 10 + 5  # clipped to +10 degrees of pitch
    assert camera(mouse=(0.3, -0.3)) == 60  # under half a bin


def test_unsupported_multipart_layout_names_the_fix():
    with pytest.raises(ActionLayoutError, match=r"classes \(2, 3\).*configs/minecraft.py"):
        key_map(ActionSpec("multipart", classes=(2, 3)))
