"""Tests for fidelity scores: discriminative, predictive, marginal statistics."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_jax.evaluation import fidelity

T, C = 12, 3


@pytest.fixture(scope="module")
def real():
  rng = np.random.default_rng(0)
  return rng.normal(size=(150, T, C)).astype(np.float32)


def test_discriminative_identical_vs_separable(real):
  same = fidelity.discriminative_score(real, real.copy(), seed=0, repeats=5, steps=150)
  shifted = fidelity.discriminative_score(real, real + 5.0, seed=0, repeats=5, steps=150)
  assert same["repeats"] == 5 and len(same["per_repeat"]) == 5
  assert same["mean"] < 0.12, same
  assert shifted["mean"] > 0.45, shifted
  assert 0.0 <= same["std"] <= 0.5
  again = fidelity.discriminative_score(real, real + 5.0, seed=0, repeats=5, steps=150)
  assert again["per_repeat"] == shifted["per_repeat"]  # seeded


def test_predictive_deterministic_beats_noise():
  rng = np.random.default_rng(1)
  t = np.arange(T)[None, :, None]
  phase = rng.uniform(0, 6, size=(200, 1, 1))
  det = (np.sin(t / 2.0 + phase) + 0.05 * rng.normal(size=(200, T, C))).astype(np.float32)
  noise = rng.normal(size=(200, T, C)).astype(np.float32)
  noise[0, 3, -1] = np.nan  # a missing target is ignored, not propagated
  d = fidelity.predictive_score(det[:150], det[150:], seed=0, repeats=2, steps=150)
  n = fidelity.predictive_score(noise[:150], noise[150:], seed=0, repeats=2, steps=150)
  assert np.isfinite(n["mean"]) and np.isfinite(d["mean"])
  assert d["mean"] < 0.5 * n["mean"], (d, n)


def test_marginal_stats_closed_form():
  rng = np.random.default_rng(2)
  # AR(1) series with phi = 0.8 in channel 0, white noise in channel 1.
  n, t = 400, 60
  e = rng.normal(size=(n, t))
  ar = np.zeros((n, t))
  for i in range(1, t):
    ar[:, i] = 0.8 * ar[:, i - 1] + e[:, i]
  real = np.stack([ar, rng.normal(size=(n, t))], axis=-1)
  syn = 2.0 * real + 1.0
  m = fidelity.marginal_stats(real, syn)
  assert m["real_acf1"][0] == pytest.approx(0.8, abs=0.06)
  assert m["real_acf1"][1] == pytest.approx(0.0, abs=0.03)
  np.testing.assert_allclose(m["acf_diff"], 0.0, atol=1e-9)  # affine maps keep the acf
  np.testing.assert_allclose(m["std_rel_diff"], 1.0, rtol=1e-9)
  np.testing.assert_allclose(np.array(m["syn_mean"]), 2.0 * np.array(m["real_mean"]) + 1.0,
                             rtol=1e-9)
  mask = np.ones(real.shape, bool)
  mask[:, ::3, 1] = False
  masked = real.copy()
  masked[:, ::3, 1] = 1e6  # masked-out garbage must not count
  m2 = fidelity.marginal_stats(masked, real, mask=mask)
  assert abs(m2["real_mean"][1]) < 0.1
  with pytest.raises(ValueError, match="differ in C"):
    fidelity.marginal_stats(real, real[..., :1])


def test_acf1_unbiased_by_missing_values():
  # AR(1), phi = 0.7, T = 24 (the simulator's length); 40% of values missing at random. The
  # pairwise estimator on the gappy series must agree with the complete series; dividing by the
  # variance of all observed values would give about 0.6 x the complete value.
  rng = np.random.default_rng(5)
  n, t, phi = 3000, 24, 0.7
  x = np.zeros((n, t, 1))
  x[:, 0, 0] = rng.normal(size=n) / np.sqrt(1 - phi ** 2)
  for i in range(1, t):
    x[:, i, 0] = phi * x[:, i - 1, 0] + rng.normal(size=n)
  mask = rng.random(x.shape) >= 0.4
  m = fidelity.marginal_stats(x, x, mask=mask)
  full = m["syn_acf1"][0]
  assert 0.55 < full < 0.7, full  # mean removal over 24 steps lowers it a little below phi
  assert m["real_acf1"][0] == pytest.approx(full, abs=0.03)
  assert m["real_std"][0] == pytest.approx(m["syn_std"][0], rel=0.02)


def test_bad_inputs(real):
  with pytest.raises(ValueError, match="repeats"):
    fidelity.discriminative_score(real, real, seed=0, repeats=0)
  with pytest.raises(ValueError, match="differ in T or C"):
    fidelity.discriminative_score(real, real[:, :5], seed=0)
