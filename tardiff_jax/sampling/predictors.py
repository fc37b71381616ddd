"""The sampler's eps predictors: a model call, wrapped by classifier-free guidance and x0
calibration, which compose.

A predictor is `eps_fn(params, x_t[B,T,C], t, y[B], index) -> eps[B,T,C]` with scalar `t` and
plan step `index`. The sampler's step, the guidance hook's `StepInfo.x0_fn` and the offline fits
(`fitting.estimate_gamma`, `fitting.estimate_calibration`) all use the one predictor that
`make_predictor` builds, so guidance and the analytic variance see the x0_hat that the step uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from tardiff_jax.diffusion import gaussian
from tardiff_jax.diffusion.schedules import Schedule
from tardiff_jax.sampling.dct import from_freq, to_freq
from tardiff_jax.sampling.plan import SamplerConfig, StepPlan, sampling_plan

Predictor = Callable[..., Array]


class X0Calibration(NamedTuple):
  """Linear recalibration of x0_hat in the DCT basis (`fitting.estimate_calibration`): the
  sampler uses D^T (slope * D x0_hat + intercept), with D the orthonormal DCT along time
  (`dct.dct_matrix`). Both float32[S, K, C, F] (plan step, class, channel, frequency)."""
  slope: np.ndarray
  intercept: np.ndarray


def check_calibration(plan: StepPlan, calibration: Any, num_classes: int) -> X0Calibration:
  """`calibration` as float32 (slope, intercept), each [S, K, C, F] for this plan; or raises."""
  s = len(plan.t)
  slope, intercept = (np.asarray(a, np.float32) for a in calibration)
  if slope.ndim != 4 or slope.shape[:2] != (s, num_classes) or intercept.shape != slope.shape:
    raise ValueError(f"calibration must be (slope, intercept), each [S={s}, K={num_classes}, C, F],"
                     f" got {slope.shape} and {intercept.shape}.")
  if not (np.all(np.isfinite(slope)) and np.all(np.isfinite(intercept))):
    raise ValueError("calibration slope and intercept must be finite.")
  return X0Calibration(slope, intercept)


def model_predictor(apply_fn: Callable[..., Array]) -> Predictor:
  """The denoiser itself: `apply_fn(params, x[B,T,C], t[B], y[B]) -> eps` at a scalar t."""
  def eps_fn(params, x, t, y, index):
    del index
    return apply_fn(params, x, jnp.full((x.shape[0],), t, jnp.int32), y)
  return eps_fn


def with_cfg(predictor: Predictor, scale: float, num_classes: int) -> Predictor:
  """Classifier-free guidance: uncond + scale (cond - uncond), from one call of `predictor` on
  [cond; uncond] (batch 2B; label num_classes is the null label)."""
  def eps_fn(params, x, t, y, index):
    both = predictor(params, jnp.concatenate([x, x]), t,
                     jnp.concatenate([y, jnp.full_like(y, num_classes)]), index)
    cond, uncond = jnp.split(both, 2)
    return uncond + scale * (cond - uncond)
  return eps_fn


def with_calibration(predictor: Predictor, schedule: Schedule, plan: StepPlan,
                     calibration: Any, num_classes: int) -> Predictor:
  """x0_hat of `predictor` mapped through the fitted line of plan step `index`, class y,
  channel and DCT frequency; returned as the eps that gives that x0_hat."""
  cal = check_calibration(plan, calibration, num_classes)
  slope, intercept = jnp.asarray(cal.slope), jnp.asarray(cal.intercept)

  def eps_fn(params, x, t, y, index):
    eps = predictor(params, x, t, y, index)
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    k = jnp.clip(y, 0, num_classes - 1)
    z = to_freq(gaussian.x0_from_eps(schedule, x, tb, eps))
    z = slope[index][k] * z + intercept[index][k]
    return gaussian.eps_from_x0(schedule, x, tb, from_freq(z))
  return eps_fn


def make_predictor(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                   num_classes: int, calibration: Any = None) -> Predictor:
  """The sampler's predictor for `config`: the model, classifier-free guidance when
  cfg_scale != 1, then, given `calibration` ((slope, intercept) [S, K, C, F]), x0 calibration."""
  eps_fn = model_predictor(apply_fn)
  if config.cfg_scale != 1.0:
    eps_fn = with_cfg(eps_fn, config.cfg_scale, num_classes)
  if calibration is not None:
    eps_fn = with_calibration(eps_fn, schedule, sampling_plan(schedule, config), calibration,
                              num_classes)
  return eps_fn


def x0_predictor(predictor: Predictor, schedule: Schedule,
                 clip: float | None = None) -> Callable[..., Array]:
  """`x0_fn(params, x_t, t, y, index) -> x0_hat` of an eps predictor (clipped to [-clip, clip]
  when set)."""
  def x0_fn(params, x, t, y, index):
    x0 = gaussian.x0_from_eps(schedule, x, t, predictor(params, x, t, y, index))
    return x0 if clip is None else jnp.clip(x0, -clip, clip)
  return x0_fn
