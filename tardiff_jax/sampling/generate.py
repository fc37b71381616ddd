"""Batched generation with one compiled shape and per-class counts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from tardiff_jax.parallel.sharding import to_host
from tardiff_jax.training.progress import Progress


def class_counts(train_counts: Sequence[int], mode: str = "match",
                 total: int | None = None) -> np.ndarray:
  """Samples to generate per class, int64[K].

  "match": the training class distribution (the counts themselves, or scaled to `total` with
  largest-remainder rounding); "balanced": `total` (default: the training total) split evenly,
  remainder to the lowest classes; "n0,n1,...": explicit counts, one per class (`total`, if
  given, must equal their sum).
  """
  tc = np.asarray(train_counts)
  if tc.ndim != 1 or tc.size < 1 or np.any(tc < 0) or not np.all(tc == np.round(tc)):
    raise ValueError(f"train_counts must be non-negative integers, one per class, got {tc}.")
  tc = tc.astype(np.int64)
  k = tc.size
  if total is not None and (int(total) != total or total < 0):
    raise ValueError(f"total must be a non-negative integer, got {total!r}.")
  if mode == "match":
    if total is None or total == tc.sum():
      return tc.copy()
    if tc.sum() == 0:
      raise ValueError("mode 'match' needs at least one training example.")
    exact = tc * (int(total) / tc.sum())
    out = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[:int(total) - out.sum()]] += 1
    return out
  if mode == "balanced":
    n = int(tc.sum() if total is None else total)
    out = np.full(k, n // k, np.int64)
    out[: n % k] += 1
    return out
  try:
    out = np.asarray([int(s) for s in str(mode).split(",")], np.int64)
  except ValueError:
    raise ValueError(f"counts mode must be 'match', 'balanced' or 'n0,n1,...' integers, "
                     f"got {mode!r}.") from None
  if out.size != k:
    raise ValueError(f"counts {mode!r} gives {out.size} classes, the data has {k}.")
  if np.any(out < 0):
    raise ValueError(f"counts must be non-negative, got {mode!r}.")
  if total is not None and out.sum() != total:
    raise ValueError(f"counts {mode!r} sum to {out.sum()}, not total={total}.")
  return out


def generate(sample_fn_jitted: Callable[..., Any], params, gparams, key: jax.Array,
             counts: Sequence[int], shape_tc: tuple[int, int], batch_size: int,
             progress: bool = True,
             place_fn: Callable[[np.ndarray], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Draws counts[k] samples of each class k in fixed-size batches: x float32[N,T,C], y int32[N].

  Labels are class-sorted (0s first). The last batch is padded (label 0) so the sampler compiles
  once; padding is dropped. Batch b uses key fold_in(key, b). `sample_fn_jitted(params, gparams,
  key, y[B], shape)` is e.g. `jax.jit(make_sampler(...), static_argnames="shape")`; a tuple
  result (trajectory) keeps its first element. `place_fn` puts each label batch on devices
  (e.g. sharded; see `tardiff_jax.parallel.generate_sharded`).
  """
  counts = np.asarray(counts, np.int64)
  if counts.ndim != 1 or np.any(counts < 0):
    raise ValueError(f"counts must be non-negative, one per class, got {counts}.")
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  t_len, c_len = (int(s) for s in shape_tc)
  labels = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
  n = labels.size
  xs = np.empty((n, t_len, c_len), np.float32)
  num_batches = math.ceil(n / batch_size)
  prog = Progress("generate", total=n, unit="samples", quiet=not progress)
  t0 = time.perf_counter()
  for b in range(num_batches):
    lo, hi = b * batch_size, min((b + 1) * batch_size, n)
    xs[lo:hi] = draw_batch(sample_fn_jitted, params, gparams, key, labels, b, batch_size,
                           (t_len, c_len), place_fn)
    prog.report(hi, elapsed_s=time.perf_counter() - t0)
  return xs, labels


def draw_batch(sample_fn_jitted: Callable[..., Any], params, gparams, key: jax.Array,
               labels: np.ndarray, b: int, batch_size: int, shape_tc: tuple[int, int],
               place_fn: Callable[[np.ndarray], Any] | None = None) -> np.ndarray:
  """Batch b of a generation over the class-sorted `labels`: the samples of labels[b * B:
  (b + 1) * B] (the last batch padded with label 0, the padding dropped), key fold_in(key, b)."""
  lo, hi = b * batch_size, min((b + 1) * batch_size, labels.size)
  yb = np.zeros((batch_size,), np.int32)
  yb[: hi - lo] = labels[lo:hi]
  yb_dev = place_fn(yb) if place_fn is not None else yb
  out = sample_fn_jitted(params, gparams, jax.random.fold_in(key, b), yb_dev,
                         (batch_size, *shape_tc))
  if isinstance(out, tuple):
    out = out[0]
  return to_host(out)[: hi - lo]
