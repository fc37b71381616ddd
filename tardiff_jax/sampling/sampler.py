"""Samplers as ONE `jax.lax.scan` over precomputed per-step arrays, with a guidance hook.

Layout (after google/hackable_diffusion): `plan.sampling_plan` precomputes per-step arrays
(index, t, t_prev, alpha-bars, sigma); `predictors.make_predictor` composes the eps predictor
(model call, classifier-free guidance, x0 calibration); `steppers.make_stepper` is the update
(DDIM, DDPM, DDIM with the analytic variance); the guidance hook (`plan.GuidanceFn`) adds a mean
shift inside the same step. `make_sampler_parts` assembles the initial state and the scan step
`(x_t, StepPlan row) -> (x_{t_prev}, x0_hat | None)`; `make_sampler` scans it. Unguided,
classifier-free, classifier and influence guidance share this one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from tardiff_jax.diffusion import gaussian
from tardiff_jax.diffusion.schedules import Schedule
from tardiff_jax.sampling.plan import GuidanceFn, SamplerConfig, StepInfo, StepPlan, sampling_plan
from tardiff_jax.sampling.predictors import make_predictor, x0_predictor
from tardiff_jax.sampling.steppers import make_stepper


class SamplerParts(NamedTuple):
  """The pieces `make_sampler` scans: `plan`, `init(key, shape) -> (x_T, step_key)` and
  `stepper(params, gparams, y, step_key) -> ((x_t, StepPlan row) -> (x_prev, x0_hat|None))`."""
  plan: StepPlan
  init: Callable[[jax.Array, tuple[int, ...]], tuple[Array, jax.Array]]
  stepper: Callable[..., Callable[[Array, StepPlan], tuple[Array, Array | None]]]


def make_sampler_parts(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                       num_classes: int, guidance_fn: GuidanceFn | None = None,
                       return_trajectory: bool = False, gamma: Any = None,
                       calibration: Any = None) -> SamplerParts:
  """Builds the plan, the initial state and the scan step (see `make_sampler`)."""
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  if config.calibrate_x0 != (calibration is not None):
    raise ValueError("sampling.calibrate_x0=True needs calibration (see "
                     "fitting.estimate_calibration), and calibration is only used with "
                     "calibrate_x0=True.")
  plan = sampling_plan(schedule, config)
  clip = config.clip
  update = make_stepper(schedule, plan, config, int(num_classes), gamma)
  eps_fn = make_predictor(apply_fn, schedule, config, num_classes, calibration)
  x0_of = x0_predictor(eps_fn, schedule, clip)

  def init(key, shape):
    k_init, k_steps = jax.random.split(key)
    return jax.random.normal(k_init, shape, jnp.float32), k_steps

  def stepper(params, gparams, y, step_key):
    def step(x_t, row: StepPlan):
      eps = eps_fn(params, x_t, row.t, y, row.index)
      x0_hat = gaussian.x0_from_eps(schedule, x_t, row.t, eps)
      if clip is not None:
        x0_hat = jnp.clip(x0_hat, -clip, clip)
      shift = None
      if guidance_fn is not None:
        info = StepInfo(index=row.index, t=row.t, t_prev=row.t_prev, alpha_bar=row.alpha_bar,
                        alpha_bar_prev=row.alpha_bar_prev, sigma=row.sigma,
                        x0_fn=lambda x: x0_of(params, x, row.t, y, row.index))
        shift = guidance_fn(gparams, x_t, x0_hat, y, info)
        if shift.shape != x_t.shape:
          raise ValueError(f"guidance_fn returned shape {shift.shape}, expected {x_t.shape}.")
        shift = shift.astype(x_t.dtype)
      noise = None
      if update.draws_noise:
        noise = jax.random.normal(jax.random.fold_in(step_key, row.index), x_t.shape, x_t.dtype)
      x_prev = update.update(x_t, eps, row, y, shift, noise)
      return x_prev, (x0_hat if return_trajectory else None)
    return step

  return SamplerParts(plan=plan, init=init, stepper=stepper)


def make_sampler(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                 num_classes: int, guidance_fn: GuidanceFn | None = None,
                 return_trajectory: bool = False, gamma: Any = None,
                 calibration: Any = None) -> Callable[..., Any]:
  """Returns the pure `sample(params, gparams, key, y, shape)`; wrap it in
  `jax.jit(sample, static_argnames="shape")`.

  apply_fn(params, x[B,T,C], t[B] int32, y[B] int32) -> eps[B,T,C]. shape is (B, T, C) or (T, C)
  (B = len(y)). Returns samples[B,T,C], or (samples, x0_hat trajectory[S,B,T,C]) with
  return_trajectory. guidance_fn(gparams, x_t, x0_hat, y, StepInfo) -> shift[B,T,C] is added to
  the reverse-step mean; gparams is passed through untouched (None when unused). x_T comes from
  split(key)[0], step i's noise from fold_in(split(key)[1], i). With
  `config.variance == "analytic"`, `gamma` ([S, K, C, T] from `fitting.estimate_gamma`, or
  broadcastable to [S, K, C] for white noise) sets each step's extra noise variance per class,
  channel and time frequency. With `config.calibrate_x0`, `calibration` ((slope, intercept) from
  `fitting.estimate_calibration`) recalibrates x0_hat at each step.
  """
  parts = make_sampler_parts(apply_fn, schedule, config, num_classes, guidance_fn,
                             return_trajectory, gamma, calibration)

  def sample(params, gparams, key, y: Int[Array, " B"], shape: tuple[int, ...]):
    y = jnp.asarray(y, jnp.int32)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
      shape = (y.shape[0],) + shape
    if len(shape) != 3 or shape[0] != y.shape[0]:
      raise ValueError(f"shape must be (B, T, C) or (T, C) with B = len(y) = {y.shape[0]}, "
                       f"got {shape}.")
    x_T, step_key = parts.init(key, shape)
    x0, traj = jax.lax.scan(parts.stepper(params, gparams, y, step_key), x_T, parts.plan)
    return (x0, traj) if return_trajectory else x0

  return sample
