"""Samplers as ONE `jax.lax.scan` over precomputed per-step arrays, with a guidance hook.

Layout (after google/hackable_diffusion): `sampling_plan` precomputes per-step arrays
(index, t, t_prev, alpha-bars, sigma); `make_sampler_parts` builds the initial state and the
stepper `(x_t, StepPlan row) -> (x_{t_prev}, x0_hat | None)`; `make_sampler` scans it.
Classifier-free guidance wraps the model call; the guidance hook adds a mean shift inside the
same step, so unguided, classifier-free, classifier and influence guidance share one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from tardiff_jax.diffusion import gaussian
from tardiff_jax.diffusion.schedules import Schedule, ddim_timesteps

SAMPLERS = ("ddim", "ddpm")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Typed view of `cfg.sampling` (only the fields the sampler itself uses).

  sampler: "ddim" (num_steps steps) or "ddpm" (all T steps; num_steps ignored).
  eta: DDIM stochasticity (1 as the reference code, 0 deterministic). cfg_scale: classifier-free
  scale (1 = plain conditional, one model call per step). clip_x0: clip x0_hat to [-c, c] or None.
  """
  sampler: str = "ddim"
  num_steps: int = 20
  eta: float = 1.0
  cfg_scale: float = 1.0
  clip_x0: float | None = None

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampling.sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
    if isinstance(self.num_steps, bool) or int(self.num_steps) != self.num_steps \
        or self.num_steps < 1:
      raise ValueError(f"sampling.num_steps must be a positive integer, got {self.num_steps!r}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"sampling.eta must be in [0, 1], got {self.eta}.")
    if not np.isfinite(self.cfg_scale):
      raise ValueError(f"sampling.cfg_scale must be finite, got {self.cfg_scale}.")
    if self.clip_x0 is not None and not self.clip_x0 > 0:
      raise ValueError(f"sampling.clip_x0 must be > 0 or None, got {self.clip_x0}.")

  @classmethod
  def from_config(cls, section: Any) -> SamplerConfig:
    """From `cfg.sampling`; clip_x0 <= 0 or missing means no clipping. Other fields are ignored."""
    get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
    d = cls()
    clip = get("clip_x0", None)
    return cls(sampler=str(get("sampler", d.sampler)), num_steps=int(get("num_steps", d.num_steps)),
               eta=float(get("eta", d.eta)), cfg_scale=float(get("cfg_scale", d.cfg_scale)),
               clip_x0=float(clip) if clip is not None and clip > 0 else None)


class StepPlan(NamedTuple):
  """Per-step arrays scanned over, each [S], in sampling order (noisiest first)."""
  index: Int[Array, " S"]
  t: Int[Array, " S"]
  t_prev: Int[Array, " S"]  # -1 at the last step (clean data)
  alpha_bar: Float[Array, " S"]
  alpha_bar_prev: Float[Array, " S"]
  sigma: Float[Array, " S"]  # std of the noise added at this step


class StepInfo(NamedTuple):
  """What a guidance function sees at one step (scalars of the current row of `StepPlan`).

  x0_fn maps x_t[B,T,C] to x0_hat (same model call, cfg included), so guidance can differentiate
  through the denoiser.
  """
  index: Array
  t: Array
  t_prev: Array
  alpha_bar: Array
  alpha_bar_prev: Array
  sigma: Array
  x0_fn: Callable[[Array], Array]


GuidanceFn = Callable[[Any, Array, Array, Array, StepInfo], Array]


def sampling_plan(schedule: Schedule, config: SamplerConfig) -> StepPlan:
  """Per-step arrays (numpy, computed on the host in float64): DDIM uses
  `ddim_timesteps(T, S)`, DDPM every t = T-1..0. Needs a concrete (not traced) schedule."""
  n = schedule.num_timesteps
  if config.sampler == "ddim":
    ts = ddim_timesteps(n, config.num_steps)
  else:
    ts = np.arange(n - 1, -1, -1, dtype=np.int32)
  ts_prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
  abs_ = np.asarray(schedule.alpha_bars, np.float64)
  ab = abs_[ts]
  ab_prev = np.where(ts_prev >= 0, abs_[np.maximum(ts_prev, 0)], 1.0)
  if config.sampler == "ddim":  # Same formula as gaussian.ddim_sigma.
    sigma = config.eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
  else:
    logvar = np.asarray(schedule.posterior_log_variance_clipped, np.float64)[ts]
    sigma = np.where(ts > 0, np.exp(0.5 * logvar), 0.0)
  return StepPlan(index=np.arange(len(ts), dtype=np.int32), t=ts, t_prev=ts_prev,
                  alpha_bar=ab.astype(np.float32), alpha_bar_prev=ab_prev.astype(np.float32),
                  sigma=sigma.astype(np.float32))


class SamplerParts(NamedTuple):
  """The pieces `make_sampler` scans: `plan`, `init(key, shape) -> (x_T, step_key)` and
  `stepper(params, gparams, y, step_key) -> ((x_t, StepPlan row) -> (x_prev, x0_hat|None))`."""
  plan: StepPlan
  init: Callable[[jax.Array, tuple[int, ...]], tuple[Array, jax.Array]]
  stepper: Callable[..., Callable[[Array, StepPlan], tuple[Array, Array | None]]]


def make_sampler_parts(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                       num_classes: int, guidance_fn: GuidanceFn | None = None,
                       return_trajectory: bool = False) -> SamplerParts:
  """Builds the plan, the initial state and the stepper (see `make_sampler`)."""
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  plan = sampling_plan(schedule, config)
  cfg_scale, clip, eta = config.cfg_scale, config.clip_x0, config.eta
  draw_noise = not (config.sampler == "ddim" and eta == 0.0)

  def eps_fn(params, x, t, y):
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    if cfg_scale == 1.0:
      return apply_fn(params, x, tb, y)
    # One model call on [cond; uncond] (batch 2B), label num_classes = the null label.
    both = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                    jnp.concatenate([y, jnp.full_like(y, num_classes)]))
    cond, uncond = jnp.split(both, 2)
    return uncond + cfg_scale * (cond - uncond)

  def init(key, shape):
    k_init, k_steps = jax.random.split(key)
    return jax.random.normal(k_init, shape, jnp.float32), k_steps

  def stepper(params, gparams, y, step_key):
    def step(x_t, row: StepPlan):
      eps = eps_fn(params, x_t, row.t, y)
      x0_hat = gaussian.x0_from_eps(schedule, x_t, row.t, eps)
      if clip is not None:
        x0_hat = jnp.clip(x0_hat, -clip, clip)
      shift = None
      if guidance_fn is not None:
        def x0_fn(x):
          x0 = gaussian.x0_from_eps(schedule, x, row.t, eps_fn(params, x, row.t, y))
          return x0 if clip is None else jnp.clip(x0, -clip, clip)
        info = StepInfo(index=row.index, t=row.t, t_prev=row.t_prev, alpha_bar=row.alpha_bar,
                        alpha_bar_prev=row.alpha_bar_prev, sigma=row.sigma, x0_fn=x0_fn)
        shift = guidance_fn(gparams, x_t, x0_hat, y, info)
        if shift.shape != x_t.shape:
          raise ValueError(f"guidance_fn returned shape {shift.shape}, expected {x_t.shape}.")
        shift = shift.astype(x_t.dtype)
      noise = None
      if draw_noise:
        noise = jax.random.normal(jax.random.fold_in(step_key, row.index), x_t.shape, x_t.dtype)
      if config.sampler == "ddim":
        x_prev = gaussian.ddim_step(schedule, x_t, row.t, row.t_prev, eps, noise, eta=eta,
                                    mean_shift=shift, clip_x0=clip)
      else:
        x_prev = gaussian.ddpm_step(schedule, x_t, row.t, eps, noise, mean_shift=shift,
                                    clip_x0=clip)
      return x_prev, (x0_hat if return_trajectory else None)
    return step

  return SamplerParts(plan=plan, init=init, stepper=stepper)


def make_sampler(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                 num_classes: int, guidance_fn: GuidanceFn | None = None,
                 return_trajectory: bool = False) -> Callable[..., Any]:
  """Returns the pure `sample(params, gparams, key, y, shape)`; wrap it in
  `jax.jit(sample, static_argnames="shape")`.

  apply_fn(params, x[B,T,C], t[B] int32, y[B] int32) -> eps[B,T,C]. shape is (B, T, C) or (T, C)
  (B = len(y)). Returns samples[B,T,C], or (samples, x0_hat trajectory[S,B,T,C]) with
  return_trajectory. guidance_fn(gparams, x_t, x0_hat, y, StepInfo) -> shift[B,T,C] is added to
  the reverse-step mean; gparams is passed through untouched (None when unused). x_T comes from
  split(key)[0], step i's noise from fold_in(split(key)[1], i).
  """
  parts = make_sampler_parts(apply_fn, schedule, config, num_classes, guidance_fn,
                             return_trajectory)

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
