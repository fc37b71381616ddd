"""Binary classification metrics with scikit-learn (one-vs-rest for a target class of a
multi-class task: the callers binarise the labels).

- AUROC: `sklearn.metrics.roc_auc_score`, positive class = label 1.
- AUPRC: *average precision* (`sklearn.metrics.average_precision_score`), i.e. the step-wise sum
  `sum_n (R_n - R_{n-1}) P_n` over thresholds, positive class = label 1. It is not the
  trapezoidal area under the PR curve (which is optimistic); it is what the TarDiff paper and
  the reference code report as AUPRC.
- Minority-class F1: F1 of the *minority class*, the less frequent class of the TRAINING labels
  (callers pass it as `minority_class`; when omitted it is the less frequent class of the labels
  at hand, ties broken towards class 1). "Predicted positive" means `p >= threshold`, where `p`
  is the probability of class 1; when the minority class is 0, its F1 counts `p < threshold` as
  a prediction of class 0. The threshold is chosen on VALIDATION (`best_f1_threshold`) and then
  applied to test; F1 at the fixed threshold 0.5 is reported too.

Degenerate inputs (one class only in `y_true`) give NaN for AUROC/AUPRC instead of an exception.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def minority_class(y: np.ndarray) -> int:
  """The less frequent of classes {0, 1} in `y` (ties -> 1, the usual positive class)."""
  y = _labels(y)
  n1 = int(y.sum())
  n0 = int(y.size - n1)
  return 0 if n0 < n1 else 1


def minority_f1(y_true: np.ndarray, p: np.ndarray, threshold: float,
                minority: int | None = None) -> float:
  """F1 of the minority class when predicting class 1 iff `p >= threshold`. y_true: [N], p: [N]."""
  y_true, p = _labels(y_true), _probs(p, y_true)
  minority = minority_class(y_true) if minority is None else _check_class(minority)
  pred = (p >= threshold).astype(np.int32)
  return float(skm.f1_score(y_true, pred, pos_label=minority, zero_division=0.0))


def best_f1_threshold(y_val: np.ndarray, p_val: np.ndarray, minority: int | None = None) -> float:
  """The threshold maximising minority-class F1 on VALIDATION data. y_val: [N], p_val: [N].

  Candidates are the distinct values of `p_val` (the rule is `p >= threshold`), so every
  achievable split of the validation set is tried; among ties the lowest threshold wins. Exact
  and O(N log N) via cumulative counts over the sorted scores.
  """
  y, p = _labels(y_val), _probs(p_val, y_val)
  if y.size == 0:
    raise ValueError("best_f1_threshold: empty validation set.")
  minority = minority_class(y) if minority is None else _check_class(minority)
  order = np.argsort(-p, kind="stable")
  ps, ys = p[order], y[order]
  # Index of the last element of each run of equal scores: predicting "1" for ps >= ps[i].
  last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
  tp1 = np.cumsum(ys)[last]  # Class-1 examples predicted 1.
  n_pred1 = last + 1  # Examples predicted 1.
  n1 = int(y.sum())
  n0 = int(y.size - n1)
  if minority == 1:
    tp, fp, fn = tp1, n_pred1 - tp1, n1 - tp1
  else:  # Class 0 is predicted below the threshold.
    fp1 = n_pred1 - tp1  # Class-0 examples predicted 1 (= class-0 false negatives).
    tp = n0 - fp1
    fp = n1 - tp1  # Class-1 examples predicted 0.
    fn = fp1
  denom = 2 * tp + fp + fn
  f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
  best = int(np.flatnonzero(f1 == f1.max())[-1])  # Last run = lowest threshold among ties.
  return float(ps[last[best]])


def binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float | None = None,
                   minority: int | None = None) -> dict[str, float]:
  """AUROC, AUPRC (average precision, step-wise) and minority-class F1.

  Args:
    y_true: int[N] labels in {0, 1}.
    p: float[N] predicted probability of class 1.
    threshold: decision threshold for `minority_f1` (pass the one chosen on validation with
      `best_f1_threshold`); None means 0.5.
    minority: the minority class (of the training data); None = the less frequent class of
      `y_true`.
  Returns:
    {"auroc", "auprc", "minority_f1", "minority_f1_at_0.5", "threshold"} as floats.
  """
  y, p = _labels(y_true), _probs(p, y_true)
  minority = minority_class(y) if minority is None else _check_class(minority)
  thr = 0.5 if threshold is None else float(threshold)
  if not math.isfinite(thr):
    raise ValueError(f"binary_metrics: threshold must be finite; got {threshold}.")
  both = 0 < int(y.sum()) < y.size
  return {
      "auroc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
      "auprc": float(skm.average_precision_score(y, p)) if both else float("nan"),
      "minority_f1": minority_f1(y, p, thr, minority),
      "minority_f1_at_0.5": minority_f1(y, p, 0.5, minority),
      "threshold": thr,
  }


def _labels(y) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"labels must have shape [N]; got {y.shape}.")
  if y.size and not np.isin(y, (0, 1)).all():
    raise ValueError(f"binary metrics need labels in {{0, 1}}; got values {np.unique(y)[:10]}.")
  return y.astype(np.int32)


def _probs(p, y) -> np.ndarray:
  p = np.asarray(p, dtype=np.float64)
  if p.shape != np.shape(y):
    raise ValueError(f"scores shape {p.shape} differs from labels shape {np.shape(y)}.")
  if not np.isfinite(p).all():
    raise ValueError("scores contain NaN or inf.")
  return p


def _check_class(c) -> int:
  c = int(c)
  if c not in (0, 1):
    raise ValueError(f"minority class must be 0 or 1; got {c}.")
  return c


def bootstrap_intervals(y_true: np.ndarray, p: np.ndarray, losses: np.ndarray | None = None,
                        resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, dict[str, float]]:
  """Point estimates and percentile bootstrap intervals of AUROC, AUPRC (and the mean of
  per-example `losses`, if given) over resamples of the examples with replacement.

  Resamples that draw a single class are redrawn (AUROC and AUPRC need both). Returns
  {"auroc": {"value", "lo", "hi"}, "auprc": {...}, "loss": {...}}; deterministic in `seed`.
  """
  y, p = _labels(y_true), _probs(p, y_true)
  if not 0 < int(y.sum()) < y.size:
    raise ValueError("bootstrap_intervals: the labels need both classes.")
  if resamples < 1 or not 0 < level < 1:
    raise ValueError(f"bootstrap_intervals: resamples >= 1 and level in (0, 1); got "
                     f"{resamples}, {level}.")
  rng = np.random.default_rng(seed)
  stats: dict[str, list[float]] = {"auroc": [], "auprc": []}
  if losses is not None:
    losses = np.asarray(losses, np.float64)
    stats["loss"] = []
  while len(stats["auroc"]) < resamples:
    i = rng.integers(0, y.size, y.size)
    if not 0 < int(y[i].sum()) < y.size:
      continue
    stats["auroc"].append(skm.roc_auc_score(y[i], p[i]))
    stats["auprc"].append(skm.average_precision_score(y[i], p[i]))
    if losses is not None:
      stats["loss"].append(float(losses[i].mean()))
  point = {"auroc": float(skm.roc_auc_score(y, p)),
           "auprc": float(skm.average_precision_score(y, p))}
  if losses is not None:
    point["loss"] = float(losses.mean())
  q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
  return {k: {"value": point[k], "lo": float(np.percentile(v, q[0])),
              "hi": float(np.percentile(v, q[1]))} for k, v in stats.items()}
