"""One mesh for 1 CPU, 1 GPU or many hosts: axes ("data", "fsdp").

Batches are split over both axes along their first dimension; every parameter and optimizer
array is split along its largest dimension divisible by the fsdp size (replicated if none), so
a checkpoint restored here is laid out for this mesh whatever mesh wrote it. Multi-host runs call
`jax.distributed.initialize()` first (see BUILD.md) and feed each process its own share of the
batch (`process_batch`).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
    devices = jax.devices()
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"config.mesh.fsdp ({fsdp}) must divide the {len(devices)} devices.")
    data = len(devices) // fsdp if data == -1 else data
    if data * fsdp != len(devices):
        raise ValueError(f"config.mesh: data ({data}) x fsdp ({fsdp}) must equal the "
                         f"{len(devices)} devices (data=-1 fills in).")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def param_sharding(mesh: Mesh, x) -> NamedSharding:
    """Split the largest dimension divisible by the fsdp size; replicate otherwise."""
    size = mesh.shape["fsdp"]
    spec = [None] * np.ndim(x)
    if size > 1:
        for axis in sorted(range(np.ndim(x)), key=lambda a: -x.shape[a]):
            if x.shape[axis] % size == 0:
                spec[axis] = "fsdp"
                break
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(mesh: Mesh, state):
    return jax.tree.map(lambda x: param_sharding(mesh, x), state)


def shard_state(mesh: Mesh, state):
    return jax.device_put(state, state_shardings(mesh, state))


def process_batch(mesh: Mesh, batch: dict) -> dict:
    """This process's rows of the global batch -> global arrays split over the batch axes."""
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}
