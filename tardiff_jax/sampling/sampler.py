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
VARIANCES = ("ddim", "analytic")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Typed view of `cfg.sampling` (only the fields the sampler itself uses).

  sampler: "ddim" (num_steps steps) or "ddpm" (all T steps; num_steps ignored).
  eta: DDIM stochasticity (1 as the reference code, 0 deterministic). cfg_scale: classifier-free
  scale (1 = plain conditional, one model call per step). clip_x0: clip x0_hat to [-c, c] or None.
  variance: "ddim" (the step's own sigma, as the reference code) or "analytic" (DDIM only: adds
  Analytic-DPM's estimate of x0's posterior variance, `gaussian.analytic_extra_var`; needs the
  model's gamma, see `estimate_gamma`). Few-step ancestral DDIM otherwise under-disperses.
  calibrate_x0: recalibrate the model's x0_hat linearly per step, class, channel and DCT time
  frequency (`estimate_calibration`, fitted on training series; needs `calibration=`): a trained
  denoiser pulls a series' level towards its class mean more than E[x0 | x_t] does at high
  noise, and the samples' spread then falls short (most for a rare class).
  """
  sampler: str = "ddim"
  num_steps: int = 20
  eta: float = 1.0
  cfg_scale: float = 1.0
  clip_x0: float | None = None
  variance: str = "ddim"
  calibrate_x0: bool = False

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
    if self.variance not in VARIANCES:
      raise ValueError(f"sampling.variance must be one of {VARIANCES}, got {self.variance!r}.")
    if self.variance == "analytic" and self.sampler != "ddim":
      raise ValueError("sampling.variance='analytic' is implemented for the DDIM sampler only; "
                       "with sampling.sampler='ddpm' set sampling.variance='ddim'.")
    if not isinstance(self.calibrate_x0, (bool, np.bool_)):
      raise ValueError(f"sampling.calibrate_x0 must be a bool, got {self.calibrate_x0!r}.")

  @classmethod
  def from_config(cls, section: Any) -> SamplerConfig:
    """From `cfg.sampling`; clip_x0 <= 0 or missing means no clipping. Other fields are ignored."""
    get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
    d = cls()
    clip = get("clip_x0", None)
    return cls(sampler=str(get("sampler", d.sampler)), num_steps=int(get("num_steps", d.num_steps)),
               eta=float(get("eta", d.eta)), cfg_scale=float(get("cfg_scale", d.cfg_scale)),
               clip_x0=float(clip) if clip is not None and clip > 0 else None,
               variance=str(get("variance", d.variance)),
               calibrate_x0=bool(get("calibrate_x0", d.calibrate_x0)))


class StepPlan(NamedTuple):
  """Per-step arrays scanned over, each [S], in sampling order (noisiest first)."""
  index: Int[Array, " S"]
  t: Int[Array, " S"]
  t_prev: Int[Array, " S"]  # -1 at the last step (clean data)
  alpha_bar: Float[Array, " S"]
  alpha_bar_prev: Float[Array, " S"]
  sigma: Float[Array, " S"]  # the step's own noise std (variance="analytic" adds to it)


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


def dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix float64[n (frequency), n (time)]; row 0 is the time mean."""
  t = np.arange(n)
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (t[None, :] + 0.5) * t[:, None] / n)
  d[0] /= np.sqrt(2.0)
  return d


def _to_freq(x: Array) -> Array:
  """Series [B, T, C] -> orthonormal DCT coefficients [B, C, F] along time (`dct_matrix`)."""
  return jnp.einsum("ft,btc->bcf", jnp.asarray(dct_matrix(x.shape[1]), x.dtype), x)


def _from_freq(z: Array) -> Array:
  """The inverse of `_to_freq`: coefficients [B, C, F] -> series [B, T, C]."""
  return jnp.einsum("ft,bcf->btc", jnp.asarray(dct_matrix(z.shape[-1]), z.dtype), z)


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


def _shaped_noise(noise: Array, sigma: Array, ev: Array) -> Array:
  """Noise with variance sigma^2 + ev per channel and DCT frequency. noise [B, T, C] ~ N(0, I),
  ev [B, C', F'] (F' = 1: white, else F' = T)."""
  scale = jnp.sqrt(jnp.square(sigma) + ev)  # [B, C', F']
  if ev.shape[-1] == 1:
    return jnp.swapaxes(scale, 1, 2) * noise
  t = noise.shape[1]
  if ev.shape[-1] != t:
    raise ValueError(f"gamma has {ev.shape[-1]} frequencies; the samples have T = {t}.")
  return _from_freq(_to_freq(noise) * scale)


class X0Calibration(NamedTuple):
  """Linear recalibration of x0_hat in the DCT basis (`estimate_calibration`): the sampler uses
  D^T (slope * D x0_hat + intercept), with D the orthonormal DCT along time (`dct_matrix`).
  Both float32[S, K, C, F] (plan step, class, channel, frequency)."""
  slope: np.ndarray
  intercept: np.ndarray


def _check_calibration(plan: StepPlan, calibration: Any, num_classes: int) -> X0Calibration:
  s = len(plan.t)
  slope, intercept = (np.asarray(a, np.float32) for a in calibration)
  if slope.ndim != 4 or slope.shape[:2] != (s, num_classes) or intercept.shape != slope.shape:
    raise ValueError(f"calibration must be (slope, intercept), each [S={s}, K={num_classes}, C, F],"
                     f" got {slope.shape} and {intercept.shape}.")
  if not (np.all(np.isfinite(slope)) and np.all(np.isfinite(intercept))):
    raise ValueError("calibration slope and intercept must be finite.")
  return X0Calibration(slope, intercept)


def make_predictor(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                   num_classes: int, calibration: Any = None) -> Callable[..., Array]:
  """The sampler's eps predictor `eps_fn(params, x_t[B,T,C], t, y[B], index) -> eps[B,T,C]`:
  the model call with classifier-free guidance (one call on [cond; uncond] when cfg_scale != 1)
  and, given `calibration` ((slope, intercept) [S, K, C, F]), x0_hat recalibrated at plan step
  `index` per class (y), channel and DCT frequency. t and index are scalars."""
  cfg_scale = config.cfg_scale
  cal = None
  if calibration is not None:
    cal = _check_calibration(sampling_plan(schedule, config), calibration, num_classes)
    cal = X0Calibration(jnp.asarray(cal.slope), jnp.asarray(cal.intercept))

  def eps_fn(params, x, t, y, index):
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    if cfg_scale == 1.0:
      eps = apply_fn(params, x, tb, y)
    else:  # One model call on [cond; uncond] (batch 2B), label num_classes = the null label.
      both = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                      jnp.concatenate([y, jnp.full_like(y, num_classes)]))
      cond, uncond = jnp.split(both, 2)
      eps = uncond + cfg_scale * (cond - uncond)
    if cal is None:
      return eps
    k = jnp.clip(y, 0, num_classes - 1)
    z = _to_freq(gaussian.x0_from_eps(schedule, x, tb, eps))
    z = cal.slope[index][k] * z + cal.intercept[index][k]
    return gaussian.eps_from_x0(schedule, x, tb, _from_freq(z))

  return eps_fn


def make_sampler_parts(apply_fn: Callable[..., Array], schedule: Schedule, config: SamplerConfig,
                       num_classes: int, guidance_fn: GuidanceFn | None = None,
                       return_trajectory: bool = False, gamma: Any = None,
                       calibration: Any = None) -> SamplerParts:
  """Builds the plan, the initial state and the stepper (see `make_sampler`)."""
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  plan = sampling_plan(schedule, config)
  clip, eta = config.clip_x0, config.eta
  extra = None
  if config.variance == "analytic":
    if gamma is None:
      raise ValueError("sampling.variance='analytic' needs gamma (see estimate_gamma).")
    extra = jnp.asarray(analytic_extra(plan, gamma, int(num_classes)))
  if config.calibrate_x0 != (calibration is not None):
    raise ValueError("sampling.calibrate_x0=True needs calibration (see estimate_calibration), "
                     "and calibration is only used with calibrate_x0=True.")
  draw_noise = not (config.sampler == "ddim" and eta == 0.0 and extra is None)
  eps_fn = make_predictor(apply_fn, schedule, config, num_classes, calibration)

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
        def x0_fn(x):
          x0 = gaussian.x0_from_eps(schedule, x, row.t, eps_fn(params, x, row.t, y, row.index))
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
      if extra is not None:  # DDIM mean plus noise shaped per channel and frequency.
        ev = extra[row.index][jnp.clip(y, 0, num_classes - 1)]  # [B, C', F']
        x_prev = gaussian.ddim_step(schedule, x_t, row.t, row.t_prev, eps, None, eta=eta,
                                    mean_shift=shift, clip_x0=clip)
        x_prev = x_prev + _shaped_noise(noise, row.sigma, ev)
      elif config.sampler == "ddim":
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
                 return_trajectory: bool = False, gamma: Any = None,
                 calibration: Any = None) -> Callable[..., Any]:
  """Returns the pure `sample(params, gparams, key, y, shape)`; wrap it in
  `jax.jit(sample, static_argnames="shape")`.

  apply_fn(params, x[B,T,C], t[B] int32, y[B] int32) -> eps[B,T,C]. shape is (B, T, C) or (T, C)
  (B = len(y)). Returns samples[B,T,C], or (samples, x0_hat trajectory[S,B,T,C]) with
  return_trajectory. guidance_fn(gparams, x_t, x0_hat, y, StepInfo) -> shift[B,T,C] is added to
  the reverse-step mean; gparams is passed through untouched (None when unused). x_T comes from
  split(key)[0], step i's noise from fold_in(split(key)[1], i). With
  `config.variance == "analytic"`, `gamma` ([S, K, C, T] from `estimate_gamma`, or broadcastable
  to [S, K, C] for white noise) sets each step's extra noise variance per class, channel and
  time frequency (`analytic_extra`). With `config.calibrate_x0`, `calibration` ((slope,
  intercept) from `estimate_calibration`) recalibrates x0_hat at each step (`make_predictor`).
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


def _check_training_series(x0, y, num_classes, batch_size, draws):
  x0 = np.asarray(x0, np.float32)
  y = np.asarray(y, np.int32)
  if x0.ndim != 3 or y.shape != (x0.shape[0],) or not np.all(np.isfinite(x0)):
    raise ValueError(f"x0 must be finite [N, T, C] and y [N], got {x0.shape} and {y.shape}.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"y must be in [0, {num_classes}), got [{y.min()}, {y.max()}].")
  if int(batch_size) < 1 or int(draws) < 1:
    raise ValueError(f"batch_size and draws must be >= 1, got {batch_size}, {draws}.")
  return x0, y


def _class_sums(stats_fn: Callable[..., dict[str, Array]], params: Any, schedule: Schedule,
                config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                num_classes: int, batch_size: int, draws: int) -> dict[str, np.ndarray]:
  """Per plan step and class, sums over training series x `draws` noise draws of the DCT-domain
  statistics `stats_fn(params, z0, z_t, x_t, t, yb, index) -> {name: [B, C, F]}`, where x_t =
  q_sample(x0, t, eps), z0 = D x0 and z_t = D x_t: {name: float64[S, K, C, F]}, plus "count" [K].
  Static batch shapes (the last batch is padded with zero-weight rows); deterministic."""
  plan = sampling_plan(schedule, config)
  ts, idx = jnp.asarray(plan.t), jnp.asarray(plan.index)
  k = int(num_classes)

  @jax.jit
  def batch_sums(params, xb, yb, wb, bkey):
    def one(args):
      t, i, tkey = args
      tb = jnp.full((xb.shape[0],), t, jnp.int32)
      x_t = gaussian.q_sample(schedule, xb, tb, jax.random.normal(tkey, xb.shape, xb.dtype))
      stats = stats_fn(params, _to_freq(xb), _to_freq(x_t), x_t, t, yb, i)
      return {n: jax.ops.segment_sum(v * wb[:, None, None], yb, num_segments=k)
              for n, v in stats.items()}
    return jax.lax.map(one, (ts, idx, jax.random.split(bkey, ts.shape[0])))  # [S, K, C, F]

  n, b = len(x0), int(batch_size)
  total: dict[str, np.ndarray] = {}
  for dr in range(int(draws)):
    for i in range(0, n, b):
      xb, yb = x0[i:i + b], y[i:i + b]
      wb = np.ones(len(xb), np.float32)
      pad = b - len(xb)
      if pad:
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], np.float32)])
        yb = np.concatenate([yb, np.zeros(pad, np.int32)])
        wb = np.concatenate([wb, np.zeros(pad, np.float32)])
      bkey = jax.random.fold_in(jax.random.fold_in(key, dr), i)
      out = batch_sums(params, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(wb), bkey)
      for name, v in out.items():
        total[name] = total.get(name, 0.0) + np.asarray(v, np.float64)
  total["count"] = np.bincount(y, minlength=k).astype(np.float64) * int(draws)
  return total


def estimate_gamma(apply_fn: Callable[..., Array], params: Any, schedule: Schedule,
                   config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                   num_classes: int, batch_size: int = 256, draws: int = 1,
                   calibration: Any = None) -> np.ndarray:
  """Analytic-DPM's gamma for the sampling plan of `config`, per class, channel and time
  frequency: float32[S, K, C, T], at step s the mean over class-k series of (D eps_hat)^2 at
  channel c, frequency f, where D is the orthonormal DCT along time (`dct_matrix`; f = 0 is
  the time mean, i.e. a series' level), x_t = q_sample(x0, t_s, eps), `draws` noise draws each.

  Series of one channel have a level and slow drifts that a denoiser is unsure of together, so
  x0's posterior covariance is far from white in time; a DCT basis diagonalises it well for
  stationary series. x0[N, T, C] are training series in the model's space, filled as in
  training; eps_hat is the sampler's own predictor (`make_predictor`: true labels, the config's
  cfg_scale and, given, `calibration`). A class without series gets gamma 1 (no correction).
  Deterministic given `key`.
  """
  x0, y = _check_training_series(x0, y, num_classes, batch_size, draws)
  eps_fn = make_predictor(apply_fn, schedule, config, num_classes, calibration)

  def stats(p, z0, z_t, x_t, t, yb, index):
    return {"e2": jnp.square(_to_freq(eps_fn(p, x_t, t, yb, index)))}

  sums = _class_sums(stats, params, schedule, config, x0, y, key, num_classes, batch_size,
                     draws)
  counts = sums["count"][:, None, None]  # [K, 1, 1]
  gamma = np.where(counts > 0, sums["e2"] / np.maximum(counts, 1), 1.0)
  return gamma.astype(np.float32)


def estimate_calibration(apply_fn: Callable[..., Array], params: Any, schedule: Schedule,
                         config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                         num_classes: int, batch_size: int = 256, draws: int = 1,
                         max_slope: float = 4.0) -> X0Calibration:
  """Least-squares recalibration of the sampler's x0_hat on training series: per plan step s,
  class k, channel c and DCT frequency f, the line z0 ~ slope * z_hat + intercept that best
  predicts z0 = (D x0)[c, f] from z_hat = (D x0_hat(x_t))[c, f] over class-k series and `draws`
  noise draws (x_t = q_sample(x0, t_s, eps)).

  E[x0 | x_t] is its own best linear correction (slope 1, intercept 0); a trained denoiser is
  not. Measured on the default model over steps 2-10 of DDIM-20: level slopes (f = 0) have
  median 1.04 for class 0 and 1.10 for the rare class 1 (up to 1.26 and 2.08), i.e. it pulls a
  series' level towards the class mean too far, and the samples' between-series spread falls
  short; at higher frequencies the median slope is 0.14 (x0_hat's detail there barely predicts
  x0, so the line shrinks it and the analytic variance supplies that part as noise). The fit
  has two parameters per cell; slopes are clipped to [0, max_slope] (cells where x0_hat barely
  varies give unstable ratios; where it does not vary at all only the offset is fitted), and a
  class without series gets the identity. x0 and eps_hat
  as in `estimate_gamma` (cfg included, no calibration). Returns float32 (slope, intercept),
  each [S, K, C, F]; deterministic.
  """
  x0, y = _check_training_series(x0, y, num_classes, batch_size, draws)
  if not max_slope > 1.0:
    raise ValueError(f"max_slope must be > 1, got {max_slope}.")
  eps_fn = make_predictor(apply_fn, schedule, config, num_classes)
  # Moments are taken around each class's mean of z0 (exact, from the data): float32 sums of
  # uncentred squares would lose small variances to rounding.
  counts = np.bincount(y, minlength=num_classes).astype(np.float64)
  ref = np.zeros((num_classes, x0.shape[2], x0.shape[1]))
  np.add.at(ref, y, np.einsum("ft,ntc->ncf", dct_matrix(x0.shape[1]), x0.astype(np.float64)))
  ref /= np.maximum(counts, 1)[:, None, None]
  ref_j = jnp.asarray(ref, jnp.float32)

  def stats(p, z0, z_t, x_t, t, yb, index):
    x0_hat = gaussian.x0_from_eps(schedule, x_t, jnp.full(yb.shape, t, jnp.int32),
                                  eps_fn(p, x_t, t, yb, index))
    z, h = z0 - ref_j[yb], _to_freq(x0_hat) - ref_j[yb]
    return {"z": z, "h": h, "zz": z * z, "hh": h * h, "zh": z * h}

  sums = _class_sums(stats, params, schedule, config, x0, y, key, num_classes, batch_size,
                     draws)
  n = np.maximum(sums["count"], 1)[:, None, None]
  mz, mh = sums["z"] / n, sums["h"] / n
  var_h, var_z = sums["hh"] / n - mh * mh, sums["zz"] / n - mz * mz
  cov = sums["zh"] / n - mz * mh
  data = sums["count"][:, None, None] > 1
  # Where x0_hat's spread is rounding (below 1e-4 of its second moment, or 1e-6 of x0's
  # variance), a slope means nothing: only the offset is fitted (slope 1).
  varies = data & (var_h > 1e-4 * sums["hh"] / n) & (var_h > 1e-6 * np.maximum(var_z, 1e-12))
  slope = np.where(varies, np.clip(cov / np.where(varies, var_h, 1.0), 0.0, max_slope), 1.0)
  # In centred coordinates z0 - ref ~ slope (z_hat - ref) + (mz - slope mh).
  intercept = np.where(data, ref[None] * (1.0 - slope) + mz - slope * mh, 0.0)
  return X0Calibration(slope.astype(np.float32), intercept.astype(np.float32))
