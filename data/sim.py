"""Embedded tabletop simulator: pybullet's Franka Panda, a table and three blocks.

Control is CALVIN's relative action at 30 Hz: a 7-D vector in [-1, 1] whose first three entries
move the tool centre point by entry * 0.02 m, the next three turn its euler angles by entry *
0.05 rad, and whose last entry opens (+1) or closes (-1) the gripper. Each action sets an inverse
kinematics target from the current pose (from the previous target while the arm is within 3 cm
of it, so gravity sag does not accumulate) and runs 8 physics steps of 1/240 s. Frames come from
the CPU renderer through a static camera above the front corner of the table. pybullet is
imported lazily, so only code that simulates needs it.
"""

import numpy as np

POSITION_SCALE = 0.02  # metres per unit of relative action
ROTATION_SCALE = 0.05  # radians per unit of relative action
SUBSTEPS = 8  # 240 Hz physics per 30 Hz action
TARGET_SLACK = 0.03  # metres: closer than this to the last target, the next one builds on it
TABLE_TOP = 0.626
TCP_LINK = 11  # panda_grasptarget, between the fingertips
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
REST_POSE = (0.0, 0.2, 0.0, -2.3, 0.0, 2.5, 0.785)  # gripper ~11 cm above the table
BLOCK_HALF = 0.028
BLOCK_COLORS = ((0.85, 0.15, 0.15, 1), (0.15, 0.3, 0.85, 1), (0.9, 0.45, 0.7, 1))  # red, blue, pink
WORKSPACE_LOW, WORKSPACE_HIGH = np.array([0.35, -0.22]), np.array([0.68, 0.22])
DOWN = np.array([np.pi, 0.0, 0.0])  # euler of a gripper pointing at the table


def _import_pybullet():
    try:
        import pybullet
        import pybullet_data
    except ImportError as e:
        raise ImportError(
            "the embedded simulator needs pybullet: pip install 'dreamer4-jax[sim]' "
            "(or pip install pybullet)"
        ) from e
    return pybullet, pybullet_data


def wrap_angle(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class TabletopSim:
    """One pybullet client (DIRECT, no GUI) with the scene; `reset(rng)` lays out a new episode."""

    def __init__(self, image_size: int = 200):
        self.p, data_path = _import_pybullet()
        self.client = self.p.connect(self.p.DIRECT)
        self.data_path = data_path.getDataPath()
        self.image_size = image_size
        self.view = self.p.computeViewMatrix(
            [1.1, 0.4, 1.15], [0.5, 0.0, TABLE_TOP + 0.05], [0, 0, 1]
        )
        self.projection = self.p.computeProjectionMatrixFOV(50, 1.0, 0.1, 4.0)
        self.robot, self.blocks = None, []
        self.gripper_action = 1.0
        self.target: tuple[np.ndarray, np.ndarray] | None = None

    def close(self) -> None:
        self.p.disconnect(self.client)

    def reset(self, rng: np.random.Generator) -> None:
        """Fresh scene: blocks at random non-overlapping spots, the arm near its rest pose."""
        p, c = self.p, self.client
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setAdditionalSearchPath(self.data_path, physicsClientId=c)
        p.loadURDF("table/table.urdf", [0.5, 0, 0], useFixedBase=True, physicsClientId=c)
        self.robot = p.loadURDF(
            "franka_panda/panda.urdf", [0, 0, TABLE_TOP], useFixedBase=True, physicsClientId=c
        )
        rest = np.asarray(REST_POSE) + rng.normal(0, 0.05, 7)
        for joint, angle in zip(ARM_JOINTS, rest, strict=True):
            p.resetJointState(self.robot, joint, angle, physicsClientId=c)
        for joint in FINGER_JOINTS:
            p.resetJointState(self.robot, joint, 0.04, physicsClientId=c)
        self.gripper_action = 1.0
        self.target = None
        shape = p.createCollisionShape(p.GEOM_BOX, halfExtents=[BLOCK_HALF] * 3, physicsClientId=c)
        self.blocks, placed = [], []
        for color in BLOCK_COLORS:
            while True:
                xy = rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH)
                if all(np.linalg.norm(xy - other) > 0.09 for other in placed):
                    break
            placed.append(xy)
            visual = p.createVisualShape(
                p.GEOM_BOX, halfExtents=[BLOCK_HALF] * 3, rgbaColor=color, physicsClientId=c
            )
            orientation = p.getQuaternionFromEuler([0, 0, rng.uniform(-np.pi, np.pi)])
            block = p.createMultiBody(
                0.1, shape, visual, [*xy, TABLE_TOP + BLOCK_HALF], orientation, physicsClientId=c
            )
            p.changeDynamics(block, -1, lateralFriction=1.0, physicsClientId=c)
            self.blocks.append(block)
        self._hold_arm(rest)
        for _ in range(24):  # let the blocks settle and the arm hold still
            p.stepSimulation(physicsClientId=c)

    def _hold_arm(self, joint_targets) -> None:
        p = self.p
        p.setJointMotorControlArray(
            self.robot, ARM_JOINTS, p.POSITION_CONTROL, targetPositions=list(joint_targets),
            forces=[87.0] * 4 + [12.0] * 3, positionGains=[0.3] * 7, physicsClientId=self.client,
        )  # fmt: skip
        width = 0.04 if self.gripper_action > 0 else 0.0
        p.setJointMotorControlArray(
            self.robot, FINGER_JOINTS, p.POSITION_CONTROL, targetPositions=[width, width],
            forces=[40.0, 40.0], physicsClientId=self.client,
        )  # fmt: skip

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool centre point position (m) and euler angles (rad)."""
        state = self.p.getLinkState(
            self.robot, TCP_LINK, computeForwardKinematics=True, physicsClientId=self.client
        )
        return np.array(state[4]), np.array(self.p.getEulerFromQuaternion(state[5]))

    def step(self, rel_action: np.ndarray) -> np.ndarray:
        """Applies one relative action; returns the absolute target (xyz, euler, gripper)."""
        rel_action = np.clip(np.asarray(rel_action, np.float64), -1.0, 1.0)
        position, euler = self.tcp_pose()
        if self.target is not None and np.linalg.norm(self.target[0] - position) < TARGET_SLACK:
            position, euler = self.target  # no sag from gravity building up over steps
        target_position = position + rel_action[:3] * POSITION_SCALE
        target_euler = wrap_angle(euler + rel_action[3:6] * ROTATION_SCALE)
        self.gripper_action = 1.0 if rel_action[6] >= 0 else -1.0
        self.target = (target_position, target_euler)
        joints = self.p.calculateInverseKinematics(
            self.robot, TCP_LINK, target_position, self.p.getQuaternionFromEuler(target_euler),
            restPoses=list(REST_POSE) + [0.04] * 2, maxNumIterations=50,
            physicsClientId=self.client,
        )  # fmt: skip
        self._hold_arm(joints[:7])
        for _ in range(SUBSTEPS):
            self.p.stepSimulation(physicsClientId=self.client)
        return np.concatenate([target_position, target_euler, [self.gripper_action]])

    def block_poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        poses = []
        for block in self.blocks:
            position, orientation = self.p.getBasePositionAndOrientation(
                block, physicsClientId=self.client
            )
            poses.append((np.array(position), np.array(self.p.getEulerFromQuaternion(orientation))))
        return poses

    def robot_obs(self) -> np.ndarray:
        """CALVIN's 15 robot values: tcp xyz, tcp euler, gripper width, 7 joints, gripper action."""
        position, euler = self.tcp_pose()
        states = self.p.getJointStates(
            self.robot, [*ARM_JOINTS, *FINGER_JOINTS], physicsClientId=self.client
        )
        angles = [s[0] for s in states]
        width = angles[7] + angles[8]
        return np.array([*position, *euler, width, *angles[:7], self.gripper_action])

    def scene_obs(self) -> np.ndarray:
        """CALVIN's 24 scene values: 6 articulated parts (none here: zeros), then xyz and euler
        of the red, blue and pink blocks."""
        blocks = [np.concatenate(pose) for pose in self.block_poses()]
        return np.concatenate([np.zeros(6), *blocks])

    def render(self) -> np.ndarray:
        """uint8 [image_size, image_size, 3] from the static camera (CPU renderer)."""
        size = self.image_size
        _, _, rgba, _, _ = self.p.getCameraImage(
            size, size, self.view, self.projection, renderer=self.p.ER_TINY_RENDERER,
            flags=self.p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client,
        )  # fmt: skip
        return np.asarray(rgba, np.uint8).reshape(size, size, 4)[..., :3]
