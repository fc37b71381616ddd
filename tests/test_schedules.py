"""Noise schedules against closed forms; DDIM sub-sequences; config conversion."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest

from tardiff_jax.config import from_mapping
from tardiff_jax.diffusion import DiffusionConfig, ddim_timesteps, make_schedule


def _np(s):
  return {k: np.asarray(getattr(s, k), np.float64) for k in (
      "betas", "alphas", "alpha_bars", "alpha_bars_prev", "sqrt_alpha_bars",
      "sqrt_one_minus_alpha_bars", "posterior_variance", "posterior_log_variance_clipped",
      "posterior_mean_coef1", "posterior_mean_coef2", "sqrt_recip_alpha_bars",
      "sqrt_recipm1_alpha_bars")}


def test_ldm_linear_betas_reference():
  s = make_schedule("ldm_linear", 200, 5e-4, 0.1)
  assert s.betas.dtype == np.float32 and s.betas.shape == (200,) and s.num_timesteps == 200
  i = np.arange(200)
  expect = (math.sqrt(5e-4) + i / 199 * (math.sqrt(0.1) - math.sqrt(5e-4))) ** 2
  np.testing.assert_allclose(np.asarray(s.betas), expect, rtol=1e-6)
  assert abs(float(s.betas[0]) - 5e-4) < 1e-9 and abs(float(s.betas[-1]) - 0.1) < 1e-7


def test_linear_betas():
  s = make_schedule("linear", 10, 1e-4, 0.02)
  np.testing.assert_allclose(np.asarray(s.betas), 1e-4 + np.arange(10) / 9 * (0.02 - 1e-4),
                             rtol=1e-6)


def test_cosine_alpha_bar_closed_form():
  T, s_ = 50, 0.008
  s = make_schedule("cosine", T)
  f = lambda u: math.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2
  expect = np.array([f((t + 1) / T) / f(0) for t in range(T - 1)])
  np.testing.assert_allclose(np.asarray(s.alpha_bars)[: T - 1], expect, rtol=1e-5, atol=1e-7)
  assert float(np.max(np.asarray(s.betas))) <= 0.999 + 1e-7


def _betas64(name, T, b0, b1):
  """Independent float64 betas (closed forms) for reference values."""
  i = np.arange(T, dtype=np.float64)
  if name == "ldm_linear":
    return (math.sqrt(b0) + i / (T - 1) * (math.sqrt(b1) - math.sqrt(b0))) ** 2
  if name == "linear":
    return b0 + i / (T - 1) * (b1 - b0)
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
  return np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)


@pytest.mark.parametrize("name", ["ldm_linear", "linear", "cosine"])
def test_derived_quantities(name):
  a = _np(make_schedule(name, 30, 1e-3, 0.2))
  b64 = _betas64(name, 30, 1e-3, 0.2)
  ab64 = np.cumprod(1 - b64)
  abp64 = np.concatenate([[1.0], ab64[:-1]])
  close = lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)
  close(a["betas"], b64)
  close(a["alphas"], 1 - b64)
  close(a["alpha_bars"], ab64)
  close(a["alpha_bars_prev"], abp64)
  close(a["sqrt_alpha_bars"], np.sqrt(ab64))
  close(a["sqrt_one_minus_alpha_bars"], np.sqrt(1 - ab64))
  close(a["sqrt_recip_alpha_bars"], 1 / np.sqrt(ab64))
  close(a["sqrt_recipm1_alpha_bars"], np.sqrt(1 - ab64) / np.sqrt(ab64))
  # Posterior q(x_{t-1} | x_t, x0) by Gaussian conditioning: prior N(sqrt(abp) x0, 1 - abp),
  # likelihood N(x_t; sqrt(alpha_t) x_{t-1}, beta_t). Precisions add; means weight by precision.
  b, al, abp = b64[1:], 1 - b64[1:], abp64[1:]
  var = 1.0 / (1.0 / (1.0 - abp) + al / b)
  close(a["posterior_variance"][1:], var)
  close(a["posterior_mean_coef1"][1:], var * np.sqrt(abp) / (1 - abp))
  close(a["posterior_mean_coef2"][1:], var * np.sqrt(al) / b)
  close(a["posterior_log_variance_clipped"][1:], np.log(var))
  # t = 0: x_{t-1} is x0 itself; the log variance is clipped to t = 1's value.
  assert a["posterior_variance"][0] == 0.0 and a["posterior_mean_coef2"][0] == 0.0
  close(a["posterior_mean_coef1"][0], 1.0)
  assert a["posterior_log_variance_clipped"][0] == a["posterior_log_variance_clipped"][1]


@pytest.mark.parametrize("kw", [dict(name="nope"), dict(num_timesteps=0),
                                dict(num_timesteps=2.5), dict(beta_start=0.2, beta_end=0.1),
                                dict(beta_start=0.0), dict(beta_end=1.0)])
def test_bad_hyper_parameters(kw):
  with pytest.raises(ValueError):
    make_schedule(**kw)


def test_ddim_timesteps():
  ts = ddim_timesteps(200, 20)
  assert ts.dtype == np.int32
  np.testing.assert_array_equal(ts, np.arange(199, -1, -10))
  np.testing.assert_array_equal(ddim_timesteps(10, 10), np.arange(9, -1, -1))
  assert list(ddim_timesteps(10, 1)) == [9]
  for t, s in [(200, 7), (24, 5), (1000, 50), (7, 6)]:
    ts = ddim_timesteps(t, s)
    assert len(ts) == s and ts[0] == t - 1 and ts[-1] >= 0 and np.all(np.diff(ts) < 0)
  with pytest.raises(ValueError):
    ddim_timesteps(10, 11)
  with pytest.raises(ValueError):
    ddim_timesteps(10, 0)


def test_diffusion_config_from_mapping():
  c = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=50, beta_start=1e-4,
                                     beta_end=0.02, loss="l2"))
  d = from_mapping(DiffusionConfig, c)
  assert d == DiffusionConfig("linear", 50, 1e-4, 0.02, "l2")
  assert d.prediction == "v"  # The default target.
  assert d.make_schedule().num_timesteps == 50
  with pytest.raises(ValueError):
    DiffusionConfig(loss="huber")
  with pytest.raises(ValueError):
    DiffusionConfig(schedule="quadratic")
