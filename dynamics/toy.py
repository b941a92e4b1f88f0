"""A toy latent-dynamics problem for tests and objective comparisons: a moving blob.

Each sequence is a Gaussian blob on a grid x grid token map (one latent channel, values in
[-1, 1]) whose velocity at step t is 0.6 x the 2-D action `actions[t]` (dataset convention:
`actions[t]` leads from frame t to frame t + 1), clipped at the borders. Copying the last frame
is a non-trivial baseline: the blob moves up to 0.6 cells per frame.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dynamics.actions import ActionSpec
from dynamics.model import DynamicsConfig

BLOB_ACTION = ActionSpec("continuous", dim=2)


def blob_latents(
    key: PRNGKeyArray, batch: int, time: int, grid: int = 4
) -> tuple[Float[Array, "batch time tokens 1"], Float[Array, "batch time 2"]]:
    """Latents [batch, time, grid * grid, 1] and dataset-convention actions [batch, time, 2]."""
    k_pos, k_act = jax.random.split(key)
    pos = jax.random.uniform(k_pos, (batch, 2), minval=1.0, maxval=grid - 2.0)
    actions = jax.random.uniform(k_act, (batch, time, 2), minval=-1.0, maxval=1.0)
    cells = jnp.stack(jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij"), -1)
    cells = cells.reshape(-1, 2).astype(jnp.float32)
    frames = []
    for t in range(time):
        dist = jnp.sum(jnp.square(cells[None] - pos[:, None]), -1)
        frames.append(2.0 * jnp.exp(-dist / 1.5) - 1.0)
        pos = jnp.clip(pos + 0.6 * actions[:, t], 0.0, grid - 1.0)
    latents = jnp.stack(frames, axis=1)[..., None]  # [batch, time, grid * grid, 1]
    return latents, actions


def blob_batch(key: PRNGKeyArray, batch: int, time: int) -> dict[str, Array]:
    """`blob_latents` as a dataset batch (`dynamics.train`): every frame has its action."""
    latents, actions = blob_latents(key, batch, time)
    return {"latents": latents, "actions": actions, "has_action": jnp.ones((batch, time), bool)}


def blob_config() -> DynamicsConfig:
    """The blob learning test's small model (width 64, 4 blocks, K_max 8; 0.20M parameters)."""
    return DynamicsConfig(latent_tokens=16, latent_dim=1, action=BLOB_ACTION, width=64, depth=4,
                          heads=4, time_every=2, registers=2, k_max=8, pack=2)
