"""Play a world model: a browser player served over a WebSocket (`play.server`, started by
launch/play.py), key maps for every action layout (`play.keys`), and Gymnasium environments that
use the world model as a simulator (`WorldModelEnv`, `WorldModelVectorEnv`)."""

from play.env import Contexts, ImaginedWorlds, WorldModelEnv, WorldModelVectorEnv
from play.keys import ActionLayoutError, key_map

__all__ = [
           "ActionLayoutError",
           "Contexts",
           "ImaginedWorlds",
           "WorldModelEnv",
           "WorldModelVectorEnv",
           "key_map",
]
