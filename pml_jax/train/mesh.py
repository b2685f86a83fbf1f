"""Devices: one `data` mesh axis over every device of every process; batch sharded, state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pml_jax.errors import PmlError

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-host run (`jax.distributed.initialize`); arguments default to the environment
    (TPU pods and SLURM fill them in; elsewhere pass `host:port`, the process count and this id).
    CPU processes exchange gradients through gloo collectives. jax's own preemption service is
    turned off: its SIGTERM handler would swallow the signal outside training, and in training
    `interrupt.StopSignal` handles SIGINT and SIGTERM on every process alike."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices (and so over the processes)."""
    if global_batch % mesh.size:
        raise PmlError(f"batch size {global_batch} is not divisible by the {mesh.size} devices")


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's numpy batch (its slice of the global batch) -> global jax Arrays on `mesh`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def replicate(tree, mesh: Mesh):
    """Put a pytree on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))
