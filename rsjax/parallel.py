"""Data parallelism with one jitted function over a ``jax.sharding.Mesh`` (no ``pmap``).

The batch is split along its first axis over the mesh axis ``'data'``; the training state
(parameters, optimiser state, the memory bank, the momentum encoder) is replicated. The same
step function runs unchanged: ``jax.jit`` with ``in_shardings`` / ``out_shardings`` lets XLA
insert the collectives, so BatchNorm statistics and loss means are over the global batch
(sync-BN) and the bank scatter sees every row of the batch. Results equal the single-device
step up to floating-point summation order.

To try it on a CPU-only machine, simulate devices before JAX starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(n_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: the first ``n_devices``, or all)."""
    if devices is None:
        devices = jax.devices()
        if n_devices is not None:
            if n_devices > len(devices):
                raise ValueError(f"{n_devices} devices requested, {len(devices)} available "
                                 "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
            devices = devices[:n_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over ``'data'``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def _check_batch(mesh: Mesh, x) -> None:
    n = mesh.shape[DATA_AXIS]
    if np.ndim(x) == 0 or np.shape(x)[0] % n:
        raise ValueError(f"a batch of {np.shape(x)[:1]} does not split over {n} devices; "
                         f"use a batch size divisible by {n}")


def shard_batch(mesh: Mesh, *arrays) -> tuple:
    """Place each array split along its first axis over the mesh."""
    for x in arrays:
        _check_batch(mesh, x)
    return tuple(jax.device_put(x, batch_sharding(mesh)) for x in arrays)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place every leaf of ``tree`` on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def data_parallel(fn: Callable, mesh: Mesh, n_args: int, batch_argnums: Sequence[int],
                  donate_argnums: Sequence[int] = (0,)) -> Callable:
    """``jax.jit(fn)`` with the arguments in ``batch_argnums`` split over ``'data'`` and every
    other argument and all outputs replicated.

    Arguments must already live on the mesh with these shardings (see :func:`replicate` and
    :func:`shard_batch`) or be host (numpy) arrays, which jit places itself.
    """
    in_shardings = tuple(batch_sharding(mesh) if i in batch_argnums else replicated(mesh)
                         for i in range(n_args))
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=replicated(mesh),
                   donate_argnums=tuple(donate_argnums))
