"""Tabletop tasks and their success detectors, computed from the scene state alone, as CALVIN's
own task oracle computes its tasks from `robot_obs` / `scene_obs`.

They read the states of `data.calvin` (float [..., 12]: tool centre point xyz, then the red, blue
and pink blocks' xyz, in metres), which the embedded simulator and a real CALVIN split both
provide, so the same detectors score imagined data, recorded data and live episodes. Heights are
measured from the table top (`table_top`: the simulator's by default; pass a real split's).

Tasks:
- "lift": some block's centre is at least `LIFT_HEIGHT` above where it rests on the table;
- "push_to_region": some block rests on the table with its centre inside `REGION` (x and y
  bounds in metres: the near-left corner of the simulator's workspace, as seen from the camera).

`satisfied(task, states)` counts the blocks that meet the condition per state [...] and
`success(task, states)` says whether some block does. `rewards(task, states)` [T] gives reward 1
for the step that makes the condition true for one more block (`rewards[t]` = 1 when the count
at frame t + 1 exceeds the count at frame t, the reward earned by `actions[t]`; a scene that
starts with a block in the region is still won by pushing another one in), 0 otherwise (and 0
for the last frame, whose action leads nowhere recorded); with `dense=True`, 1 for every step
that leads to a state where the condition holds (a block held up earns every step: a signal a
reward head can read off single frames, where the event reward hangs on one frame in many).
`episode_success` says whether an episode ever achieved the task after its first frame.
"""

import numpy as np

from data.sim import BLOCK_HALF, TABLE_TOP

TASKS = ("lift", "push_to_region")
LIFT_HEIGHT = 0.05  # metres above the resting height
RESTING = 0.015  # metres above the resting height that still count as resting on the table
REGION = ((0.35, 0.47), (0.12, 0.22))  # (x low, x high), (y low, y high) in metres
BLOCKS = 3


def block_positions(states: np.ndarray) -> np.ndarray:
    """[..., 12] states -> [..., 3 blocks, xyz]."""
    states = np.asarray(states)
    if states.shape[-1] != 3 * (BLOCKS + 1):
        raise ValueError(f"task detectors need states of {3 * (BLOCKS + 1)} values (tcp and "
                         f"three blocks, xyz), got {states.shape[-1]}.")
    return states[..., 3:].reshape(*states.shape[:-1], BLOCKS, 3)


def satisfied(task: str, states: np.ndarray, *, table_top: float = TABLE_TOP) -> np.ndarray:
    """int [...]: how many blocks meet the task's condition in each state."""
    blocks = block_positions(states)
    height = blocks[..., 2] - (table_top + BLOCK_HALF)
    if task == "lift":
        return np.sum(height >= LIFT_HEIGHT, axis=-1)
    if task == "push_to_region":
        (x_low, x_high), (y_low, y_high) = REGION
        inside = ((blocks[..., 0] >= x_low) & (blocks[..., 0] <= x_high)
                  & (blocks[..., 1] >= y_low) & (blocks[..., 1] <= y_high))
        return np.sum(inside & (height <= RESTING), axis=-1)
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}.")


def success(task: str, states: np.ndarray, *, table_top: float = TABLE_TOP) -> np.ndarray:
    """bool [...]: whether the task's condition holds in each state (for some block)."""
    return satisfied(task, states, table_top=table_top) > 0


def rewards(task: str, states: np.ndarray, *, table_top: float = TABLE_TOP,
            dense: bool = False) -> np.ndarray:
    """float32 [T]: 1 where `actions[t]` makes the condition true for one more block (dense:
    where it leads to a state in which it holds), else 0."""
    count = satisfied(task, states, table_top=table_top)
    out = np.zeros(count.shape, np.float32)
    out[:-1] = count[1:] > 0 if dense else count[1:] > count[:-1]
    return out


def episode_success(task: str, states: np.ndarray, *, table_top: float = TABLE_TOP) -> bool:
    """Whether some action of the episode made the condition true."""
    return bool(np.any(rewards(task, states, table_top=table_top) > 0))
