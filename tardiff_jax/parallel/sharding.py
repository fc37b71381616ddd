"""Data-parallel sampling with `jax.sharding`: one mesh axis "data" over all devices.

The sampler is unchanged: the same pure `sample` is jitted with its output sharded over the batch
axis and fed label batches sharded the same way; XLA partitions the scan. Results equal the
single-device ones: `jax.random` values do not depend on sharding, and every op in a per-example
denoiser is computed per batch row (checked in tests/test_sharding.py on 8 fake CPU devices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tardiff_jax.sampling.generate import generate


def make_mesh(axis: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named `axis` over `devices` (default: all devices).

  The axis type is Auto (XLA propagates shardings), not jax's newer Explicit default, so the
  unchanged sampler (label gathers, concatenations) runs on sharded inputs as written.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's single axis."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Copies a pytree (e.g. params) to every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(mesh: Mesh, *arrays: Any) -> Any:
  """Puts each array on the mesh split along its leading axis, which must divide by the number of
  devices. Returns the array for one argument, else a tuple."""
  n = mesh.devices.size
  out = []
  for i, a in enumerate(arrays):
    if np.ndim(a) < 1 or np.shape(a)[0] % n:
      raise ValueError(f"shard_batch: argument {i} has shape {np.shape(a)}; its leading axis "
                       f"must be divisible by the {n} devices of the mesh.")
    out.append(jax.device_put(a, batch_sharding(mesh)))
  return out[0] if len(out) == 1 else tuple(out)


def shard_sampler(sample_fn: Callable[..., Any], mesh: Mesh,
                  return_trajectory: bool = False) -> Callable[..., Any]:
  """`jax.jit(sample_fn, static_argnames="shape")` with outputs sharded over the batch axis
  (a trajectory [S,B,T,C] is sharded on B)."""
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
  mesh = make_mesh() if mesh is None else mesh
  if batch_size % mesh.devices.size:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {mesh.devices.size} "
                     "devices of the mesh.")
  fn = shard_sampler(sample_fn, mesh, return_trajectory)
  return generate(fn, replicate(mesh, params), replicate(mesh, gparams), key, counts, shape_tc,
                  batch_size, progress=progress, place_fn=lambda y: shard_batch(mesh, y))
