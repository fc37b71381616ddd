"""Membership-inference risk of synthetic data.

Attack: a real series is called a training member when a synthetic series lies close to it.
Score = -(Euclidean distance to the nearest synthetic series), on flattened series normalised
per channel with the real-train mean/std (missing values -> 0, the train mean). Attack AUROC of
members (real train) vs non-members (real test): 0.5 = no leakage, 1.0 = synthetic copies train.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from tardiff_jax.data.dataset import check_series


def _flat_normalised(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
  z = (np.asarray(x, np.float64) - mu) / sd
  z = np.where(np.isfinite(z), z, 0.0)
  return z.reshape(len(z), -1)


def nearest_distances(queries: np.ndarray, refs: np.ndarray,
                      max_elements: int = 1 << 22) -> np.ndarray:
  """Euclidean distance of each query row to its nearest ref row. [Nq, D], [Nr, D] -> [Nq].

  Processed in query chunks so at most `max_elements` pairwise distances exist at once.
  """
  queries = np.asarray(queries, np.float64)
  refs = np.asarray(refs, np.float64)
  rn = np.sum(refs * refs, axis=1)
  rows = max(1, int(max_elements) // max(len(refs), 1))
  out = np.empty(len(queries))
  for s in range(0, len(queries), rows):
    q = queries[s:s + rows]
    d2 = np.sum(q * q, axis=1)[:, None] - 2.0 * q @ refs.T + rn[None, :]
    out[s:s + rows] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
  return out


def membership_inference_auroc(x_train_real: np.ndarray, x_test_real: np.ndarray,
                               x_syn: np.ndarray, max_elements: int = 1 << 22) -> float:
  """AUROC of the nearest-synthetic-neighbour attack (members = train, non-members = test).

  Args:
    x_train_real: float[Nm, T, C] real training series (members).
    x_test_real: float[Nn, T, C] real held-out series (non-members), same units.
    x_syn: float[Ns, T, C] synthetic series, same units.
    max_elements: bound on the pairwise-distance block held in memory.
  Returns:
    attack AUROC in [0, 1] (0.5 = private).
  """
  shapes = {name: check_series(a, what=name, allow_nan=True).shape[1:] for name, a in
            (("x_train_real", x_train_real), ("x_test_real", x_test_real), ("x_syn", x_syn))}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"T and C must agree: {shapes}.")
  xtr = np.asarray(x_train_real, np.float64)
  with np.errstate(invalid="ignore"):
    mu = np.nanmean(xtr, axis=(0, 1))
    sd = np.nanstd(xtr, axis=(0, 1))
  mu = np.where(np.isfinite(mu), mu, 0.0)
  sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
  syn = _flat_normalised(x_syn, mu, sd)
  d_mem = nearest_distances(_flat_normalised(xtr, mu, sd), syn, max_elements)
  d_non = nearest_distances(_flat_normalised(x_test_real, mu, sd), syn, max_elements)
  labels = np.concatenate([np.ones(len(d_mem)), np.zeros(len(d_non))])
  return float(roc_auc_score(labels, -np.concatenate([d_mem, d_non])))
