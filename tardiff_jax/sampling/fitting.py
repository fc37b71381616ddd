"""Offline fits of the sampler to a trained denoiser, estimated once per model on its training
series (filled as in training) and saved beside the denoiser checkpoint:

- `estimate_gamma`: Analytic-DPM's gamma per plan step, class, channel and DCT time frequency,
  for `SamplerConfig.variance = "analytic"`;
- `estimate_calibration`: a least-squares line per step, class, channel and frequency that maps
  the denoiser's x0_hat onto x0, for `SamplerConfig.calibrate_x0`;
- `fit_sampler` does both as the sampler of a config needs them (`SamplerFit`, saved and
  loaded as arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array

from tardiff_jax.data.dataset import check_series
from tardiff_jax.diffusion import gaussian
from tardiff_jax.diffusion.schedules import Schedule
from tardiff_jax.parallel.sharding import (
    check_divisible,
    jit_replicated,
    replicate,
    shard_rows,
    to_host,
)
from tardiff_jax.sampling.dct import dct_matrix, to_freq
from tardiff_jax.sampling.plan import SamplerConfig, sampling_plan
from tardiff_jax.sampling.predictors import X0Calibration, make_predictor


def _check_training_series(x0, y, num_classes, batch_size, draws):
  x0, y = check_series(x0, y, what="training series x0", num_classes=num_classes)
  if int(batch_size) < 1 or int(draws) < 1:
    raise ValueError(f"batch_size and draws must be >= 1, got {batch_size}, {draws}.")
  return x0, y


def _class_sums(stats_fn: Callable[..., dict[str, Array]], params: Any, schedule: Schedule,
                config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                num_classes: int, batch_size: int, draws: int,
                mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """Per plan step and class, sums over training series x `draws` noise draws of the DCT-domain
  statistics `stats_fn(params, z0, z_t, x_t, t, yb, index) -> {name: [B, C, F]}`, where x_t =
  q_sample(x0, t, eps), z0 = D x0 and z_t = D x_t: {name: float64[S, K, C, F]}, plus "count" [K].
  Static batch shapes (the last batch is padded with zero-weight rows); deterministic. With a
  `mesh` each batch is split over the devices (batch_size must divide by their count) and the
  class sums are reduced across them: the same noise draws, so the same sums up to float order.
  """
  check_divisible("batch_size", batch_size, mesh)
  plan = sampling_plan(schedule, config)
  ts, idx = jnp.asarray(plan.t), jnp.asarray(plan.index)
  k = int(num_classes)

  def batch_sums(params, xb, yb, wb, bkey):
    def one(args):
      t, i, tkey = args
      tb = jnp.full((xb.shape[0],), t, jnp.int32)
      x_t = gaussian.q_sample(schedule, xb, tb, jax.random.normal(tkey, xb.shape, xb.dtype))
      stats = stats_fn(params, to_freq(xb), to_freq(x_t), x_t, t, yb, i)
      return {n: jax.ops.segment_sum(v * wb[:, None, None], yb, num_segments=k)
              for n, v in stats.items()}
    return jax.lax.map(one, (ts, idx, jax.random.split(bkey, ts.shape[0])))  # [S, K, C, F]

  batch_sums = jit_replicated(batch_sums, mesh)
  params = replicate(mesh, params)

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
      out = batch_sums(params, *(shard_rows(mesh, a) for a in (xb, yb, wb)), bkey)
      for name, v in to_host(out).items():
        total[name] = total.get(name, 0.0) + v.astype(np.float64)
  total["count"] = np.bincount(y, minlength=k).astype(np.float64) * int(draws)
  return total


def estimate_gamma(apply_fn: Callable[..., Array], params: Any, schedule: Schedule,
                   config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                   num_classes: int, batch_size: int = 256, draws: int = 1,
                   calibration: Any = None, mesh: Mesh | None = None) -> np.ndarray:
  """Analytic-DPM's gamma for the sampling plan of `config`, per class, channel and time
  frequency: float32[S, K, C, T], at step s the mean over class-k series of (D eps_hat)^2 at
  channel c, frequency f, where D is the orthonormal DCT along time (`dct_matrix`; f = 0 is
  the time mean, i.e. a series' level), x_t = q_sample(x0, t_s, eps), `draws` noise draws each.

  Series of one channel have a level and slow drifts that a denoiser is unsure of together, so
  x0's posterior covariance is far from white in time; a DCT basis diagonalises it well for
  stationary series. x0[N, T, C] are training series in the model's space, filled as in
  training; eps_hat is the sampler's own predictor (`make_predictor`: true labels, the config's
  cfg_scale and, given, `calibration`). A class without series gets gamma 1 (no correction).
  Deterministic given `key`; `mesh` splits each batch over devices (see `_class_sums`).
  """
  x0, y = _check_training_series(x0, y, num_classes, batch_size, draws)
  eps_fn = make_predictor(apply_fn, schedule, config, num_classes, calibration)

  def stats(p, z0, z_t, x_t, t, yb, index):
    return {"e2": jnp.square(to_freq(eps_fn(p, x_t, t, yb, index)))}

  sums = _class_sums(stats, params, schedule, config, x0, y, key, num_classes, batch_size,
                     draws, mesh)
  counts = sums["count"][:, None, None]  # [K, 1, 1]
  gamma = np.where(counts > 0, sums["e2"] / np.maximum(counts, 1), 1.0)
  return gamma.astype(np.float32)


def estimate_calibration(apply_fn: Callable[..., Array], params: Any, schedule: Schedule,
                         config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                         num_classes: int, batch_size: int = 256, draws: int = 1,
                         max_slope: float = 4.0, mesh: Mesh | None = None) -> X0Calibration:
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
  each [S, K, C, F]; deterministic; `mesh` as in `estimate_gamma`.
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
    z, h = z0 - ref_j[yb], to_freq(x0_hat) - ref_j[yb]
    return {"z": z, "h": h, "zz": z * z, "hh": h * h, "zh": z * h}

  sums = _class_sums(stats, params, schedule, config, x0, y, key, num_classes, batch_size,
                     draws, mesh)
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


class SamplerFit(NamedTuple):
  """What the sampler of a config needs from its denoiser: gamma [S, K, C, F] (variance
  "analytic", else None) and the x0 calibration (calibrate_x0, else None)."""
  gamma: np.ndarray | None
  calibration: X0Calibration | None

  def to_arrays(self) -> dict[str, np.ndarray]:
    out = {}
    if self.gamma is not None:
      out["gamma"] = np.asarray(self.gamma, np.float32)
    if self.calibration is not None:
      out["slope"] = np.asarray(self.calibration.slope, np.float32)
      out["intercept"] = np.asarray(self.calibration.intercept, np.float32)
    return out

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SamplerFit:
    cal = None
    if "slope" in arrays:
      cal = X0Calibration(np.asarray(arrays["slope"], np.float32),
                          np.asarray(arrays["intercept"], np.float32))
    gamma = np.asarray(arrays["gamma"], np.float32) if "gamma" in arrays else None
    return cls(gamma, cal)


def needs_fit(config: SamplerConfig) -> bool:
  """Whether the sampler of `config` needs anything fitted to its denoiser."""
  return config.variance == "analytic" or bool(config.calibrate_x0)


def fit_sampler(apply_fn: Callable[..., Array], params: Any, schedule: Schedule,
                config: SamplerConfig, x0: np.ndarray, y: np.ndarray, key: jax.Array,
                num_classes: int, batch_size: int = 256, draws: int = 2,
                mesh: Mesh | None = None) -> SamplerFit:
  """The calibration (when `config.calibrate_x0`), then gamma of the calibrated predictor (when
  `config.variance == "analytic"`), both from `key`; x0 are training series in the model's
  space, filled as in training."""
  kw = dict(batch_size=batch_size, draws=draws, mesh=mesh)
  cal = (estimate_calibration(apply_fn, params, schedule, config, x0, y, key, num_classes, **kw)
         if config.calibrate_x0 else None)
  gamma = (estimate_gamma(apply_fn, params, schedule, config, x0, y, key, num_classes,
                          calibration=cal, **kw) if config.variance == "analytic" else None)
  return SamplerFit(gamma, cal)
