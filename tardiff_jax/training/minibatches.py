"""Host-side minibatch plans of the vmapped classifier trainer (numpy only): per-example loss
weights, each member's seeded epoch order, and the validation of per-member row subsets."""

from __future__ import annotations

import numpy as np


def example_weights(y: np.ndarray, class_weighting: bool) -> np.ndarray:
  """Per-example loss weights: 1, or N / (K * n_class) for present classes ("balanced")."""
  if not class_weighting:
    return np.ones(y.shape, np.float32)
  classes, counts = np.unique(y, return_counts=True)
  k = max(int(y.max()) + 1, 2)
  per_class = np.zeros(k, np.float64)
  per_class[classes] = y.size / (len(classes) * counts)
  return per_class[y].astype(np.float32)


def epoch_indices(seed: int, epoch: int, n: int, batch: int, steps: int,
                   epoch_size: int | None = None) -> np.ndarray:
  """The seed's minibatch indices into n rows for `epoch` -> int32[steps, B].

  The first `epoch_size` (default n) positions follow a seeded permutation of the n rows, then
  further seeded permutations when epoch_size > n; positions beyond epoch_size are padding (the
  trainer gives them weight 0) and repeat earlier indices.
  """
  epoch_size = n if epoch_size is None else int(epoch_size)
  perms = [np.random.default_rng([seed, epoch]).permutation(n)]
  r = 1
  while len(perms) * n < epoch_size:
    perms.append(np.random.default_rng([seed, epoch, r]).permutation(n))
    r += 1
  perm = np.concatenate(perms)[:epoch_size]
  pad = steps * batch - epoch_size
  if pad > 0:
    perm = np.concatenate([perm, np.resize(perm, pad)])  # Padded slots carry weight 0.
  return perm[:steps * batch].reshape(steps, batch).astype(np.int32)


def check_subsets(subsets, count: int, n: int) -> list[np.ndarray | None]:
  """Validates per-member row subsets (None = all rows for every member)."""
  if subsets is None:
    return [None] * count
  subsets = [np.asarray(sub) for sub in subsets]
  if len(subsets) != count:
    raise ValueError(f"train_classifier: got {len(subsets)} subsets for {count} seeds.")
  for i, sub in enumerate(subsets):
    if sub.ndim != 1 or sub.size == 0 or sub.dtype.kind not in "iu":
      raise ValueError(f"train_classifier: subset {i} must be a non-empty 1-D integer array.")
    if sub.min() < 0 or sub.max() >= n or np.unique(sub).size != sub.size:
      raise ValueError(f"train_classifier: subset {i} must hold distinct row indices in "
                       f"[0, {n}).")
  return [sub.astype(np.int64) for sub in subsets]
