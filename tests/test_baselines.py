"""Tests for the non-diffusion baselines (random oversampling, augmentation)."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_jax.evaluation import baselines


def _data(n=40, t=24, c=3, seed=0):
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % 4 == 0).astype(np.int32)  # 25% class 1
  tt = np.arange(t)[None, :, None]
  x = np.sin(tt / 3.0 + rng.normal(size=(n, 1, c))) + 5.0 * y[:, None, None]
  x = x + 0.1 * rng.normal(size=(n, t, c))
  return x.astype(np.float32), y


def test_oversample_counts_and_membership():
  x, y = _data()
  xs, ys = baselines.random_oversample(x, y, {0: 7, 1: 30}, seed=1)
  assert xs.shape == (37, 24, 3) and xs.dtype == np.float32
  assert np.bincount(ys).tolist() == [7, 30]
  # Every drawn series is a real series of the same class.
  for xi, yi in zip(xs, ys):
    d = np.abs(x - xi).max(axis=(1, 2))
    j = int(np.argmin(d))
    assert d[j] == 0.0 and y[j] == yi
  # Seeded: same seed same output, other seed differs.
  xs2, _ = baselines.random_oversample(x, y, [7, 30], seed=1)
  xs3, _ = baselines.random_oversample(x, y, [7, 30], seed=2)
  np.testing.assert_array_equal(xs, xs2)
  assert not np.array_equal(xs, xs3)


def test_oversample_errors():
  x, y = _data()
  with pytest.raises(ValueError, match="class 2"):
    baselines.random_oversample(x, y, {2: 3}, seed=0)
  with pytest.raises(ValueError, match=">= 0"):
    baselines.random_oversample(x, y, {1: -1}, seed=0)
  with pytest.raises(ValueError, match=r"\[N, T, C\]"):
    baselines.random_oversample(x[0], y, {1: 1}, seed=0)


def test_augment_counts_shape_and_closeness():
  x, y = _data()
  xs, ys = baselines.augment(x, y, {1: 50}, seed=0)
  assert xs.shape == (50, 24, 3) and ys.tolist() == [1] * 50
  assert np.all(np.isfinite(xs))
  # Augmented minority samples stay near the minority class (shifted by +5), and are not copies.
  assert abs(xs.mean() - x[y == 1].mean()) < 0.5
  d = np.abs(x[y == 1][None] - xs[:, None]).max(axis=(2, 3)).min(axis=1)
  assert np.all(d > 1e-4)


def test_augment_zero_strength_is_copy():
  x, y = _data()
  xs, ys = baselines.augment(x, y, {0: 5, 1: 5}, seed=3, jitter=0.0, magnitude_warp=0.0,
                             time_warp=0.0)
  for xi, yi in zip(xs, ys):
    d = np.abs(x - xi).max(axis=(1, 2))
    assert d.min() < 1e-5 and y[np.argmin(d)] == yi


def test_augment_jitter_std():
  x, y = _data(n=200)
  x0, _ = baselines.augment(x, y, {0: 400}, seed=5, jitter=0.0, magnitude_warp=0.0,
                            time_warp=0.0)
  x1, _ = baselines.augment(x, y, {0: 400}, seed=5, jitter=0.2, magnitude_warp=0.0,
                            time_warp=0.0)
  sd = np.std(x, axis=(0, 1))
  ratio = np.std(x1 - x0, axis=(0, 1)) / sd
  np.testing.assert_allclose(ratio, 0.2, rtol=0.05)


def test_augment_time_warp_is_monotone_resampling():
  # A ramp stays a non-decreasing ramp with fixed end points under time warping alone.
  t = 24
  x = np.tile(np.arange(t, dtype=np.float32)[None, :, None], (6, 1, 2))
  y = np.zeros(6, np.int32)
  xs, _ = baselines.augment(x, y, {0: 20}, seed=0, jitter=0.0, magnitude_warp=0.0,
                            time_warp=0.5)
  assert np.all(np.diff(xs, axis=1) >= -1e-4)
  np.testing.assert_allclose(xs[:, 0], 0.0, atol=1e-4)
  np.testing.assert_allclose(xs[:, -1], t - 1.0, atol=1e-4)
  assert np.abs(xs - x[:1]).max() > 0.1  # it did warp


def test_augment_affine_equivariant_and_mask():
  x, y = _data()
  a, b = np.array([2.0, 0.5, 10.0]), np.array([100.0, -3.0, 37.0])
  xs, _ = baselines.augment(x, y, {1: 10}, seed=4)
  xa, _ = baselines.augment(x * a + b, y, {1: 10}, seed=4)
  np.testing.assert_allclose(xa, xs * a + b, rtol=1e-4, atol=1e-3)
  mask = np.ones(x.shape, bool)
  mask[:, ::2, 0] = False
  xn = x.copy()
  xn[~mask] = np.nan
  xm, _ = baselines.augment(xn, y, {1: 10}, seed=4, mask=mask)
  assert np.all(np.isfinite(xm))
  with pytest.raises(ValueError, match="jitter"):
    baselines.augment(x, y, {1: 1}, seed=0, jitter=-1.0)
