"""Reverse-step updates, one unit each: DDIM (the reference code's sampler), ancestral DDPM, and
DDIM with Analytic-DPM's variance shaped per class, channel and time frequency.

A stepper is `update(x_t, eps, row, y, shift, noise) -> x_{t_prev}` for one `StepPlan` row; the
sampler draws `noise` ~ N(0, I) for it when `draws_noise`, and `shift` (the guidance hook's
mean shift) may be None.
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
from tardiff_jax.sampling.plan import SamplerConfig, StepPlan


class Stepper(NamedTuple):
  """`update(x_t, eps, row, y, shift, noise) -> x_prev`; `draws_noise`: whether it uses noise."""
  update: Callable[..., Array]
  draws_noise: bool


def ddim_stepper(schedule: Schedule, eta: float, clip: float | None = None) -> Stepper:
  """DDIM (Song et al. 2021, Eq. 12) with stochasticity eta; eta = 0 draws no noise."""
  def update(x_t, eps, row, y, shift, noise):
    del y
    return gaussian.ddim_step(schedule, x_t, row.t, row.t_prev, eps, noise, eta=eta,
                              mean_shift=shift, clip_x0=clip)
  return Stepper(update, draws_noise=eta != 0.0)


def ddpm_stepper(schedule: Schedule, clip: float | None = None) -> Stepper:
  """Ancestral DDPM with the posterior variance (every timestep; no noise at t = 0)."""
  def update(x_t, eps, row, y, shift, noise):
    del y
    return gaussian.ddpm_step(schedule, x_t, row.t, eps, noise, mean_shift=shift, clip_x0=clip)
  return Stepper(update, draws_noise=True)


def analytic_extra(plan: StepPlan, gamma: Any, num_classes: int) -> np.ndarray:
  """float32[S, K, C', F'] extra noise variance per step, class, channel and time frequency
  (C' = C or 1; F' = T or 1 = white) from gamma broadcastable to that shape: [S], [S, K, C]
  (white per channel) or [S, K, C, F] (per DCT frequency, as `estimate_gamma` returns)."""
  g = np.asarray(gamma, np.float64)
  s = len(plan.t)
  if g.ndim == 1:
    g = g[:, None, None]
  if g.ndim == 3:
    g = g[..., None]
  if g.ndim != 4 or g.shape[0] != s or g.shape[1] not in (1, num_classes):
    raise ValueError(f"gamma must have shape [S={s}], [S, K={num_classes} or 1, C or 1] or "
                     f"[S, K, C, F], got {np.shape(gamma)}.")
  col = lambda a: np.asarray(a, np.float64)[:, None, None, None]
  extra = gaussian.analytic_extra_var(col(plan.alpha_bar), col(plan.alpha_bar_prev),
                                      col(plan.sigma), g)
  return np.broadcast_to(np.asarray(extra, np.float32),
                         (s, num_classes) + g.shape[2:]).copy()


def shaped_noise(noise: Array, sigma: Array, ev: Array) -> Array:
  """Noise with variance sigma^2 + ev per channel and DCT frequency. noise [B, T, C] ~ N(0, I),
  ev [B, C', F'] (F' = 1: white, else F' = T)."""
  scale = jnp.sqrt(jnp.square(sigma) + ev)  # [B, C', F']
  if ev.shape[-1] == 1:
    return jnp.swapaxes(scale, 1, 2) * noise
  t = noise.shape[1]
  if ev.shape[-1] != t:
    raise ValueError(f"gamma has {ev.shape[-1]} frequencies; the samples have T = {t}.")
  return from_freq(to_freq(noise) * scale)


def analytic_ddim_stepper(schedule: Schedule, plan: StepPlan, eta: float, gamma: Any,
                          num_classes: int, clip: float | None = None) -> Stepper:
  """The DDIM mean plus noise of variance sigma^2 + Analytic-DPM's extra term per class,
  channel and DCT frequency (`analytic_extra` from the model's `gamma`)."""
  extra = jnp.asarray(analytic_extra(plan, gamma, int(num_classes)))

  def update(x_t, eps, row, y, shift, noise):
    ev = extra[row.index][jnp.clip(y, 0, num_classes - 1)]  # [B, C', F']
    x_prev = gaussian.ddim_step(schedule, x_t, row.t, row.t_prev, eps, None, eta=eta,
                                mean_shift=shift, clip_x0=clip)
    return x_prev + shaped_noise(noise, row.sigma, ev)
  return Stepper(update, draws_noise=True)


def make_stepper(schedule: Schedule, plan: StepPlan, config: SamplerConfig, num_classes: int,
                 gamma: Any = None) -> Stepper:
  """The stepper of `config` (variance "analytic" needs the model's `gamma`)."""
  if config.variance == "analytic":
    if gamma is None:
      raise ValueError("sampling.variance='analytic' needs gamma (see fitting.estimate_gamma).")
    return analytic_ddim_stepper(schedule, plan, config.eta, gamma, num_classes, config.clip)
  if config.sampler == "ddim":
    return ddim_stepper(schedule, config.eta, config.clip)
  return ddpm_stepper(schedule, config.clip)
