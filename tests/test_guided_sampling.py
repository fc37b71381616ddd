"""Influence guidance inside the one-scan sampler, with an exact toy denoiser and a tiny
classifier."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tardiff_jax.diffusion import gaussian
from tardiff_jax.diffusion.schedules import make_schedule
from tardiff_jax.influence import cache as cache_lib
from tardiff_jax.influence import guidance as guidance_lib
from tardiff_jax.influence import scores
from tardiff_jax.sampling import SamplerConfig, make_sampler
from tardiff_jax.sampling.plan import sampling_plan

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


def _stack_of_guides(s, m=3):
  """m guides near the setup's (perturbed parameters), each with its own G and a weight."""
  keys = jax.random.split(jax.random.PRNGKey(7), m)
  ps = [jax.tree_util.tree_map(lambda a, k=k: a + 0.3 * jax.random.normal(k, a.shape, a.dtype),
                               s["cls"]) for k in keys]
  gs = [jax.tree_util.tree_map(lambda a, i=i: (1.0 + i) * a, s["G"]) for i in range(m)]
  stack = lambda trees: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
  return ps, gs, stack(ps), stack(gs), jnp.asarray([0.5, 0.2, 0.3][:m], jnp.float32)


@pytest.mark.parametrize("variant", ["dot", "cosine"])
def test_stacked_guides_equal_the_explicit_weighted_score(setup, variant):
  """TracIn / ensembles: J = grad_x sum_m a_m score(theta_m, G_m; x), against jax.grad of the
  explicitly written sum, at x0_hat and through the denoiser."""
  s = setup
  ps, gs, P, G, a = _stack_of_guides(s)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(B, T, C)), jnp.float32)
  y = s["y"] % 2

  def explicit(xx):
    return sum(a[m] * jnp.sum(scores.influence(s["loss_fn"], ps[m], gs[m], xx, y, variant))
               for m in range(len(ps)))

  info = {"x0_fn": lambda v: 0.9 * v}
  hook = guidance_lib.make_influence_guidance(s["loss_fn"], variant)
  got = hook(guidance_lib.make_gparams(P, G, 2.0, a), x, x, y, info)
  np.testing.assert_allclose(np.asarray(got), 2.0 * np.asarray(jax.grad(explicit)(x)),
                             rtol=2e-4, atol=1e-6)
  through = guidance_lib.make_influence_guidance(s["loss_fn"], variant, through_denoiser=True)
  got_t = through(guidance_lib.make_gparams(P, G, 1.0, a), x, x, y, info)
  want_t = jax.grad(lambda xt: explicit(0.9 * xt))(x)
  np.testing.assert_allclose(np.asarray(got_t), np.asarray(want_t), rtol=2e-4, atol=1e-6)
  # One guide with weight 1 is the plain hook.
  one = hook(guidance_lib.make_gparams(jax.tree_util.tree_map(lambda v: v[:1], P),
                                       jax.tree_util.tree_map(lambda v: v[:1], G), 1.0,
                                       jnp.ones(1)), x, x, y, info)
  plain = hook(guidance_lib.make_gparams(ps[0], gs[0], 1.0), x, x, y, info)
  np.testing.assert_allclose(np.asarray(one), np.asarray(plain), rtol=1e-5, atol=1e-7)


def test_stacked_guides_in_the_sampler_keep_w0_unguided(setup):
  s = setup
  _, _, P, G, a = _stack_of_guides(s)
  config = SamplerConfig("ddim", STEPS, eta=1.0, **PLAIN)
  unguided, guided = _samplers(s, config)
  key = jax.random.PRNGKey(5)
  u = unguided(s["den"], None, key, s["y"], (B, T, C))
  g0 = guided(s["den"], guidance_lib.make_gparams(P, G, 0.0, a), key, s["y"], (B, T, C))
  g1 = guided(s["den"], guidance_lib.make_gparams(P, G, 1.0, a), key, s["y"], (B, T, C))
  np.testing.assert_array_equal(np.asarray(u), np.asarray(g0))
  assert float(jnp.max(jnp.abs(g1 - u))) > 1e-4


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_shift_at_x0_equals_the_explicit_ddim_step(setup, eta):
  """guidance.placement = "x0": the sampler equals a plain loop that adds w J to x0_hat, recomputes
  eps from it and takes the DDIM step; the factor c_t is 1 at the last step."""
  s = setup
  config = SamplerConfig("ddim", STEPS, eta=eta, **PLAIN)
  fn = guidance_lib.make_influence_guidance(s["loss_fn"], "dot")
  sample = jax.jit(make_sampler(s["apply_fn"], s["schedule"], config, K,
                                guidance_fn=guidance_lib.at_x0(fn)), static_argnames="shape")
  gp = guidance_lib.make_gparams(s["cls"], s["G"], 3.0)
  key = jax.random.PRNGKey(7)
  got = sample(s["den"], gp, key, s["y"], (T, C))
  plan = jax.tree_util.tree_map(jnp.asarray, sampling_plan(s["schedule"], config))
  k_init, k_steps = jax.random.split(key)
  x = jax.random.normal(k_init, (B, T, C), jnp.float32)
  for i in range(plan.t.shape[0]):
    t, t_prev = plan.t[i], plan.t_prev[i]
    eps = s["apply_fn"](s["den"], x, jnp.full((B,), t, jnp.int32), s["y"])
    x0 = gaussian.x0_from_eps(s["schedule"], x, t, eps)
    shifted = x0 + fn(gp, x, x0, s["y"], None)  # The mean-placed hook's shift, on x0_hat.
    noise = jax.random.normal(jax.random.fold_in(k_steps, i), x.shape, jnp.float32)
    x = gaussian.ddim_step(s["schedule"], x, t, t_prev,
                           gaussian.eps_from_x0(s["schedule"], x, t, shifted), noise, eta=eta)
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)
  last = jax.tree_util.tree_map(lambda a: a[-1], plan)
  np.testing.assert_allclose(guidance_lib.x0_shift_factor(last), 1.0, rtol=1e-6)
  first = jax.tree_util.tree_map(lambda a: a[0], plan)
  assert 0.0 < float(guidance_lib.x0_shift_factor(first)) < 0.5  # Noisy steps: a smaller push.
  with pytest.raises(ValueError, match="placement"):
    guidance_lib.GuidanceConfig(placement="eps")
