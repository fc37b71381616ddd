"""Data parallelism with `jax.sharding`: one mesh axis "data" over the run's devices.

Every stage keeps its single-device code; only where arrays live changes. Batches (diffusion
training minibatches, guidance-cache batches, sampler-fit batches, sample batches) are split
over the mesh along their leading axis, parameters and optimiser state are replicated, and the
protocols' vmapped model groups are split along the group axis. XLA partitions the jitted
computations and inserts the reductions (gradient all-reduce, cross-device sums). Results do not
depend on the device count: `jax.random` values do not depend on sharding and every per-example
op is computed per row, so only the order of cross-device float sums can move a result, by a few
ulps (tests/test_sharding.py, on 8 fake CPU devices; tests/test_multiprocess.py, two processes).

Multi-host: call `jax.distributed.initialize` first (the `tardiff --distributed` flags do), and
the mesh spans every process's devices. Host arrays are placed with `shard_rows` (each process
transfers only the rows of its own devices) and read back with `to_host` (gathered across
processes where needed); `is_writer()` is true on process 0 alone, which writes files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tardiff_jax import io as tio
from tardiff_jax.config.fields import option


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
  """Devices of the run (the mesh every stage shards over)."""

  devices: int = option(1, "Devices of the run's data-parallel mesh: 1 = one device, no "
                           "sharding; 0 = every device of every process (required with "
                           "several processes); n = the first n devices. Batch sizes must "
                           "divide by it.")

  def __post_init__(self):
    if isinstance(self.devices, bool) or int(self.devices) != self.devices or self.devices < 0:
      raise ValueError(f"parallel.devices must be an integer >= 0, got {self.devices!r}.")


def make_mesh(axis: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named `axis` over `devices` (default: all devices of all processes).

  The axis type is Auto (XLA propagates shardings), not jax's newer Explicit default, so the
  unchanged single-device code (label gathers, concatenations) runs on sharded inputs as written.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def run_mesh(devices: int = 1) -> Mesh | None:
  """The mesh of `parallel.devices` (see `ParallelConfig`), or None for one device in one
  process (nothing is sharded then: the single-device code path, bit for bit)."""
  available = jax.devices()
  n = len(available) if devices == 0 else int(devices)
  if n > len(available):
    raise ValueError(f"parallel.devices={devices} but only {len(available)} devices are "
                     f"visible ({available[0].platform}).")
  if jax.process_count() > 1 and n != len(available):
    raise ValueError(f"With {jax.process_count()} processes the mesh must span every device: "
                     f"set parallel.devices=0 (got {devices}).")
  if n == 1:
    return None
  return make_mesh(devices=available[:n])


def mesh_size(mesh: Mesh | None) -> int:
  return 1 if mesh is None else int(mesh.devices.size)


def check_divisible(what: str, size: int, mesh: Mesh | None) -> None:
  """A clear error when a batch of `size` rows cannot be split evenly over the mesh."""
  n = mesh_size(mesh)
  if size % n:
    raise ValueError(f"{what}={size} must be divisible by the {n} devices of the mesh "
                     f"(parallel.devices).")


def round_up(size: int, mesh: Mesh | None) -> int:
  """`size` rounded up to a multiple of the mesh's device count (padding rows of a batch)."""
  n = mesh_size(mesh)
  return -(-int(size) // n) * n


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's single axis."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def jit_replicated(fn: Callable[..., Any], mesh: Mesh | None, **kwargs: Any) -> Callable[..., Any]:
  """`jax.jit(fn, **kwargs)`, with every output replicated over `mesh` when there is one (e.g. a
  training state or a sum whose inputs arrive split over the devices: XLA reduces across them)."""
  if mesh is None:
    return jax.jit(fn, **kwargs)
  return jax.jit(fn, out_shardings=replicated(mesh), **kwargs)


def is_writer() -> bool:
  """Whether this process writes files (process 0; always true in a single process)."""
  return jax.process_index() == 0


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process run: `jax.distributed.initialize` (arguments None are detected from
  the cluster environment, e.g. SLURM or Cloud TPU) and makes process 0 the only one that
  writes files (`tardiff_jax.io.set_writer`). Call it before any other jax call."""
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  tio.set_writer(is_writer())


def to_host(tree: Any) -> Any:
  """numpy copies of a pytree's arrays, wherever they live: single-device, sharded over this
  process's devices, replicated, or sharded across processes (gathered; every process must call
  this then, as for any collective)."""
  def one(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
      return np.asarray(a)
    if a.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return jax.tree_util.tree_map(one, tree)


def _put(a: Any, sharding: NamedSharding) -> jax.Array:
  """Host data (the same on every process) onto a possibly multi-process sharding: each process
  transfers only the slices of its own devices."""
  a = np.asarray(to_host(a)) if isinstance(a, jax.Array) else np.asarray(a)
  return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def replicate(mesh: Mesh | None, tree: Any) -> Any:
  """Copies a pytree (e.g. params) to every device of the mesh (unchanged when mesh is None)."""
  if mesh is None or tree is None:
    return tree
  return jax.tree_util.tree_map(lambda a: _put(a, replicated(mesh)), tree)


def shard_rows(mesh: Mesh | None, a: Any) -> jax.Array:
  """One array on the mesh split along its leading axis, which must divide by the device count
  (`jnp.asarray(a)` on the default device when mesh is None)."""
  if mesh is None:
    return jnp.asarray(a)
  if np.ndim(a) < 1 or np.shape(a)[0] % mesh_size(mesh):
    raise ValueError(f"shard_rows: shape {np.shape(a)}; the leading axis must be divisible by "
                     f"the {mesh_size(mesh)} devices of the mesh.")
  return _put(a, batch_sharding(mesh))


def shard_batch(mesh: Mesh, *arrays: Any) -> Any:
  """`shard_rows` for each argument: the array for one argument, else a tuple."""
  out = []
  for i, a in enumerate(arrays):
    try:
      out.append(shard_rows(mesh, a))
    except ValueError:
      raise ValueError(f"shard_batch: argument {i} has shape {np.shape(a)}; its leading axis "
                       f"must be divisible by the {mesh_size(mesh)} devices of the mesh."
                       ) from None
  return out[0] if len(out) == 1 else tuple(out)


def constrain_rows(mesh: Mesh | None, tree: Any) -> Any:
  """Inside a jitted function: split a pytree's leading axis over the mesh (no-op without one)."""
  if mesh is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def shard_sampler(sample_fn: Callable[..., Any], mesh: Mesh | None,
                  return_trajectory: bool = False) -> Callable[..., Any]:
  """`jax.jit(sample_fn, static_argnames="shape")` with outputs sharded over the batch axis
  (a trajectory [S,B,T,C] is sharded on B); plain jit when mesh is None."""
  if mesh is None:
    return jax.jit(sample_fn, static_argnames="shape")
  out = batch_sharding(mesh)
  if return_trajectory:
    out = (out, NamedSharding(mesh, P(None, mesh.axis_names[0])))
  return jax.jit(sample_fn, static_argnames="shape", out_shardings=out)


def generate_sharded(sample_fn: Callable[..., Any], params, gparams, key: jax.Array,
                     counts: Sequence[int], shape_tc: tuple[int, int], batch_size: int,
                     mesh: Mesh | None = None, progress: bool = True,
                     return_trajectory: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """`generate` with each batch sharded over `mesh` (default: all devices); params and gparams
  are replicated. `sample_fn` is the pure (un-jitted) sampler from `make_sampler`."""
  from tardiff_jax.sampling.generate import generate  # noqa: PLC0415 (generate imports us)

  mesh = make_mesh() if mesh is None else mesh
  check_divisible("batch_size", batch_size, mesh)
  fn = shard_sampler(sample_fn, mesh, return_trajectory)
  return generate(fn, replicate(mesh, params), replicate(mesh, gparams), key, counts, shape_tc,
                  batch_size, progress=progress, place_fn=lambda y: shard_rows(mesh, y))
