"""Keyboard and mouse -> actions, for each action layout a world model can have.

The page sends the set of held keys as DOM `KeyboardEvent.code` names (physical keys, so the
layout does not depend on the keyboard's language: "KeyW", "ArrowUp", "Space", "ShiftLeft"),
held mouse buttons as "Mouse0" (left), "Mouse1" (middle), "Mouse2" (right), and the mouse
movement in pixels since the last frame. A `KeyMap` turns that into one action in the dataset
convention (the action taken after seeing the current frame); it is stateless, so the same input
always gives the same action. Codes a map does not know are ignored.

- continuous (CALVIN's 7-D relative end-effector action, `ContinuousKeys`): a pair of keys per
  axis, + and -, times an adjustable magnitude in (0, 1]: x D/A, y W/S, z R/F, roll L/J,
  pitch I/K, yaw O/U; with 7 axes the last is the gripper: open (+1) unless Space is held
  (closed, -1). Other dimensions: the first six axes get the same keys, the rest stay 0.
- discrete (`DiscreteKeys`): with 15 classes procgen's layout (CoinRun): arrows and their
  diagonals (actions 0-8, 4 is no-op; arrows win over letters), then D, A, W, S, Q, E (9-14);
  other class counts: Digit0-9 then A-Z choose the action with that index (the lowest held wins),
  no key is action 0.
- multipart with VPT's layout (23 buttons + 121 camera classes, `VPTKeys`): Minecraft's keys
  (W/A/S/D, Space jump, left Shift sneak, left Ctrl sprint, Q drop, E inventory, F swap hands,
  Esc, 1-9 hotbar), left mouse attack, right mouse use, middle mouse pick item; mouse movement
  (pointer locked on the frame) binned to the camera classes as VPT does, and the arrow keys turn
  the camera by `ARROW_DEGREES` per frame.
`key_map(spec)` picks the map; another multi-part layout raises `ActionLayoutError`.
"""

import dataclasses

import numpy as np

from data.vpt import (
    CAMERA_DEGREES_PER_PIXEL,
    KEY_BUTTONS,
    MOUSE_BUTTONS,
    VPT_ACTION_CLASSES,
    VPT_BUTTONS,
    camera_class,
)
from dynamics import ActionSpec

CONTINUOUS_AXES = (  # (+ key, - key, name) per axis, in CALVIN's order
    ("KeyD", "KeyA", "x"), ("KeyW", "KeyS", "y"), ("KeyR", "KeyF", "z"),
    ("KeyL", "KeyJ", "roll"), ("KeyI", "KeyK", "pitch"), ("KeyO", "KeyU", "yaw"),
)  # fmt: skip
GRIPPER_CLOSE = "Space"
PROCGEN_ARROWS = {  # (horizontal, vertical) -> action; procgen's combos 0-8
    (-1, -1): 0, (-1, 0): 1, (-1, 1): 2, (0, -1): 3, (0, 0): 4, (0, 1): 5,
    (1, -1): 6, (1, 0): 7, (1, 1): 8,
}  # fmt: skip
PROCGEN_LETTERS = ("KeyD", "KeyA", "KeyW", "KeyS", "KeyQ", "KeyE")  # actions 9-14
PROCGEN_NOOP = 4
INDEX_KEYS = tuple(f"Digit{i}" for i in range(10)) + tuple(f"Key{chr(c)}" for c in range(65, 91))
ARROW_DEGREES = 5.0  # camera turn per frame while an arrow key is held (VPT layout)
_VPT_SPECIAL_KEYS = {"space": "Space", "left.shift": "ShiftLeft", "left.control": "ControlLeft",
                     "escape": "Escape"}
_BROWSER_MOUSE = {0: 0, 1: 2, 2: 1}  # VPT's button (0 attack, 1 use, 2 pick) -> DOM button


class ActionLayoutError(ValueError):
    """The model's action layout has no key map."""


@dataclasses.dataclass(frozen=True)
class Control:
    """One legend row: the keys (DOM codes, or a description such as "mouse") and what they do."""

    keys: tuple[str, ...]
    does: str


def _axis(held: frozenset[str], plus: str, minus: str) -> int:
    return int(plus in held) - int(minus in held)


@dataclasses.dataclass(frozen=True)
class ContinuousKeys:
    """Continuous actions: + and - keys per axis (CALVIN's 7-D layout; see the module doc)."""

    spec: ActionSpec

    def action(self, held: frozenset[str], *, magnitude: float = 1.0,
               mouse: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        del mouse
        action = np.zeros(self.spec.dim, np.float32)
        for i, (plus, minus, _) in enumerate(CONTINUOUS_AXES[:self.spec.dim]):
            action[i] = magnitude * _axis(held, plus, minus)
        if self.spec.dim == 7:
            action[6] = -1.0 if GRIPPER_CLOSE in held else 1.0
        return action

    def legend(self) -> list[Control]:
        rows = [Control((plus, minus), f"+{name} / -{name}")
                for plus, minus, name in CONTINUOUS_AXES[:self.spec.dim]]
        if self.spec.dim == 7:
            rows.append(Control((GRIPPER_CLOSE,), "hold: close the gripper (open otherwise)"))
        return rows


@dataclasses.dataclass(frozen=True)
class DiscreteKeys:
    """Discrete actions: procgen's layout for 15 classes, else one key per class index."""

    spec: ActionSpec

    @property
    def procgen(self) -> bool:
        return self.spec.classes[0] == 15

    def action(self, held: frozenset[str], *, magnitude: float = 1.0,
               mouse: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        del magnitude, mouse
        if self.procgen:
            move = (_axis(held, "ArrowRight", "ArrowLeft"), _axis(held, "ArrowUp", "ArrowDown"))
            letters = [9 + i for i, code in enumerate(PROCGEN_LETTERS) if code in held]
            if move == (0, 0) and letters:
                return np.asarray(letters[0], np.int32)
            return np.asarray(PROCGEN_ARROWS[move], np.int32)
        for index, code in enumerate(INDEX_KEYS[:self.spec.classes[0]]):
            if code in held:
                return np.asarray(index, np.int32)
        return np.asarray(0, np.int32)

    def legend(self) -> list[Control]:
        if self.procgen:
            return [Control(("ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"),
                            "move (diagonals: two arrows); nothing held: no-op (4)"),
                    *(Control((code,), f"action {9 + i}")
                      for i, code in enumerate(PROCGEN_LETTERS))]
        count = min(self.spec.classes[0], len(INDEX_KEYS))
        return [Control((code,), f"action {i}") for i, code in enumerate(INDEX_KEYS[:count])]


def vpt_key_code(name: str) -> str:
    """VPT's key name ("key.keyboard.w") -> DOM code ("KeyW")."""
    key = name.removeprefix("key.keyboard.")
    if key in _VPT_SPECIAL_KEYS:
        return _VPT_SPECIAL_KEYS[key]
    return f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"


@dataclasses.dataclass(frozen=True)
class VPTKeys:
    """VPT's multi-part actions: 23 binary buttons, then the camera class (see the module doc)."""

    spec: ActionSpec

    @property
    def buttons(self) -> dict[str, int]:
        """DOM code or mouse button -> index in `VPT_BUTTONS`."""
        index = {name: i for i, name in enumerate(VPT_BUTTONS)}
        codes = {vpt_key_code(key): index[button] for key, button in KEY_BUTTONS.items()}
        codes |= {f"Mouse{_BROWSER_MOUSE[b]}": index[button] for b, button in MOUSE_BUTTONS.items()}
        return codes

    def action(self, held: frozenset[str], *, magnitude: float = 1.0,
               mouse: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        del magnitude
        action = np.zeros(len(VPT_ACTION_CLASSES), np.int32)
        for code, index in self.buttons.items():
            action[index] = int(code in held)
        turn = ARROW_DEGREES / CAMERA_DEGREES_PER_PIXEL  # pixels
        dx = mouse[0] + turn * _axis(held, "ArrowRight", "ArrowLeft")
        dy = mouse[1] + turn * _axis(held, "ArrowDown", "ArrowUp")
        action[-1] = camera_class(np.asarray(dx), np.asarray(dy))
        return action

    def legend(self) -> list[Control]:
        names = {}
        for code, index in self.buttons.items():
            names.setdefault(VPT_BUTTONS[index], []).append(code)
        return [*(Control(tuple(codes), button) for button, codes in names.items()),
                Control(("mouse",), "camera (click the frame to lock the pointer)"),
                Control(("ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"),
                        f"camera, {ARROW_DEGREES:g} degrees per frame")]


KeyMap = ContinuousKeys | DiscreteKeys | VPTKeys


def key_map(spec: ActionSpec) -> KeyMap:
    """The key map for a model's action layout; `ActionLayoutError` names a layout without one."""
    if spec.kind == "continuous":
        return ContinuousKeys(spec)
    if spec.kind == "discrete":
        return DiscreteKeys(spec)
    if tuple(spec.classes) == VPT_ACTION_CLASSES:
        return VPTKeys(spec)
    raise ActionLayoutError(
        f"the model has multi-part actions with classes {tuple(spec.classes)}; the player maps "
        f"keys for VPT's layout only ({len(VPT_BUTTONS)} buttons + {VPT_ACTION_CLASSES[-1]} "
        "camera classes): train on VPT data with python launch/run.py "
        "--config=configs/minecraft.py --config.data.format=vpt --config.data.path=<vpt folder>")


def known_codes(keys: KeyMap) -> frozenset[str]:
    """Every DOM code the map reads (the server drops the others)."""
    return frozenset(code for row in keys.legend() for code in row.keys if code != "mouse")
