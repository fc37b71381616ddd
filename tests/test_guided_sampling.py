"""Influence guidance inside the one-scan sampler, with an exact toy denoiser and a tiny
classifier."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tardiff_jax.diffusion.schedules import make_schedule
from tardiff_jax.influence import cache as cache_lib
from tardiff_jax.influence import guidance as guidance_lib
from tardiff_jax.influence import scores
from tardiff_jax.sampling import SamplerConfig, make_sampler

T, C, K, B, STEPS = 6, 3, 2, 16, 5


class TinyNet(nn.Module):
  """Per-step tanh MLP, mean pool, one logit."""

  @nn.compact
  def __call__(self, x):  # [B, T, C] -> [B, 1]
    h = jnp.tanh(nn.Dense(6)(x))
    return nn.Dense(1)(jnp.tanh(nn.Dense(6)(jnp.mean(h, axis=1))))


def _toy_denoiser(schedule):
  """The exact eps-predictor for data x0 ~ N(mu[y], I): eps = sqrt(1-ab) (x_t - sqrt(ab) mu[y])."""
  def apply_fn(params, x, t, y):
    ab = schedule.alpha_bars[t][:, None, None]
    mu = params["mu"][y]  # y = K (null label) is the unconditional mean.
    return jnp.sqrt(1.0 - ab) * (x - jnp.sqrt(ab) * mu)
  return apply_fn


@pytest.fixture(scope="module")
def setup():
  schedule = make_schedule("ldm_linear", 50)
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(K + 1, T, C)).astype(np.float32) * 0.5
  den_params = {"mu": jnp.asarray(mu)}
  net = TinyNet()
  cls_params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, T, C)))

  def loss_fn(p, x, y):
    logit = net.apply(p, x[None])[0, 0]
    return optax.sigmoid_binary_cross_entropy(logit, y.astype(logit.dtype))

  yg = (rng.random(64) < 0.3).astype(np.int32)
  xg = (mu[yg] + rng.normal(size=(64, T, C))).astype(np.float32)
  cache = cache_lib.build_guidance_cache(loss_fn, cls_params, xg, yg, batch_size=32)
  y = jnp.asarray(np.arange(B) % K, jnp.int32)
  return dict(schedule=schedule, apply_fn=_toy_denoiser(schedule), den=den_params,
              cls=cls_params, loss_fn=loss_fn, G=cache.G, y=y)


def _samplers(s, config, variant="dot", **kw):
  unguided = jax.jit(make_sampler(s["apply_fn"], s["schedule"], config, K),
                     static_argnames="shape")
  fn = guidance_lib.make_influence_guidance(s["loss_fn"], variant, **kw)
  guided = jax.jit(make_sampler(s["apply_fn"], s["schedule"], config, K, guidance_fn=fn),
                   static_argnames="shape")
  return unguided, guided


PLAIN = dict(variance="ddim", calibrate_x0=False)  # The step's own noise, x0_hat as it is.


@pytest.mark.parametrize("config", [SamplerConfig("ddim", STEPS, eta=1.0, **PLAIN),
                                    SamplerConfig("ddim", STEPS, eta=1.0, cfg_scale=2.0, **PLAIN),
                                    SamplerConfig("ddpm", **PLAIN)])
def test_zero_scale_reproduces_unguided_bit_for_bit(setup, config):
  s = setup
  unguided, guided = _samplers(s, config)
  key = jax.random.PRNGKey(7)
  x_u = unguided(s["den"], None, key, s["y"], (B, T, C))
  x_0 = guided(s["den"], guidance_lib.make_gparams(s["cls"], s["G"], 0.0), key, s["y"], (B, T, C))
  np.testing.assert_array_equal(np.asarray(x_u), np.asarray(x_0))
  # And a non-zero scale changes the samples (same compiled function: w is an argument).
  x_w = guided(s["den"], guidance_lib.make_gparams(s["cls"], s["G"], 5.0), key, s["y"], (B, T, C))
  assert np.max(np.abs(np.asarray(x_w) - np.asarray(x_u))) > 1e-4


def _count_scans(jaxpr, lengths):
  """Lengths of every scan in a jaxpr, nested ones included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      lengths.append(int(eqn.params["length"]))
    for sub in _subjaxprs(eqn.params):
      _count_scans(sub, lengths)
  return lengths


def _subjaxprs(params):
  """Sub-jaxprs held in an equation's params (scan/cond/pjit/custom_* bodies)."""
  for v in params.values():
    for u in (v if isinstance(v, (list, tuple)) else (v,)):
      if hasattr(u, "jaxpr") and hasattr(u.jaxpr, "eqns"):
        yield u.jaxpr
      elif hasattr(u, "eqns"):
        yield u


@pytest.mark.parametrize("kw", [{}, {"through_denoiser": True}])
def test_guided_sampler_is_one_scan(setup, kw):
  s = setup
  config = SamplerConfig("ddim", STEPS, eta=1.0, **PLAIN)
  sample = make_sampler(s["apply_fn"], s["schedule"], config, K,
                        guidance_fn=guidance_lib.make_influence_guidance(s["loss_fn"], "dot", **kw))
  gp = guidance_lib.make_gparams(s["cls"], s["G"], 1.0)
  jaxpr = jax.make_jaxpr(lambda g, k: sample(s["den"], g, k, s["y"], (B, T, C)))(
      gp, jax.random.PRNGKey(0))
  lengths = _count_scans(jaxpr.jaxpr, [])
  assert lengths == [STEPS]


def test_guidance_raises_mean_influence(setup):
  """Samples guided with w > 0 have a higher mean influence on the guidance set than unguided
  ones from the same key, and w < 0 a lower one (monotone in w)."""
  s = setup
  config = SamplerConfig("ddim", STEPS, eta=1.0, **PLAIN)
  _, guided = _samplers(s, config)
  score = jax.jit(lambda x, y: scores.influence(s["loss_fn"], s["cls"], s["G"], x, y, "dot"))
  means = []
  for w in (-20.0, 0.0, 20.0):
    x = guided(s["den"], guidance_lib.make_gparams(s["cls"], s["G"], w), jax.random.PRNGKey(3),
               s["y"], (B, T, C))
    assert np.all(np.isfinite(np.asarray(x)))
    means.append(float(jnp.mean(score(x, s["y"]))))
  assert means[0] < means[1] < means[2], means
