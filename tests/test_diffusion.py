"""Gaussian diffusion maths: closed forms, DDIM determinism/inversion, the masked loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax.diffusion import (
    ddim_invert_step,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    eps_from_x0,
    eps_loss,
    make_schedule,
    q_sample,
    x0_from_eps,
)

S = make_schedule("ldm_linear", 200, 5e-4, 0.1)
B, T, C = 3, 6, 2


def _normals(seed, n, shape=(B, T, C)):
  keys = jax.random.split(jax.random.key(seed), n)
  return [jax.random.normal(k, shape, jnp.float32) for k in keys]


def test_q_sample_and_conversions():
  x0, eps = _normals(0, 2)
  t = jnp.array([0, 57, 199], jnp.int32)
  xt = q_sample(S, x0, t, eps)
  ab = np.asarray(S.alpha_bars, np.float64)[np.asarray(t)][:, None, None]
  np.testing.assert_allclose(xt, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(x0_from_eps(S, xt, t, eps), x0, rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(eps_from_x0(S, xt, t, x0), eps, rtol=1e-4, atol=1e-4)
  # Single example (scalar t) agrees with the batched row.
  np.testing.assert_allclose(q_sample(S, x0[1], jnp.int32(57), eps[1]), xt[1], rtol=1e-6)


def test_ddpm_step_mean_is_posterior_mean_and_no_noise_at_zero():
  x0, eps, noise, shift = _normals(1, 4)
  t = jnp.array([5, 100, 199], jnp.int32)
  xt = q_sample(S, x0, t, eps)
  # With the true eps, x0_hat = x0: the step mean is the Gaussian-conditioning posterior mean.
  mean = ddpm_step(S, xt, t, eps, jnp.zeros_like(noise))
  b = np.asarray(S.betas, np.float64)[np.asarray(t)][:, None, None]
  abp = np.asarray(S.alpha_bars_prev, np.float64)[np.asarray(t)][:, None, None]
  var = 1 / (1 / (1 - abp) + (1 - b) / b)
  want = var * (np.sqrt(abp) * x0 / (1 - abp) + np.sqrt(1 - b) * xt / b)
  np.testing.assert_allclose(mean, want, rtol=1e-4, atol=1e-4)
  got = ddpm_step(S, xt, t, eps, noise)
  np.testing.assert_allclose(got - mean, np.sqrt(var) * noise, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(ddpm_step(S, xt, t, eps, noise, mean_shift=shift) - got, shift,
                             atol=1e-5)
  t0 = jnp.zeros((B,), jnp.int32)
  xt0 = q_sample(S, x0, t0, eps)
  a = ddpm_step(S, xt0, t0, eps, noise)
  np.testing.assert_array_equal(a, ddpm_step(S, xt0, t0, eps, 5 * noise))
  np.testing.assert_allclose(a, x0, atol=1e-5)  # coef1(0) = 1, coef2(0) = 0: returns x0_hat


def test_ddim_eta0_deterministic_invertible_and_consistent():
  x0, eps, n1, n2 = _normals(2, 4)
  t, tp = jnp.array([199, 120, 40], jnp.int32), jnp.array([189, 100, -1], jnp.int32)
  xt = q_sample(S, x0, t, eps)
  a = ddim_step(S, xt, t, tp, eps, n1, eta=0.0)
  np.testing.assert_array_equal(a, ddim_step(S, xt, t, tp, eps, n2, eta=0.0))
  np.testing.assert_array_equal(a, ddim_step(S, xt, t, tp, eps, None, eta=0.0))
  # With the true eps, the eta = 0 step lands on q_sample(x0, t_prev, eps) (clean at t_prev = -1).
  want = np.concatenate([q_sample(S, x0[:2], tp[:2], eps[:2]), x0[2:]])
  np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)
  # DDIM inversion with the same eps recovers x_t.
  np.testing.assert_allclose(ddim_invert_step(S, a, t, tp, eps), xt, rtol=1e-5, atol=1e-5)
  # An arbitrary eps (not the true one) inverts too.
  e2 = eps + 0.3 * n1
  np.testing.assert_allclose(ddim_invert_step(S, ddim_step(S, xt, t, tp, e2, None, 0.0), t, tp, e2),
                             xt, rtol=1e-5, atol=1e-5)


def test_ddim_eta1_one_step_matches_ddpm():
  # With t_prev = t - 1 and eta = 1, DDIM's sigma^2 is the DDPM posterior variance and its mean
  # is the posterior mean.
  x0, eps, noise = _normals(3, 3)
  t = jnp.array([1, 60, 199], jnp.int32)
  xt = q_sample(S, x0, t, 0.7 * eps)  # eps below is not the true noise: a generic x0_hat
  np.testing.assert_allclose(ddim_sigma(S, t, t - 1, 1.0) ** 2, S.posterior_variance[t], rtol=1e-4)
  np.testing.assert_allclose(ddim_step(S, xt, t, t - 1, eps, noise, eta=1.0),
                             ddpm_step(S, xt, t, eps, noise), rtol=1e-3, atol=1e-4)
  assert float(ddim_sigma(S, jnp.int32(9), jnp.int32(-1), 1.0)) == 0.0


def test_ddim_mean_shift_and_clip():
  x0, eps, noise, shift = _normals(4, 4)
  t, tp = jnp.full((B,), 100, jnp.int32), jnp.full((B,), 50, jnp.int32)
  xt = q_sample(S, x0, t, eps)
  a = ddim_step(S, xt, t, tp, eps, noise, eta=1.0)
  np.testing.assert_allclose(ddim_step(S, xt, t, tp, eps, noise, 1.0, mean_shift=shift) - a,
                             shift, atol=1e-5)
  c = ddim_step(S, xt, t, tp, 30 * eps, None, eta=0.0, clip_x0=1.0)
  x0c = jnp.clip(x0_from_eps(S, xt, t, 30 * eps), -1, 1)
  want = q_sample(S, x0c, tp, eps_from_x0(S, xt, t, x0c))
  np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)


def _linear_apply(params, x, t, y):
  del y
  return params["w"] * x + 1e-3 * t.astype(jnp.float32)[:, None, None]


def _reference_loss(params, x0, mask, key, kind):
  k_t, k_n, _, _ = jax.random.split(key, 4)
  t = jax.random.randint(k_t, (x0.shape[0],), 0, S.num_timesteps, dtype=jnp.int32)
  n = jax.random.normal(k_n, x0.shape, jnp.float32)
  err = np.asarray(_linear_apply(params, q_sample(S, x0, t, n), t, None) - n, np.float64)
  err = np.abs(err) if kind == "l1" else err**2
  m = np.asarray(mask, np.float64)
  return (err * m).sum() / m.sum()


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_masked_loss(kind):
  (x0,) = _normals(5, 1)
  key = jax.random.key(7)
  mask = jax.random.bernoulli(jax.random.key(8), 0.6, x0.shape)
  params = {"w": jnp.float32(0.3)}
  got = eps_loss(_linear_apply, params, S, x0, jnp.zeros((B,), jnp.int32), mask, key, kind)
  assert got.shape == ()
  np.testing.assert_allclose(got, _reference_loss(params, x0, mask, key, kind), rtol=1e-5)
  # Unobserved entries do not matter (the toy denoiser is elementwise).
  x0_other = jnp.where(mask, x0, 1e3)
  np.testing.assert_allclose(
      eps_loss(_linear_apply, params, S, x0_other, jnp.zeros((B,), jnp.int32), mask, key, kind),
      got, rtol=1e-6)
  full = eps_loss(_linear_apply, params, S, x0, jnp.zeros((B,), jnp.int32), None, key, kind)
  np.testing.assert_allclose(
      full, _reference_loss(params, x0, jnp.ones_like(mask), key, kind), rtol=1e-5)
  # The loss is differentiable in params (finite difference check).
  g = jax.grad(lambda w: eps_loss(_linear_apply, {"w": w}, S, x0, jnp.zeros((B,), jnp.int32),
                                  mask, key, kind))(jnp.float32(0.3))
  h = 1e-3
  fd = (_reference_loss({"w": 0.3 + h}, x0, mask, key, kind)
        - _reference_loss({"w": 0.3 - h}, x0, mask, key, kind)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=2e-3)


def test_loss_label_dropout_and_rngs():
  (x0,) = _normals(6, 1, (64, 2, 1))
  seen = {}

  def apply(params, x, t, y, train=False, rngs=None):
    seen["y"], seen["train"], seen["rngs"] = y, train, rngs
    return jnp.zeros_like(x)

  y = jnp.zeros((64,), jnp.int32)
  eps_loss(apply, {}, S, x0, y, None, jax.random.key(0), label_dropout=0.5, num_classes=2,
           rng_collections=("dropout",))
  frac = float(jnp.mean((seen["y"] == 2).astype(jnp.float32)))
  assert 0.2 < frac < 0.8 and set(np.unique(seen["y"])) == {0, 2}
  assert seen["train"] is True and set(seen["rngs"]) == {"dropout"}
  with pytest.raises(ValueError):
    eps_loss(apply, {}, S, x0, y, None, jax.random.key(0), loss="huber")
  with pytest.raises(ValueError):
    eps_loss(apply, {}, S, x0, y, None, jax.random.key(0), label_dropout=0.1)


def test_v_prediction_round_trip_and_perfect_model_loss():
  """v = sqrt(ab) eps - sqrt(1-ab) x0; eps_from_v(x_t, v) recovers eps, and a network that
  outputs the exact v has zero v-loss and, wrapped by as_eps_model, predicts eps exactly."""
  from tardiff_jax.diffusion import (
    as_eps_model,
    eps_from_v,
    eps_loss,
    make_schedule,
    q_sample,
    v_target,
    x0_from_eps,
  )

  sched = make_schedule("ldm_linear", 200, 5e-4, 0.1)
  key = jax.random.PRNGKey(0)
  x0 = jax.random.normal(key, (6, 5, 3))
  noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  t = jnp.array([0, 1, 50, 120, 198, 199], jnp.int32)
  x_t = q_sample(sched, x0, t, noise)
  v = v_target(sched, x0, t, noise)
  np.testing.assert_allclose(eps_from_v(sched, x_t, t, v), noise, atol=1e-5)
  np.testing.assert_allclose(x0_from_eps(sched, x_t, t, eps_from_v(sched, x_t, t, v)), x0,
                             atol=2e-3)
  # A constant-shift network: its v-loss equals the shift, and the eps wrapper converts exactly.
  net = lambda params, xt, tt, yy: params * jnp.ones_like(xt)
  eps_net = as_eps_model(net, sched, "v")
  np.testing.assert_allclose(eps_net(0.5, x_t, t, None), eps_from_v(sched, x_t, t, 0.5 + 0 * x_t),
                             atol=1e-6)
  assert as_eps_model(net, sched, "eps") is net
  y = jnp.zeros((6,), jnp.int32)
  # loss("v") of a network that outputs v_target exactly is 0 for the same key.
  def exact_v(params, xt, tt, yy):
    ab = sched.alpha_bars[tt][:, None, None]
    # x_t = sqrt(ab) x0 + sqrt(1-ab) eps  and  v = sqrt(ab) eps - sqrt(1-ab) x0, with x0 = params.
    eps = (xt - jnp.sqrt(ab) * params) / jnp.sqrt(1 - ab)
    return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * params
  loss = eps_loss(exact_v, x0, sched, x0, y, None, key, loss="l1", prediction="v")
  assert float(loss) < 1e-3
  assert float(eps_loss(exact_v, x0, sched, x0, y, None, key, loss="l1", prediction="eps")) > 0.1
