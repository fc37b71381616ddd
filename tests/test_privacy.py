"""Tests for the membership-inference attack."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_jax.evaluation import privacy


def _real(seed=0, n=120, t=10, c=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, t, c)) * [1.0, 10.0, 0.1] + [0.0, 80.0, 37.0]).astype(np.float32)


def test_nearest_distances_brute_force_and_chunking():
  rng = np.random.default_rng(0)
  q, r = rng.normal(size=(37, 5)), rng.normal(size=(23, 5))
  brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1)).min(1)
  np.testing.assert_allclose(privacy.nearest_distances(q, r), brute, rtol=1e-9)
  np.testing.assert_allclose(privacy.nearest_distances(q, r, max_elements=30), brute, rtol=1e-9)


def test_copies_of_train_leak():
  train, test = _real(0), _real(1)
  auc = privacy.membership_inference_auroc(train, test, train.copy())
  assert auc > 0.99
  # Copies of the test set instead: the attack points the wrong way.
  assert privacy.membership_inference_auroc(train, test, test.copy()) < 0.01


def test_independent_synthetic_is_private():
  train, test, syn = _real(0, n=300), _real(1, n=300), _real(2, n=300)
  auc = privacy.membership_inference_auroc(train, test, syn, max_elements=1000)
  assert abs(auc - 0.5) < 0.08


def test_nan_and_shape_errors():
  train, test = _real(0), _real(1)
  noisy = train.copy()
  noisy[:, ::2, 0] = np.nan
  assert 0.0 <= privacy.membership_inference_auroc(noisy, test, train) <= 1.0
  with pytest.raises(ValueError, match="T and C"):
    privacy.membership_inference_auroc(train, test[:, :5], train)
  with pytest.raises(ValueError, match="x_syn"):
    privacy.membership_inference_auroc(train, test, train[:0])
