"""Seeded, stratified, disjoint splits: train / val (= guidance set) / test, and val into
guidance-val (builds G) and evaluation-val (picks the guidance scale)."""

from __future__ import annotations

import numpy as np

from tardiff_jax.data.dataset import DataError, Dataset, Splits


def stratified_split_indices(
    y: np.ndarray, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Sorted int64 index arrays (train, val, test), stratified by class `y[N]`.

  Per class of size n: round(n * fraction) go to val and to test, at least one each, so that
  every split sees every class. Deterministic for a given (y, seed, fractions).
  """
  if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0
          and val_fraction + test_fraction < 1.0):
    raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in "
                     "(0, 1) with a sum below 1.")
  y = np.asarray(y)
  rng = np.random.default_rng([int(seed), 0x5EED])
  parts = ([], [], [])
  for k in np.unique(y):
    idx = np.flatnonzero(y == k)
    if idx.size < 3:
      raise DataError(f"class {int(k)} has only {idx.size} sample(s); a stratified "
                      "train/val/test split needs at least 3 per class.")
    idx = rng.permutation(idx)
    n_val = max(1, int(round(idx.size * val_fraction)))
    n_test = max(1, int(round(idx.size * test_fraction)))
    if n_val + n_test >= idx.size:
      n_val, n_test = 1, 1
    parts[1].append(idx[:n_val])
    parts[2].append(idx[n_val:n_val + n_test])
    parts[0].append(idx[n_val + n_test:])
  return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def stratified_split(ds: Dataset, seed: int, val_fraction: float = 0.1,
                     test_fraction: float = 0.1) -> Splits:
  """Splits `ds` into stratified, disjoint train / val / test Datasets (see the indices variant)."""
  tr, va, te = stratified_split_indices(ds.y, seed, val_fraction, test_fraction)
  return Splits(train=ds.subset(tr), val=ds.subset(va), test=ds.subset(te))


def split_guidance(val: Dataset, seed: int, guide_fraction: float = 0.5) -> tuple[Dataset, Dataset]:
  """Stratified split of the validation set into (guidance-val, evaluation-val).

  Per class of size n >= 2, round(n * guide_fraction) (clipped to [1, n-1]) go to guidance-val.
  """
  if not 0.0 < guide_fraction < 1.0:
    raise ValueError(f"guide_fraction={guide_fraction} must be in (0, 1).")
  rng = np.random.default_rng([int(seed), 0x6D1DE])
  guide, evaluate = [], []
  for k in np.unique(val.y):
    idx = rng.permutation(np.flatnonzero(val.y == k))
    if idx.size < 2:
      raise DataError(f"{val.name}: class {int(k)} has {idx.size} validation sample(s); splitting "
                      "into guidance-val and evaluation-val needs at least 2 per class.")
    n = min(max(1, int(round(idx.size * guide_fraction))), idx.size - 1)
    guide.append(idx[:n])
    evaluate.append(idx[n:])
  return (val.subset(np.sort(np.concatenate(guide))), val.subset(np.sort(np.concatenate(evaluate))))
