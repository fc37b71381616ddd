"""The guidance cache: G = mean_i grad_phi l(x_i, y_i) over the guidance set (Algorithm 1, step 2).

Computed in fixed-size vmapped batches (the last one padded with zero-weight rows, so one
compiled shape serves every batch): each batch contributes grad_phi sum_i w_i l(x_i, y_i), one
reverse pass per batch, no per-sample parameter gradients. Saved atomically as an `.npz` of the
flattened leaves (with their key paths) plus a JSON meta string.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tardiff_jax import io as tio
from tardiff_jax.data.dataset import check_series
from tardiff_jax.influence.scores import LossFn, tree_norm
from tardiff_jax.parallel.sharding import (
    jit_replicated,
    replicate,
    round_up,
    shard_rows,
    to_host,
)

CLASS_FILTERS = ("all", "minority", "majority")


@dataclasses.dataclass(frozen=True)
class GuidanceCache:
  """G (pytree like the classifier params, float32), how many examples built it, and how.

  `norm` is the l2 norm of the mean gradient before any normalisation.
  """
  G: Any
  count: int
  class_filter: str
  normalized: bool
  norm: float
  classes: tuple[int, ...] = ()  # Labels of the rows kept (after the class filter).
  build_seconds: float = 0.0  # Wall time of the build (compile included).


def select_rows(y: np.ndarray, class_filter: str = "all") -> np.ndarray:
  """Indices of the rows of y[N] kept by `class_filter`.

  minority = the least frequent label present in y, majority = the most frequent (ties: the
  smaller label for majority, the larger for minority, so the two differ in a balanced binary set).
  """
  if class_filter not in CLASS_FILTERS:
    raise ValueError(f"Unknown class_filter {class_filter!r}; expected one of {CLASS_FILTERS}.")
  y = np.asarray(y)
  if y.ndim != 1 or y.size == 0:
    raise ValueError(f"Guidance labels must be a non-empty 1-D array, got shape {y.shape}.")
  if class_filter == "all":
    return np.arange(y.shape[0])
  labels, counts = np.unique(y, return_counts=True)
  if labels.size < 2:
    raise ValueError(f"class_filter={class_filter!r} needs at least two classes in the guidance "
                     f"labels; found only {labels.tolist()}.")
  if class_filter == "minority":
    # Least frequent; among ties the largest label (the positive class in a balanced binary set).
    order = np.lexsort((-labels, counts))
  else:
    order = np.lexsort((labels, -counts))
  return np.nonzero(y == labels[order[0]])[0]


@functools.lru_cache(maxsize=8)
def _make_accumulate(loss_fn: LossFn, mesh: Mesh | None = None):
  """jitted (acc, params, x[B,T,C], y[B], w[B]) -> acc + grad_phi sum_i w_i l(x_i, y_i).

  Cached per (loss_fn, mesh), so building several caches with one classifier compiles once per
  shape. With a mesh the batch arrives split over the devices and the sum is reduced across them
  into a replicated accumulator.
  """
  def weighted_sum(params, x, y, w):
    losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, x, y)
    return jnp.sum(w * losses)

  def accumulate(acc, params, x, y, w):
    g = jax.grad(weighted_sum)(params, x, y, w)
    return jax.tree_util.tree_map(lambda a, b: a + b.astype(jnp.float32), acc, g)

  return jit_replicated(accumulate, mesh, donate_argnums=(0,))


def build_guidance_cache(loss_fn: LossFn, params: Any, x: np.ndarray, y: np.ndarray,
                         batch_size: int = 256, class_filter: str = "all",
                         normalize: bool = False, eps: float = 1e-12,
                         mesh: Mesh | None = None) -> GuidanceCache:
  """G = mean over the kept guidance rows of grad_phi loss_fn(params, x_i, y_i).

  x: float32[N, T, C], y: int[N]. Rows are processed in vmapped batches of `batch_size`; the
  last batch is padded with zero-weight copies of row 0. `normalize` divides G by its l2 norm.
  With a `mesh` each batch (rounded up to a multiple of the device count, the extra rows
  zero-weight) is split over the devices; G equals the unsharded one up to float sum order.
  """
  if batch_size <= 0:
    raise ValueError(f"cache batch_size must be positive, got {batch_size}.")
  x, y = check_series(x, y, what="guidance inputs x")
  t0 = time.perf_counter()
  rows = select_rows(y, class_filter)
  xs, ys = x[rows], y[rows].astype(np.int32)
  n = xs.shape[0]
  bs = round_up(min(batch_size, n), mesh)
  nb = -(-n // bs)
  pad = nb * bs - n
  w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  xs = np.concatenate([xs, np.repeat(xs[:1], pad, axis=0)])
  ys = np.concatenate([ys, np.repeat(ys[:1], pad, axis=0)])

  accumulate = _make_accumulate(loss_fn, mesh)
  acc = replicate(mesh, jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32),
                                               params))
  params = replicate(mesh, params)
  for b in range(nb):
    sl = slice(b * bs, (b + 1) * bs)
    acc = accumulate(acc, params, *(shard_rows(mesh, a[sl]) for a in (xs, ys, w)))
  if mesh is not None:
    acc = jax.tree_util.tree_map(jnp.asarray, to_host(acc))
  G = jax.tree_util.tree_map(lambda a: a / n, acc)
  norm = float(tree_norm(G))
  if normalize:
    G = jax.tree_util.tree_map(lambda a: a / (norm + eps), G)
  G = jax.block_until_ready(G)
  return GuidanceCache(G=G, count=int(n), class_filter=class_filter, normalized=bool(normalize),
                       norm=norm, classes=tuple(int(c) for c in np.unique(y[rows])),
                       build_seconds=time.perf_counter() - t0)


def _flatten(tree: Any) -> tuple[list[str], list[np.ndarray]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(k) for k, _ in flat], [np.asarray(v) for _, v in flat]


def save_cache(path: str | os.PathLike, cache: GuidanceCache,
               meta: dict[str, Any] | None = None) -> None:
  """Writes the cache atomically to `path` (.npz): leaves, their key paths and a JSON meta.

  `meta` should name the classifier checkpoint G came from (directory and step).
  """
  keys, leaves = _flatten(jax.device_get(cache.G))
  info = {"count": cache.count, "class_filter": cache.class_filter,
          "normalized": cache.normalized, "norm": cache.norm, "classes": list(cache.classes),
          "build_seconds": cache.build_seconds, "meta": meta or {}}
  arrays = {f"leaf_{i:04d}": v for i, v in enumerate(leaves)}
  tio.write_npz(path, keys=np.asarray(keys, dtype=np.str_),
                info=np.asarray(json.dumps(info, default=_to_json)), **arrays)


def _to_json(o: Any) -> Any:
  if hasattr(o, "__array__"):
    return np.asarray(o).tolist()
  raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")


def load_cache(path: str | os.PathLike, params_like: Any) -> tuple[GuidanceCache, dict[str, Any]]:
  """Reads a cache written by `save_cache` into the structure of `params_like` -> (cache, meta).

  Raises ValueError when the stored leaves do not match `params_like` (paths or shapes).
  """
  with np.load(path, allow_pickle=False) as z:
    keys = [str(k) for k in z["keys"]]
    info = json.loads(str(z["info"]))
    leaves = [z[f"leaf_{i:04d}"] for i in range(len(keys))]
  want_keys, want_leaves = _flatten(params_like)
  if keys != want_keys:
    raise ValueError(f"Guidance cache {path} does not match the classifier parameters: stored "
                     f"{len(keys)} leaves {keys[:3]}..., expected {len(want_keys)} "
                     f"{want_keys[:3]}...")
  for k, a, b in zip(keys, leaves, want_leaves):
    if a.shape != np.shape(b):
      raise ValueError(f"Guidance cache {path}: leaf {k} has shape {a.shape}, the classifier "
                       f"parameter has {np.shape(b)}.")
  treedef = jax.tree_util.tree_structure(params_like)
  G = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in leaves])
  cache = GuidanceCache(G=G, count=int(info["count"]), class_filter=info["class_filter"],
                        normalized=bool(info["normalized"]), norm=float(info["norm"]),
                        classes=tuple(info.get("classes", ())),
                        build_seconds=float(info.get("build_seconds", 0.0)))
  return cache, dict(info.get("meta", {}))
