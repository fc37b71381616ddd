"""Gaussian diffusion maths: forward noising, eps/x0 conversions, the training loss, reverse steps.

Every function works on one example (`x[T, C]`, scalar `t`) or a batch (`x[B, T, C]`, `t[B]`):
per-timestep coefficients are gathered at `t` and broadcast over the trailing axes of `x`.
A timestep of -1 (only as `t_prev`) means clean data, alpha_bar = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from tardiff_jax.diffusion.schedules import Schedule

ApplyFn = Callable[..., Array]  # apply_fn(params, x[B,T,C], t[B] int32, y[B] int32) -> eps


def _at(values: Float[Array, " T"], t: Int[Array, ...], x: Array) -> Array:
  """values[t] reshaped to broadcast against x (t's axes lead x's axes)."""
  t = jnp.asarray(t)
  v = values[t]
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def alpha_bar_at(schedule: Schedule, t: Int[Array, ...]) -> Float[Array, ...]:
  """alpha_bar_t, with alpha_bar_{-1} = 1 (clean data)."""
  t = jnp.asarray(t, jnp.int32)
  return jnp.where(t >= 0, schedule.alpha_bars[jnp.maximum(t, 0)], jnp.float32(1.0))


def q_sample(schedule: Schedule, x0: Array, t: Int[Array, ...], noise: Array) -> Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
  return (_at(schedule.sqrt_alpha_bars, t, x0) * x0
          + _at(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise)


def x0_from_eps(schedule: Schedule, x_t: Array, t: Int[Array, ...], eps: Array) -> Array:
  """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
  return (_at(schedule.sqrt_recip_alpha_bars, t, x_t) * x_t
          - _at(schedule.sqrt_recipm1_alpha_bars, t, x_t) * eps)


def eps_from_x0(schedule: Schedule, x_t: Array, t: Int[Array, ...], x0: Array) -> Array:
  """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
  return ((x_t - _at(schedule.sqrt_alpha_bars, t, x_t) * x0)
          / _at(schedule.sqrt_one_minus_alpha_bars, t, x_t))


def v_target(schedule: Schedule, x0: Array, t: Int[Array, ...], noise: Array) -> Array:
  """v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0 (Salimans & Ho 2022)."""
  return (_at(schedule.sqrt_alpha_bars, t, x0) * noise
          - _at(schedule.sqrt_one_minus_alpha_bars, t, x0) * x0)


def eps_from_v(schedule: Schedule, x_t: Array, t: Int[Array, ...], v: Array) -> Array:
  """eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v: the inverse of `v_target` given x_t."""
  return (_at(schedule.sqrt_one_minus_alpha_bars, t, x_t) * x_t
          + _at(schedule.sqrt_alpha_bars, t, x_t) * v)


def as_eps_model(apply_fn: ApplyFn, schedule: Schedule, prediction: str) -> ApplyFn:
  """Wraps a network that predicts `prediction` ("eps" or "v") as an eps model for samplers.

  With v-prediction an error in the network output maps one-to-one onto x0_hat at high noise,
  where eps-prediction amplifies it by 1 / sqrt(alpha_bar_t) (~40x at t = T-1 of ldm_linear).
  """
  if prediction == "eps":
    return apply_fn
  if prediction != "v":
    raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}.")

  def eps_apply(params, x_t, t, y, *args, **kwargs):
    return eps_from_v(schedule, x_t, t, apply_fn(params, x_t, t, y, *args, **kwargs))

  return eps_apply


def eps_loss(apply_fn: ApplyFn, params, schedule: Schedule,
             x0: Float[Array, "B T C"], y: Int[Array, " B"], mask: Array | None,
             key: jax.Array, loss: str = "l1", *, label_dropout: float = 0.0,
             num_classes: int | None = None, rng_collections: Sequence[str] = (),
             prediction: str = "eps") -> Array:
  """Denoising loss, a scalar: mean |target - output| (l1) or squared error (l2) over the
  OBSERVED entries (`mask` True; None = all observed), t ~ Uniform{0..T-1} per example. The
  target is the noise eps (`prediction="eps"`) or v = sqrt(ab) eps - sqrt(1-ab) x0 ("v").

  label_dropout > 0 replaces each label by the null label `num_classes` with that probability
  (classifier-free training). With `rng_collections` (e.g. ("dropout",)) the model is called as
  `apply_fn(params, x_t, t, y, train=True, rngs={name: key})`; otherwise as
  `apply_fn(params, x_t, t, y)`.
  """
  if loss not in ("l1", "l2"):
    raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}.")
  if prediction not in ("eps", "v"):
    raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}.")
  if not 0.0 <= label_dropout < 1.0:
    raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}.")
  if label_dropout > 0.0 and num_classes is None:
    raise ValueError("label_dropout > 0 needs num_classes (the null label).")
  b = x0.shape[0]
  k_t, k_noise, k_label, k_model = jax.random.split(key, 4)
  t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps, dtype=jnp.int32)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  y = jnp.asarray(y, jnp.int32)
  if label_dropout > 0.0:
    drop = jax.random.bernoulli(k_label, label_dropout, (b,))
    y = jnp.where(drop, jnp.int32(num_classes), y)
  if rng_collections:
    rngs = {name: jax.random.fold_in(k_model, i) for i, name in enumerate(rng_collections)}
    eps_hat = apply_fn(params, x_t, t, y, train=True, rngs=rngs)
  else:
    eps_hat = apply_fn(params, x_t, t, y)
  target = noise if prediction == "eps" else v_target(schedule, x0, t, noise)
  err = eps_hat - target
  err = jnp.abs(err) if loss == "l1" else jnp.square(err)
  if mask is None:
    return jnp.mean(err)
  w = jnp.asarray(mask).astype(err.dtype)
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)


def ddpm_step(schedule: Schedule, x_t: Array, t: Int[Array, ...], eps: Array, noise: Array,
              mean_shift: Array | None = None, clip_x0: float | None = None) -> Array:
  """Ancestral DDPM step x_t -> x_{t-1} ~ N(mu(x_t, x0_hat) + mean_shift, sigma_t^2).

  sigma_t^2 is the posterior variance (from the clipped log variance); no noise at t = 0.
  """
  x0 = x0_from_eps(schedule, x_t, t, eps)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
  mean = (_at(schedule.posterior_mean_coef1, t, x_t) * x0
          + _at(schedule.posterior_mean_coef2, t, x_t) * x_t)
  if mean_shift is not None:
    mean = mean + mean_shift
  sigma = jnp.exp(0.5 * _at(schedule.posterior_log_variance_clipped, t, x_t))
  nonzero = (jnp.asarray(t) > 0).astype(x_t.dtype)
  return mean + _expand(nonzero, x_t) * sigma * noise


def ddim_sigma(schedule: Schedule, t: Int[Array, ...], t_prev: Int[Array, ...],
               eta: float | Array) -> Array:
  """sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev) (Song et al. Eq. 16)."""
  ab, ab_prev = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_prev)
  return eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))


def analytic_extra_var(alpha_bar: Array, alpha_bar_prev: Array, sigma: Array,
                       gamma: Array) -> Array:
  """Analytic-DPM's correction to the noise variance of a DDIM-family step t -> s (Bao et al.
  2022, "Analytic-DPM"): the step's mean uses x0_hat = E[x0 | x_t], whose spread is smaller
  than x0's, so the optimal Gaussian step adds the expected posterior variance of x0 through
  the mean's x0 coefficient:

    var* = sigma^2 + (sqrt(ab_s (1 - ab_t) / ab_t) - sqrt(1 - ab_s - sigma^2))^2 (1 - gamma),

  with gamma = E ||eps_hat(x_t)||^2 / d (Tweedie: E Cov(x0 | x_t) = (1 - ab_t) / ab_t (1 - gamma)).
  The same holds per direction of an orthonormal basis (gamma = E (u . eps_hat)^2 along u), which
  the sampler uses per channel and time frequency. Returns the extra term (>= 0; gamma is clipped
  to [0, 1]); arguments broadcast.
  """
  ab, ab_prev = jnp.asarray(alpha_bar), jnp.asarray(alpha_bar_prev)
  rest = jnp.sqrt(jnp.maximum(1.0 - ab_prev - jnp.square(sigma), 0.0))
  coef = jnp.sqrt(ab_prev * (1.0 - ab) / ab) - rest
  return jnp.square(coef) * (1.0 - jnp.clip(gamma, 0.0, 1.0))


def ddim_step(schedule: Schedule, x_t: Array, t: Int[Array, ...], t_prev: Int[Array, ...],
              eps: Array, noise: Array | None, eta: float = 1.0, mean_shift: Array | None = None,
              clip_x0: float | None = None) -> Array:
  """DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12):

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + mean_shift + sigma noise.

  eta = 1 is ancestral-like (as the reference code samples), eta = 0 deterministic (`noise` may
  be None then). With `clip_x0`, x0_hat is clipped and eps recomputed from it. With noise=None
  the step's mean is returned (the sampler adds shaped noise itself for analytic variances).
  """
  ab_prev = _expand(alpha_bar_at(schedule, t_prev), x_t)
  x0 = x0_from_eps(schedule, x_t, t, eps)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    eps = eps_from_x0(schedule, x_t, t, x0)
  sigma = _expand(ddim_sigma(schedule, t, t_prev, eta), x_t)
  mean = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
  if mean_shift is not None:
    mean = mean + mean_shift
  if noise is None:
    return mean
  return mean + sigma * noise


def ddim_invert_step(schedule: Schedule, x_prev: Array, t: Int[Array, ...],
                     t_prev: Int[Array, ...], eps: Array) -> Array:
  """Inverse of the eta = 0 DDIM step for a given eps: x_{t_prev} -> x_t."""
  ab, ab_prev = (_expand(alpha_bar_at(schedule, s), x_prev) for s in (t, t_prev))
  x0 = (x_prev - jnp.sqrt(1.0 - ab_prev) * eps) / jnp.sqrt(ab_prev)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def _expand(v: Array, x: Array) -> Array:
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))
