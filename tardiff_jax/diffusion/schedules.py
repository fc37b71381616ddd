"""Noise schedules: betas and every derived quantity, precomputed once in float64, stored float32.

A `Schedule` is a frozen dataclass registered as a pytree, so it can be closed over (constants of
size T) or passed through `jax.jit` as an argument. Index convention: timestep `t` in [0, T) is the
(t+1)-th noising step, `alpha_bars[t] = prod_{s<=t} (1 - betas[s])`; "t = -1" means clean data
(alpha_bar = 1), used as the previous timestep of the last reverse step.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax.config.fields import option

SCHEDULES = ("ldm_linear", "linear", "cosine")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """A diffusion noise schedule; every array is float32[T] (see the module docstring for `t`)."""
  name: str
  betas: jax.Array
  alphas: jax.Array  # 1 - beta_t
  alpha_bars: jax.Array  # prod_{s<=t} alpha_s
  alpha_bars_prev: jax.Array  # alpha_bar_{t-1}, with alpha_bar_{-1} = 1
  sqrt_alpha_bars: jax.Array
  sqrt_one_minus_alpha_bars: jax.Array
  sqrt_recip_alpha_bars: jax.Array  # 1 / sqrt(alpha_bar_t)
  sqrt_recipm1_alpha_bars: jax.Array  # sqrt(1 / alpha_bar_t - 1)
  posterior_variance: jax.Array  # beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); 0 at t = 0
  posterior_log_variance_clipped: jax.Array  # log of it with the t = 0 entry replaced by t = 1's
  posterior_mean_coef1: jax.Array  # multiplies x0 in the mean of q(x_{t-1} | x_t, x0)
  posterior_mean_coef2: jax.Array  # multiplies x_t in the mean of q(x_{t-1} | x_t, x0)

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


_ARRAY_FIELDS = tuple(f.name for f in dataclasses.fields(Schedule) if f.name != "name")
jax.tree_util.register_dataclass(Schedule, data_fields=list(_ARRAY_FIELDS), meta_fields=["name"])


def _betas(name: str, num_timesteps: int, beta_start: float, beta_end: float,
           cosine_s: float, max_beta: float) -> np.ndarray:
  t = num_timesteps
  if name == "ldm_linear":  # The reference (latent-diffusion) "linear": linear in sqrt(beta).
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), t, dtype=np.float64) ** 2
  if name == "linear":
    return np.linspace(beta_start, beta_end, t, dtype=np.float64)
  # Cosine (Nichol & Dhariwal 2021): alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2).
  u = np.arange(t + 1, dtype=np.float64) / t
  f = np.cos((u + cosine_s) / (1.0 + cosine_s) * math.pi / 2.0) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def make_schedule(name: str = "ldm_linear", num_timesteps: int = 200, beta_start: float = 5e-4,
                  beta_end: float = 0.1, cosine_s: float = 0.008,
                  max_beta: float = 0.999) -> Schedule:
  """Builds a `Schedule`. `beta_start`/`beta_end` are ignored by "cosine" (which uses `cosine_s`
  and clips betas at `max_beta`). Raises ValueError on unknown names or out-of-range values."""
  arrays = schedule_arrays(name, num_timesteps, beta_start, beta_end, cosine_s, max_beta)
  return Schedule(name=name, **{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def schedule_arrays(name: str = "ldm_linear", num_timesteps: int = 200,
                    beta_start: float = 5e-4, beta_end: float = 0.1, cosine_s: float = 0.008,
                    max_beta: float = 0.999) -> dict[str, np.ndarray]:
  """`make_schedule`'s arrays in float64 numpy, validated (no jax call: configs validate with it
  before a multi-process run starts jax's backend)."""
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; expected one of {SCHEDULES}.")
  if isinstance(num_timesteps, bool) or int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")
  num_timesteps = int(num_timesteps)
  if name in ("ldm_linear", "linear"):
    if not 0.0 < beta_start <= beta_end < 1.0:
      raise ValueError(f"Schedule {name!r} needs 0 < beta_start <= beta_end < 1, got "
                       f"beta_start={beta_start}, beta_end={beta_end}.")
  else:
    if not cosine_s >= 0.0:
      raise ValueError(f"cosine_s must be >= 0, got {cosine_s}.")
    if not 0.0 < max_beta < 1.0:
      raise ValueError(f"max_beta must be in (0, 1), got {max_beta}.")
  betas = _betas(name, num_timesteps, float(beta_start), float(beta_end), float(cosine_s),
                 float(max_beta))
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
  post_var = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
  # Variance is 0 at t = 0: use t = 1's value in the log (as DDPM / LDM do) so it stays finite.
  post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]]) if num_timesteps > 1
                       else np.full_like(post_var, 1e-20))
  arrays = dict(
      betas=betas, alphas=alphas, alpha_bars=alpha_bars, alpha_bars_prev=alpha_bars_prev,
      sqrt_alpha_bars=np.sqrt(alpha_bars), sqrt_one_minus_alpha_bars=np.sqrt(1.0 - alpha_bars),
      sqrt_recip_alpha_bars=np.sqrt(1.0 / alpha_bars),
      sqrt_recipm1_alpha_bars=np.sqrt(1.0 / alpha_bars - 1.0),
      posterior_variance=post_var, posterior_log_variance_clipped=post_logvar,
      posterior_mean_coef1=betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
      posterior_mean_coef2=(1.0 - alpha_bars_prev) * np.sqrt(alphas) / (1.0 - alpha_bars))
  for k, v in arrays.items():
    if not np.all(np.isfinite(v)):
      raise ValueError(f"Schedule {name!r} produced non-finite {k}; check its hyper-parameters.")
  return arrays


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """Uniform ("trailing") DDIM sub-sequence, int32[num_steps], in DESCENDING (sampling) order.

  `t_i = round(T - i * T / S) - 1` for i = 0..S-1: the first step starts at the noisiest level
  T - 1, steps are (near) equally spaced, and S = T gives every timestep. The step after the last
  one goes to clean data (t_prev = -1, alpha_bar = 1). (The reference code's "uniform" starts at
  t = 1 and never reaches T - 1; trailing spacing avoids that, cf. Lin et al. 2023.)
  """
  for n, v in (("num_timesteps", num_timesteps), ("num_steps", num_steps)):
    if isinstance(v, bool) or int(v) != v or v < 1:
      raise ValueError(f"{n} must be a positive integer, got {v!r}.")
  if num_steps > num_timesteps:
    raise ValueError(f"num_steps ({num_steps}) must be <= num_timesteps ({num_timesteps}).")
  ts = np.round(num_timesteps - np.arange(num_steps) * (num_timesteps / num_steps)) - 1
  ts = ts.astype(np.int32)
  assert np.all(np.diff(ts) < 0) and ts[0] == num_timesteps - 1 and ts[-1] >= 0
  return ts


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The noise schedule and the denoiser's training target."""
  schedule: str = option("ldm_linear", "'ldm_linear' (reference code), 'linear' or 'cosine'.")
  num_timesteps: int = option(200, "Training diffusion steps T.")
  beta_start: float = option(5e-4, "First beta (ldm_linear / linear).")
  beta_end: float = option(0.1, "Last beta (ldm_linear / linear).")
  loss: str = option("l1", "Denoising loss: 'l1' (reference code) or 'l2'; masked.")
  # With eps and ldm_linear, sqrt(alpha_bar) at t = T-1 is 0.025, so eps errors reach x0_hat 40x
  # amplified and the first DDIM step fixes a far too wide sample; v maps 1:1
  # (benchmarks/results/archive/diffusion_fidelity_default_v.md vs the eps runs).
  prediction: str = option("v", "Network target: 'eps' (reference code) or 'v'.")

  def __post_init__(self):
    if self.loss not in ("l1", "l2"):
      raise ValueError(f"diffusion.loss must be 'l1' or 'l2', got {self.loss!r}.")
    if self.prediction not in ("eps", "v"):
      raise ValueError(f"diffusion.prediction must be 'eps' or 'v', got {self.prediction!r}.")
    # Validates the schedule hyper-parameters up front (numpy only).
    schedule_arrays(self.schedule, self.num_timesteps, self.beta_start, self.beta_end)

  def make_schedule(self) -> Schedule:
    return make_schedule(self.schedule, self.num_timesteps, self.beta_start, self.beta_end)
