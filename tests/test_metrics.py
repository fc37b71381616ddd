"""Metrics against hand-computed cases and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from tardiff_jax.evaluation import metrics


def test_hand_computed_case():
  y = np.array([0, 0, 1, 1])
  p = np.array([0.1, 0.4, 0.35, 0.8])
  m = metrics.binary_metrics(y, p)
  assert m["auroc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly.
  # Step-wise AP: ranks 0.8(+) 0.4(-) 0.35(+) 0.1(-): 0.5 * 1 + 0.5 * 2/3 (trapezoid differs).
  assert m["auprc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
  # At 0.5 only 0.8 is called positive: TP=1, FP=0, FN=1 -> F1 = 2/3.
  assert m["minority_f1_at_0.5"] == pytest.approx(2 / 3)
  assert m["minority_f1"] == pytest.approx(2 / 3) and m["threshold"] == 0.5
  # Thresholds: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> TP2 FP1 -> 0.8, 0.1 -> 2/3.
  thr = metrics.best_f1_threshold(y, p)
  assert thr == pytest.approx(0.35)
  m2 = metrics.binary_metrics(y, p, threshold=thr)
  assert m2["minority_f1"] == pytest.approx(0.8)
  assert m2["minority_f1_at_0.5"] == pytest.approx(2 / 3)


def test_minority_is_class_zero():
  y = np.array([1, 1, 1, 0])
  p = np.array([0.9, 0.6, 0.3, 0.2])
  assert metrics.minority_class(y) == 0
  # Class 0 predicted iff p < thr: 0.9 -> 2/5, 0.6 -> 2/3, 0.3 -> 1.0, 0.2 -> 0.
  thr = metrics.best_f1_threshold(y, p)
  assert thr == pytest.approx(0.3)
  assert metrics.minority_f1(y, p, thr) == pytest.approx(1.0)
  assert metrics.minority_f1(y, p, 0.6) == pytest.approx(2 / 3)
  # Forcing the minority class to 1 scores the other class.
  assert metrics.minority_f1(y, p, 0.6, minority=1) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_minority_tie_goes_to_one():
  assert metrics.minority_class(np.array([0, 1, 0, 1])) == 1
  assert metrics.minority_class(np.array([0, 1, 1])) == 0


@pytest.mark.parametrize("minority", [0, 1])
def test_best_threshold_matches_brute_force(minority):
  rng = np.random.default_rng(minority)
  y = (rng.random(200) < 0.2).astype(int)
  p = np.round(np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1), 2)  # Rounded: many ties.
  thr = metrics.best_f1_threshold(y, p, minority)
  cands = np.unique(p)
  f1s = [skm.f1_score(y, (p >= t).astype(int), pos_label=minority, zero_division=0.0)
         for t in cands]
  assert metrics.minority_f1(y, p, thr, minority) == pytest.approx(max(f1s))
  assert thr == pytest.approx(cands[np.flatnonzero(np.isclose(f1s, max(f1s)))[0]])


def test_auprc_is_average_precision_not_trapezoid():
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.1).astype(int)
  p = rng.random(300) + 0.3 * y
  m = metrics.binary_metrics(y, p)
  prec, rec, _ = skm.precision_recall_curve(y, p)
  ap = -np.sum(np.diff(rec) * prec[:-1])  # Step-wise sum, written out.
  assert m["auprc"] == pytest.approx(ap)
  assert abs(m["auprc"] - skm.auc(rec, prec)) > 1e-6


def test_single_class_gives_nan_and_bad_input_raises():
  m = metrics.binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5))
  assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
  with pytest.raises(ValueError, match="labels"):
    metrics.binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match="shape"):
    metrics.binary_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
  with pytest.raises(ValueError, match="NaN"):
    metrics.binary_metrics(np.array([0, 1]), np.array([0.1, np.nan]))


def test_bootstrap_intervals_cover_the_point_and_shrink_with_n():
  rng = np.random.default_rng(0)

  def sample(n):
    y = (rng.random(n) < 0.2).astype(int)
    return y, rng.normal(y * 1.0, 1.0)

  y, p = sample(200)
  losses = rng.random(200)
  small = metrics.bootstrap_intervals(y, p, losses, resamples=300, seed=1)
  for k in ("auroc", "auprc", "loss"):
    assert small[k]["lo"] <= small[k]["value"] <= small[k]["hi"], (k, small[k])
  assert small["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y, p))
  big = metrics.bootstrap_intervals(*sample(5000), resamples=300, seed=1)
  width = lambda r: r["auroc"]["hi"] - r["auroc"]["lo"]
  assert width(big) < 0.4 * width(small)
  assert metrics.bootstrap_intervals(y, p, resamples=50, seed=3) == metrics.bootstrap_intervals(
      y, p, resamples=50, seed=3)  # Deterministic in the seed.
  with pytest.raises(ValueError, match="both classes"):
    metrics.bootstrap_intervals(np.zeros(5, int), np.arange(5.0))
