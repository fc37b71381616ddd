"""What a sampler is made of before it runs: its settings (`SamplerConfig`), the per-step arrays
it scans over (`StepPlan`), what a guidance hook sees at a step (`StepInfo`) and the one
guidance-hook protocol (`GuidanceFn`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
from jaxtyping import Array, Float, Int

from tardiff_jax.config.fields import option
from tardiff_jax.diffusion.schedules import Schedule, ddim_timesteps

SAMPLERS = ("ddim", "ddpm")
VARIANCES = ("ddim", "analytic")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """The reverse process and how synthetic sets are drawn."""
  sampler: str = option("ddim", "'ddim' (num_steps steps) or 'ddpm' (all T steps).")
  num_steps: int = option(20, "DDIM steps S (ddpm uses all T).")
  eta: float = option(1.0, "DDIM stochasticity (1 as the reference code samples, 0 "
                           "deterministic).")
  cfg_scale: float = option(1.0, "Classifier-free guidance scale (1 = plain conditional, one "
                                 "model call per step).")
  clip_x0: float = option(0.0, "Clip x0_hat to [-c, c] at each step; 0 = off (z-scored data).")
  # Measured: with the step's own sigma, DDIM-20 spreads fall 11-12% below DDPM-200's
  # (benchmarks/results/fidelity_ablation.md).
  variance: str = option("analytic", "Noise of each DDIM step: 'analytic' (Analytic-DPM: adds "
                                     "x0's posterior variance per class, channel and time "
                                     "frequency, fitted once per model; `fitting.estimate_gamma`)"
                                     " or 'ddim' (the step's own sigma, as the reference code).")
  # Measured: at high noise the trained denoiser pulls a stay's level towards its class mean
  # further than E[x0 | x_t]; class-1 samples came out 17-30% too narrow (32-33/42 fidelity
  # cells), calibrated 42/42. Alone (variance 'ddim') it leaves samples too smooth (32/42).
  calibrate_x0: bool = option(True, "Recalibrate x0_hat linearly per step, class, channel and "
                                    "DCT time frequency, fitted once per model on the training "
                                    "split (`fitting.estimate_calibration`).")
  batch_size: int = option(256, "Samples per jitted sampler call.")
  counts: str = option("match", "Samples per class: 'match' (training class counts), "
                                "'balanced', or 'n0,n1,...'.")

  def __post_init__(self):
    if self.clip_x0 is None:
      object.__setattr__(self, "clip_x0", 0.0)
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampling.sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
    if isinstance(self.num_steps, bool) or int(self.num_steps) != self.num_steps \
        or self.num_steps < 1:
      raise ValueError(f"sampling.num_steps must be a positive integer, got {self.num_steps!r}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"sampling.eta must be in [0, 1], got {self.eta}.")
    if not np.isfinite(self.cfg_scale):
      raise ValueError(f"sampling.cfg_scale must be finite, got {self.cfg_scale}.")
    if not self.clip_x0 >= 0:
      raise ValueError(f"sampling.clip_x0 must be >= 0 (0 = off), got {self.clip_x0}.")
    if self.variance not in VARIANCES:
      raise ValueError(f"sampling.variance must be one of {VARIANCES}, got {self.variance!r}.")
    if self.variance == "analytic" and self.sampler != "ddim":
      raise ValueError("sampling.variance='analytic' is implemented for the DDIM sampler only; "
                       "with sampling.sampler='ddpm' set sampling.variance='ddim'.")
    if not isinstance(self.calibrate_x0, (bool, np.bool_)):
      raise ValueError(f"sampling.calibrate_x0 must be a bool, got {self.calibrate_x0!r}.")
    if int(self.batch_size) < 1:
      raise ValueError(f"sampling.batch_size must be >= 1, got {self.batch_size}.")

  @property
  def clip(self) -> float | None:
    """The x0_hat clip value, None when off."""
    return float(self.clip_x0) if self.clip_x0 else None

  def plan_settings(self) -> dict[str, Any]:
    """The fields that define the reverse process (not how many samples are drawn, or how)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("batch_size", "counts")}


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

  x0_fn maps x_t[B,T,C] to x0_hat (the sampler's own predictor, cfg and calibration included),
  so guidance can differentiate through the denoiser.
  """
  index: Array
  t: Array
  t_prev: Array
  alpha_bar: Array
  alpha_bar_prev: Array
  sigma: Array
  x0_fn: Callable[[Array], Array]


class GuidanceFn(Protocol):
  """The sampler's guidance hook: a shift [B, T, C] added to the reverse step's mean.

  `gparams` is a pytree passed to the jitted sampler as an argument (classifier parameters, the
  cached G, the scale: nothing large is baked in, and a new scale never recompiles); x_t and
  x0_hat are [B, T, C], y [B].
  """

  def __call__(self, gparams: Any, x_t: Array, x0_hat: Array, y: Array,
               info: StepInfo) -> Array: ...


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
