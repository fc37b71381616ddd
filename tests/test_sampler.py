"""The one-scan samplers (toy denoisers), guidance hook, classifier-free guidance, generation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tardiff_jax.config import experiment_config, from_mapping, load_config
from tardiff_jax.data import load_dataset, save_dataset
from tardiff_jax.diffusion import (
    analytic_extra_var,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    gaussian,
    make_schedule,
)
from tardiff_jax.sampling import (
    SamplerConfig,
    class_counts,
    dct_matrix,
    estimate_calibration,
    estimate_gamma,
    generate,
    make_predictor,
    make_sampler,
    make_sampler_parts,
    sampling_plan,
)

SCHED = make_schedule("ldm_linear", 40, 5e-4, 0.1)
K, B, T, C = 2, 4, 5, 3
PARAMS = {"w": jnp.float32(0.5), "b": jnp.asarray([[0.1, -0.2, 0.3], [-0.3, 0.2, 0.0],
                                                    [0.05, 0.05, 0.05]], jnp.float32)}
Y = jnp.asarray([0, 1, 1, 0], jnp.int32)


def plain(*args, **kw):
  """A SamplerConfig with each step's own noise and no x0 calibration (the library default fits
  both to a trained denoiser, see `fitting`)."""
  kw.setdefault("variance", "ddim")
  kw.setdefault("calibrate_x0", False)
  return SamplerConfig(*args, **kw)


def toy_apply(params, x, t, y):
  """A tiny conditional 'denoiser': eps = w x + b[y] + 0.01 t (label K = null)."""
  return (params["w"] * x + params["b"][y][:, None, :]
          + 0.01 * t.astype(jnp.float32)[:, None, None])


@functools.cache
def jitted(sampler="ddim", num_steps=4, eta=1.0, cfg_scale=1.0, guidance=None, traj=False,
           apply=toy_apply):
  cfg = plain(sampler, num_steps, eta, cfg_scale, None)
  return jax.jit(make_sampler(apply, SCHED, cfg, K, guidance, traj), static_argnames="shape")


def run(key=0, **kw):
  return jitted(**kw)(PARAMS, None, jax.random.key(key), Y, (B, T, C))


def test_sampler_config():
  c = ml_collections.ConfigDict(dict(sampler="ddpm", num_steps=7, eta=0.0, cfg_scale=2.0,
                                     batch_size=3, counts="match", clip_x0=0.0, variance="ddim"))
  sc = from_mapping(SamplerConfig, c)
  assert sc == plain("ddpm", 7, 0.0, 2.0, None, batch_size=3, calibrate_x0=True)
  assert sc.clip is None and sc.clip_x0 == 0.0
  c.clip_x0 = 3.0
  assert from_mapping(SamplerConfig, c).clip == 3.0
  for bad in [dict(sampler="euler"), dict(num_steps=0), dict(eta=1.5), dict(clip_x0=-1.0),
              dict(batch_size=0)]:
    with pytest.raises(ValueError):
      SamplerConfig(**bad)
  with pytest.raises(ValueError, match="sampling.batch_sise"):
    from_mapping(SamplerConfig, {"batch_sise": 3}, "sampling.")


def test_plan():
  p = sampling_plan(SCHED, plain("ddim", 4, 1.0))
  np.testing.assert_array_equal(p.index, np.arange(4))
  np.testing.assert_array_equal(p.t, [39, 29, 19, 9])
  np.testing.assert_array_equal(p.t_prev, [29, 19, 9, -1])
  assert float(p.alpha_bar_prev[-1]) == 1.0 and float(p.sigma[-1]) == 0.0
  assert np.all(np.asarray(p.sigma[:-1]) > 0)
  np.testing.assert_allclose(p.sigma, ddim_sigma(SCHED, p.t, p.t_prev, 1.0), rtol=1e-5)
  np.testing.assert_allclose(p.alpha_bar, SCHED.alpha_bars[p.t], rtol=1e-6)
  assert np.all(np.asarray(sampling_plan(SCHED, plain("ddim", 4, 0.0)).sigma) == 0)
  q = sampling_plan(SCHED, plain("ddpm", 4, 1.0))
  np.testing.assert_array_equal(q.t, np.arange(39, -1, -1))
  np.testing.assert_allclose(q.sigma[:-1] ** 2, SCHED.posterior_variance[39:0:-1], rtol=1e-4)


def _count_eqns(jaxpr):
  n = 0
  for eqn in jaxpr.eqns:
    n += 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          n += _count_eqns(inner if hasattr(inner, "eqns") else inner.jaxpr)
  return n


def _count_scans(jaxpr):
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      found.append(eqn.params["length"])
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          found += _count_scans(inner if hasattr(inner, "eqns") else inner.jaxpr)
  return found


@pytest.mark.parametrize("sampler,steps,cfg", [("ddim", 4, 1.0), ("ddpm", 40, 3.0)])
def test_jaxpr_has_one_scan(sampler, steps, cfg):
  fn = jitted(sampler=sampler, num_steps=4, cfg_scale=cfg)
  jaxpr = jax.make_jaxpr(functools.partial(fn, shape=(B, T, C)))(PARAMS, None,
                                                                  jax.random.key(0), Y)
  assert _count_scans(jaxpr.jaxpr) == [steps]
  # No unrolled loop: the program does not grow with the number of steps.
  small = jax.make_jaxpr(functools.partial(jitted(sampler="ddim", num_steps=2, cfg_scale=cfg),
                                           shape=(B, T, C)))(PARAMS, None, jax.random.key(0), Y)
  if sampler == "ddim":
    assert _count_scans(small.jaxpr) == [2]
    assert _count_eqns(small.jaxpr) == _count_eqns(jaxpr.jaxpr) > 10


@pytest.mark.parametrize("sampler,cfg_scale", [("ddim", 1.0), ("ddpm", 3.0)])
def test_scan_equals_python_loop(sampler, cfg_scale):
  cfg = plain(sampler, 4, 1.0, cfg_scale)
  parts = make_sampler_parts(toy_apply, SCHED, cfg, K)
  key = jax.random.key(3)
  got = jitted(sampler=sampler, cfg_scale=cfg_scale)(PARAMS, None, key, Y, (B, T, C))
  if sampler == "ddim":
    # 1) The same stepper in a Python loop.
    x, k_steps = parts.init(key, (B, T, C))
    step = jax.jit(parts.stepper(PARAMS, None, Y, k_steps))
    for i in range(parts.plan.t.shape[0]):
      x, _ = step(x, jax.tree_util.tree_map(lambda a, i=i: a[i], parts.plan))
    np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6)
  # 2) An independent loop over the diffusion maths; explicit classifier-free guidance (the
  # null label is K); cfg_scale = 1 is the plain conditional model.
  k_init, k_steps = jax.random.split(key)
  plan = jax.tree_util.tree_map(jnp.asarray, parts.plan)

  @jax.jit
  def ref_step(x, i):
    t = plan.t[i]
    tb = jnp.full((B,), t, jnp.int32)
    eps = toy_apply(PARAMS, x, tb, Y)
    if cfg_scale != 1.0:
      unc = toy_apply(PARAMS, x, tb, jnp.full_like(Y, K))
      eps = unc + cfg_scale * (eps - unc)
    noise = jax.random.normal(jax.random.fold_in(k_steps, i), x.shape, jnp.float32)
    if sampler == "ddim":
      return ddim_step(SCHED, x, t, plan.t_prev[i], eps, noise, eta=1.0)
    return ddpm_step(SCHED, x, t, eps, noise)

  x = jax.random.normal(k_init, (B, T, C), jnp.float32)
  for i in range(plan.t.shape[0]):
    x = ref_step(x, jnp.int32(i))
  np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


def test_keys_determinism():
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - c))) > 0.1
  assert a.shape == (B, T, C) and a.dtype == jnp.float32


def test_cfg_scale_changes_samples():
  a, b = run(0, cfg_scale=1.0), run(0, cfg_scale=3.0)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def _zeros(gparams, x_t, x0_hat, y, info):
  return jnp.zeros_like(x_t)


@pytest.mark.parametrize("sampler,cfg_scale", [("ddim", 1.0), ("ddpm", 3.0)])
def test_zero_guidance_bit_identical(sampler, cfg_scale):
  np.testing.assert_array_equal(run(5, sampler=sampler, cfg_scale=cfg_scale),
                                run(5, sampler=sampler, cfg_scale=cfg_scale, guidance=_zeros))


def _combined(g, x_t, x0_hat, y, info):
  """Three probes weighted by gparams: a constant shift at the last step (t = 0), a consistency
  check of info.x0_fn (zero if x0_fn(x_t) == x0_hat, amplified), and a gradient through the
  denoiser (pull towards small x0_hat)."""
  last = jnp.where(info.t == 0, g["last"], 0.0) * jnp.ones_like(x_t)
  check = g["check"] * 1e3 * (info.x0_fn(x_t) - x0_hat)
  pull = g["pull"] * jax.grad(lambda x: jnp.sum(info.x0_fn(x) ** 2))(x_t)
  assert info.sigma.shape == () and info.alpha_bar.shape == ()
  return last + check + pull


def test_guidance_hook_ddpm():
  fn = jitted(sampler="ddpm", cfg_scale=3.0, guidance=_combined)
  g = lambda last=0.0, check=0.0, pull=0.0: {k: jnp.float32(v) for k, v in
                                             dict(last=last, check=check, pull=pull).items()}
  go = lambda gp: fn(PARAMS, gp, jax.random.key(2), Y, (B, T, C))
  base = go(g())
  np.testing.assert_array_equal(base, run(2, sampler="ddpm", cfg_scale=3.0))
  # A constant shift at the last step (t = 0, no noise) moves the output by exactly the shift.
  np.testing.assert_allclose(go(g(last=0.25)) - base, 0.25, atol=1e-6)
  # x0_fn reproduces x0_hat (classifier-free guidance included).
  np.testing.assert_allclose(go(g(check=1.0)), base, atol=1e-3)
  # Differentiating through the denoiser towards small ||x0_hat||^2 shrinks the samples.
  assert float(jnp.linalg.norm(go(g(pull=-0.01)))) < float(jnp.linalg.norm(base)) - 0.1


def test_trajectory():
  x, traj = run(0, traj=True)
  assert traj.shape == (4, B, T, C)
  np.testing.assert_array_equal(x, run(0))
  # The last step goes to clean data with sigma = 0: the sample is the last x0_hat.
  np.testing.assert_allclose(x, traj[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1, 1.0), ("ddim", 200, 0.0)])
def test_exact_denoiser_recovers_gaussian_data(sampler, steps, eta):
  """Data N(m, s^2) elementwise has a closed-form optimal eps; samples must have mean m, std s."""
  m, s = 0.5, 0.3
  sched = make_schedule("ldm_linear", 200, 5e-4, 0.1)  # alpha_bar_T ~ 6e-4: x_T ~ N(0, 1) holds

  def oracle(params, x, t, y):
    ab = sched.alpha_bars[t][:, None, None]
    # E[eps | x_t] for x_t = sqrt(ab) x0 + sqrt(1-ab) eps, x0 ~ N(m, s^2).
    return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * s**2 + 1 - ab)

  fn = jax.jit(make_sampler(oracle, sched, plain(sampler, steps, eta), K),
               static_argnames="shape")
  x = np.asarray(fn({}, None, jax.random.key(0), jnp.zeros((2000,), jnp.int32), (5, 2)))
  assert abs(x.mean() - m) < 0.02
  assert abs(x.std() / s - 1) < 0.04


SCHED200 = make_schedule("ldm_linear", 200, 5e-4, 0.1)


def _gauss_oracle(m, s):
  """E[eps | x_t] for x0 ~ N(m, s[y]^2) elementwise (s: one std per class)."""
  s = jnp.asarray(s, jnp.float32)

  def oracle(params, x, t, y):
    ab = SCHED200.alpha_bars[t][:, None, None]
    sy = s[y][:, None, None]
    return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * sy**2 + 1 - ab)
  return oracle


def _gauss_gamma(plan, s):
  ab = np.asarray(plan.alpha_bar, np.float64)
  return (1 - ab) / (ab * s**2 + 1 - ab)  # E[eps_hat^2] under the oracle, closed form


def test_analytic_extra_var_closed_form():
  # Written in x_t and x0, the DDIM-family step's mean is a x_t + c x0; given x_t alone, x_s has
  # variance sigma^2 + c^2 Var(x0 | x_t), and Var(x0 | x_t) is closed form for Gaussian x0.
  s = 2.0
  plan = sampling_plan(SCHED200, plain("ddim", 5, 1.0))
  ab, abp, sig = (np.asarray(a, np.float64) for a in (plan.alpha_bar, plan.alpha_bar_prev,
                                                       plan.sigma))
  var_x0 = s**2 * (1 - ab) / (ab * s**2 + 1 - ab)
  c = np.sqrt(abp) - np.sqrt(np.maximum(1 - abp - sig**2, 0)) * np.sqrt(ab / (1 - ab))
  got = np.asarray(analytic_extra_var(ab, abp, sig, _gauss_gamma(plan, s)))
  np.testing.assert_allclose(got, c**2 * var_x0, rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(analytic_extra_var(ab, abp, sig, 1.0)) == 0)  # x0 known: no extra


def test_analytic_variance_fixes_few_step_under_dispersion():
  """Gaussian data, exact denoiser, DDIM-5 with eta = 1: the plain step's samples are too
  narrow; with the exact gamma every step's conditional is exact, so the std is s."""
  m, s = 0.5, 2.0
  y = jnp.zeros((4000,), jnp.int32)
  plan = sampling_plan(SCHED200, plain("ddim", 5, 1.0))
  stds = {}
  for variance in ("ddim", "analytic"):
    cfg = plain("ddim", 5, 1.0, variance=variance)
    gamma = _gauss_gamma(plan, s) if variance == "analytic" else None
    fn = jax.jit(make_sampler(_gauss_oracle(m, [s]), SCHED200, cfg, K, gamma=gamma),
                 static_argnames="shape")
    x = np.asarray(fn({}, None, jax.random.key(1), y, (3, 2)))
    assert abs(x.mean() - m) < 0.06
    stds[variance] = x.std() / s
  assert stds["ddim"] < 0.9, stds
  assert abs(stds["analytic"] - 1) < 0.03, stds


def test_analytic_variance_validation_and_identity():
  with pytest.raises(ValueError, match="variance"):
    SamplerConfig(variance="large")
  with pytest.raises(ValueError, match="DDIM sampler only"):
    SamplerConfig("ddpm", variance="analytic")
  cfg = plain("ddim", 4, 1.0, variance="analytic")
  with pytest.raises(ValueError, match="needs gamma"):
    make_sampler(toy_apply, SCHED, cfg, K)
  with pytest.raises(ValueError, match="gamma must have shape"):
    make_sampler(toy_apply, SCHED, cfg, K, gamma=np.ones((3, K, C)))
  # gamma = 1 (x0 determined by x_t) adds nothing: the plain sampler's samples.
  ddim = jax.jit(make_sampler(toy_apply, SCHED, plain("ddim", 4, 1.0), K),
                 static_argnames="shape")
  ana = jax.jit(make_sampler(toy_apply, SCHED, cfg, K, gamma=np.ones((4, K, C))),
                static_argnames="shape")
  key = jax.random.key(2)
  np.testing.assert_allclose(ana(PARAMS, None, key, Y, (T, C)), ddim(PARAMS, None, key, Y, (T, C)),
                             rtol=1e-6, atol=1e-6)


def test_estimate_gamma_matches_closed_form_per_class():
  m, s = 0.5, np.array([0.5, 2.0])  # class 0 narrow, class 1 wide; i.i.d. entries: flat spectrum
  cfg = plain("ddim", 5, 1.0)
  plan = sampling_plan(SCHED200, cfg)
  rng = np.random.default_rng(0)
  y = (np.arange(6000) % 2).astype(np.int32)
  x0 = (m + s[y][:, None, None] * rng.standard_normal((6000, 4, 2))).astype(np.float32)
  g = estimate_gamma(_gauss_oracle(m, s), {}, SCHED200, cfg, x0, y, jax.random.key(3), K,
                     batch_size=512, draws=2)
  assert g.shape == (5, K, 2, 4)
  for k in range(K):
    want = np.broadcast_to(_gauss_gamma(plan, s[k])[:, None, None], (5, 2, 4))
    np.testing.assert_allclose(g[:, k], want, rtol=0.08)  # Monte Carlo: ~2% SE per cell
    np.testing.assert_allclose(g[:, k].mean(axis=(1, 2)), want[:, 0, 0], rtol=0.02)
  g2 = estimate_gamma(_gauss_oracle(m, s), {}, SCHED200, cfg, x0, y, jax.random.key(3), K,
                      batch_size=512, draws=2)
  np.testing.assert_array_equal(g, g2)


def _shrunk_oracle(m, s, shrink, offset):
  """The Gaussian oracle with its x0_hat pulled towards m by `shrink` and shifted by `offset`: a
  miscalibrated denoiser, as a trained one is at high noise."""
  good = _gauss_oracle(m, s)

  def apply(params, x, t, y):
    ab = SCHED200.alpha_bars[t][:, None, None]
    x0 = (x - jnp.sqrt(1 - ab) * good(params, x, t, y)) / jnp.sqrt(ab)
    x0 = m + shrink * (x0 - m) + offset
    return (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
  return apply


def _gauss_data(m, s, n, shape, seed):
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % len(s)).astype(np.int32)
  s = np.asarray(s, np.float64)
  return (m + s[y][:, None, None] * rng.standard_normal((n,) + shape)).astype(np.float32), y


def test_calibration_recovers_the_posterior_mean():
  """A denoiser whose x0_hat is E[x0 | x_t] shrunk by 0.7 and shifted by 0.3: the fitted linear
  recalibration gives back E[x0 | x_t] (closed form) at every step, and the calibrated
  predictor's gamma is the exact denoiser's (closed form)."""
  m, s = 0.5, np.array([0.5, 2.0])
  cfg = plain("ddim", 5, 1.0)
  plan = sampling_plan(SCHED200, cfg)
  bad, good = _shrunk_oracle(m, s, 0.7, 0.3), _gauss_oracle(m, s)
  x0, y = _gauss_data(m, s, 6000, (4, 2), 5)
  cal = estimate_calibration(bad, {}, SCHED200, cfg, x0, y, jax.random.key(6), K,
                             batch_size=512, draws=2)
  assert cal.slope.shape == cal.intercept.shape == (5, K, 2, 4)
  # Where x0_hat varies enough to pin a slope down (the less noisy steps), it is 1 / 0.7.
  np.testing.assert_allclose(cal.slope[2:], 1 / 0.7, rtol=0.1)
  # The calibrated prediction is E[x0 | x_t] at every step, on fresh x_t.
  xv, yv = _gauss_data(m, s, 2000, (4, 2), 7)
  xv, yv = jnp.asarray(xv), jnp.asarray(yv)
  fixed = make_predictor(bad, SCHED200, cfg, K, calibration=cal)
  raw = make_predictor(bad, SCHED200, cfg, K)
  for i, t in enumerate(np.asarray(plan.t)):
    tb = jnp.full((len(yv),), int(t), jnp.int32)
    x_t = SCHED200.sqrt_alpha_bars[t] * xv + SCHED200.sqrt_one_minus_alpha_bars[t] * \
        jax.random.normal(jax.random.key(i), xv.shape)
    x0_of = {name: np.asarray(gaussian.x0_from_eps(SCHED200, x_t, tb, e)) for name, e in (
        ("want", good({}, x_t, tb, yv)), ("fixed", fixed({}, x_t, t, yv, i)),
        ("raw", raw({}, x_t, t, yv, i)))}
    for k in range(K):
      sel = np.asarray(yv) == k
      err = np.sqrt(np.mean(np.square(x0_of["fixed"] - x0_of["want"])[sel]))
      err_raw = np.sqrt(np.mean(np.square(x0_of["raw"] - x0_of["want"])[sel]))
      assert err < 0.06 * s[k] and err_raw > 0.15, (t, k, err, err_raw)
  g = estimate_gamma(bad, {}, SCHED200, cfg, x0, y, jax.random.key(3), K, batch_size=512,
                     draws=2, calibration=cal)
  for k in range(K):
    np.testing.assert_allclose(g[:, k].mean(axis=(1, 2)), _gauss_gamma(plan, s[k]), rtol=0.03)


def test_calibrated_sampler_restores_the_spread():
  """DDIM-5 with the analytic variance from a shrunk denoiser: too narrow and off-centre as it
  is, right once x0_hat is recalibrated (gamma estimated for each predictor, as the pipeline
  does)."""
  m, s = 0.5, 2.0
  bad = _shrunk_oracle(m, [s], 0.7, 0.3)
  x0, y = _gauss_data(m, [s], 4000, (3, 2), 8)
  out = {}
  for calibrate in (False, True):
    cfg = plain("ddim", 5, 1.0, variance="analytic", calibrate_x0=calibrate)
    cal = (estimate_calibration(bad, {}, SCHED200, cfg, x0, y, jax.random.key(9), K,
                                batch_size=500) if calibrate else None)
    gamma = estimate_gamma(bad, {}, SCHED200, cfg, x0, y, jax.random.key(9), K,
                           batch_size=500, calibration=cal)
    fn = jax.jit(make_sampler(bad, SCHED200, cfg, K, gamma=gamma, calibration=cal),
                 static_argnames="shape")
    x = np.asarray(fn({}, None, jax.random.key(1), jnp.zeros((4000,), jnp.int32), (3, 2)))
    out[calibrate] = (x.mean() - m, x.std() / s)
  assert abs(out[False][0]) > 0.2 or abs(out[False][1] - 1) > 0.1, out
  assert abs(out[True][0]) < 0.06 and abs(out[True][1] - 1) < 0.04, out


def test_calibration_edge_cells():
  """A class without series gets the identity; where x0_hat does not depend on x_t at all only
  its offset is fitted (slope 1), which moves it onto the class mean of x0."""
  cfg = plain("ddim", 3, 1.0)

  def constant(params, x, t, y):  # x0_hat = 0.3 everywhere, whatever x_t is
    ab = SCHED200.alpha_bars[t][:, None, None]
    return (x - jnp.sqrt(ab) * 0.3) / jnp.sqrt(1 - ab)

  x0, _ = _gauss_data(1.0, [0.5], 500, (4, 2), 11)
  y = np.zeros(500, np.int32)  # class 1 has no series
  cal = estimate_calibration(constant, {}, SCHED200, cfg, x0, y, jax.random.key(0), K)
  np.testing.assert_array_equal(cal.slope[:, 1], 1.0)
  np.testing.assert_array_equal(cal.intercept[:, 1], 0.0)
  np.testing.assert_array_equal(cal.slope[:, 0], 1.0)
  d = dct_matrix(4)
  want = np.einsum("ft,ntc->cf", d, x0) / 500 - np.einsum("ft,tc->cf", d, np.full((4, 2), 0.3))
  np.testing.assert_allclose(cal.intercept[:, 0], np.broadcast_to(want, (3, 2, 4)), atol=1e-4)
  with pytest.raises(ValueError, match="max_slope"):
    estimate_calibration(constant, {}, SCHED200, cfg, x0, y, jax.random.key(0), K, max_slope=1)


def test_calibration_validation_identity_and_guidance_view():
  with pytest.raises(ValueError, match="calibrate_x0 must be a bool"):
    SamplerConfig(calibrate_x0="yes")
  assert from_mapping(SamplerConfig, {"calibrate_x0": True}).calibrate_x0 is True
  cfg = plain("ddim", 4, 1.0, calibrate_x0=True)
  ones, zeros = np.ones((4, K, C, T), np.float32), np.zeros((4, K, C, T), np.float32)
  with pytest.raises(ValueError, match="needs calibration"):
    make_sampler(toy_apply, SCHED, cfg, K)
  with pytest.raises(ValueError, match="needs calibration"):
    make_sampler(toy_apply, SCHED, plain("ddim", 4, 1.0), K, calibration=(ones, zeros))
  with pytest.raises(ValueError, match="calibration must be"):
    make_sampler(toy_apply, SCHED, cfg, K, calibration=(ones[:3], zeros[:3]))
  with pytest.raises(ValueError, match="finite"):
    make_sampler(toy_apply, SCHED, cfg, K, calibration=(ones * np.nan, zeros))
  key = jax.random.key(2)
  jit = lambda f: jax.jit(f, static_argnames="shape")
  # The identity calibration changes nothing.
  ddim = jit(make_sampler(toy_apply, SCHED, plain("ddim", 4, 1.0), K))
  ident = jit(make_sampler(toy_apply, SCHED, cfg, K, calibration=(ones, zeros)))
  np.testing.assert_allclose(ident(PARAMS, None, key, Y, (T, C)),
                             ddim(PARAMS, None, key, Y, (T, C)), rtol=1e-5, atol=1e-5)
  # A real calibration changes the samples, and guidance sees the same calibrated x0_hat
  # through StepInfo.x0_fn as in its x0_hat argument (a shift of 100 x their gap changes nothing).
  rng = np.random.default_rng(0)
  cal = ((1 + 0.2 * rng.standard_normal((4, K, C, T))).astype(np.float32),
         (0.1 * rng.standard_normal((4, K, C, T))).astype(np.float32))
  calibrated = jit(make_sampler(toy_apply, SCHED, cfg, K, calibration=cal))
  gap = lambda g, x_t, x0_hat, y, info: 100.0 * (info.x0_fn(x_t) - x0_hat)
  guided = jit(make_sampler(toy_apply, SCHED, cfg, K, guidance_fn=gap, calibration=cal))
  a = np.asarray(calibrated(PARAMS, None, key, Y, (T, C)))
  assert np.abs(a - np.asarray(ddim(PARAMS, None, key, Y, (T, C)))).max() > 1e-2
  np.testing.assert_allclose(guided(PARAMS, None, key, Y, (T, C)), a, rtol=1e-4, atol=1e-4)


def test_dct_matrix_orthonormal():
  d = dct_matrix(6)
  np.testing.assert_allclose(d @ d.T, np.eye(6), atol=1e-12)
  np.testing.assert_allclose(d[0], np.full(6, 1 / np.sqrt(6)))


def test_spectral_analytic_variance_restores_levels_and_wiggles():
  """Series = level (std sl, constant in time) + white wiggles (std se). The exact denoiser is
  diagonal in the DCT basis (level = frequency 0). DDIM-5 with eta = 1 shrinks the levels;
  per-frequency gamma restores both parts; one white gamma cannot split them."""
  t_len, sl, se = 8, 1.5, 0.5
  d = jnp.asarray(dct_matrix(t_len), jnp.float32)
  v = jnp.asarray([se**2 + t_len * sl**2] + [se**2] * (t_len - 1))  # x0 covariance spectrum

  def oracle(params, x, t, y):
    ab = SCHED200.alpha_bars[t][:, None, None]
    lam = ab * v[None, :, None] + 1 - ab  # [B, F, 1]
    return jnp.einsum("ft,bfc->btc", d, jnp.sqrt(1 - ab) * jnp.einsum("ft,btc->bfc", d, x) / lam)

  cfg = plain("ddim", 5, 1.0, variance="analytic")
  plan = sampling_plan(SCHED200, cfg)
  ab = np.asarray(plan.alpha_bar, np.float64)[:, None]
  gamma_f = (1 - ab) / (ab * np.asarray(v)[None, :] + 1 - ab)  # [S, F], closed form
  y = jnp.zeros((3000,), jnp.int32)

  def split(gamma, variance):
    c = plain("ddim", 5, 1.0, variance=variance)
    fn = jax.jit(make_sampler(oracle, SCHED200, c, K, gamma=gamma), static_argnames="shape")
    x = np.asarray(fn({}, None, jax.random.key(4), y, (t_len, 1)))[..., 0]
    level = x.mean(axis=1)
    return level.std(), (x - level[:, None]).std() / np.sqrt((t_len - 1) / t_len)

  lv, wg = split(None, "ddim")
  assert lv < 0.85 * sl, (lv, wg)
  lv, wg = split(gamma_f[:, None, None, :], "analytic")
  assert abs(lv / sl - 1) < 0.05 and abs(wg / se - 1) < 0.05, (lv, wg)
  lv_w, wg_w = split(gamma_f.mean(axis=1), "analytic")  # white: one gamma for all frequencies
  assert lv_w < 0.9 * sl and wg_w > 1.1 * se, (lv_w, wg_w)


def test_class_counts():
  np.testing.assert_array_equal(class_counts([90, 10]), [90, 10])
  np.testing.assert_array_equal(class_counts([90, 10], total=20), [18, 2])
  np.testing.assert_array_equal(class_counts([2, 1], total=10), [7, 3])
  assert class_counts([5, 3, 1], total=7).sum() == 7
  np.testing.assert_array_equal(class_counts([90, 10], "balanced"), [50, 50])
  np.testing.assert_array_equal(class_counts([90, 11], "balanced"), [51, 50])
  np.testing.assert_array_equal(class_counts([1, 1, 1], "balanced", total=8), [3, 3, 2])
  np.testing.assert_array_equal(class_counts([90, 10], "7,3"), [7, 3])
  for args in [([90, 10], "7"), ([90, 10], "a,b"), ([90, 10], "-1,3"), ([-1, 2], "match")]:
    with pytest.raises(ValueError):
      class_counts(*args)
  with pytest.raises(ValueError):
    class_counts([90, 10], "7,3", total=11)


def test_generate_pads_once_and_writes(tmp_path):
  traces = []

  def counting(params, gparams, key, y, shape):
    traces.append(shape)
    return make_sampler(toy_apply, SCHED, plain("ddim", 4), K)(params, gparams, key, y,
                                                                      shape)

  fn = jax.jit(counting, static_argnames="shape")
  key = jax.random.key(9)
  x, y = generate(fn, PARAMS, None, key, [3, 4], (T, C), batch_size=3, progress=False)
  assert x.shape == (7, T, C) and x.dtype == np.float32
  np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1, 1])
  assert len(traces) == 1  # One compiled shape, including the padded last batch.
  np.testing.assert_array_equal(x[3:6], fn(PARAMS, None, jax.random.fold_in(key, 1),
                                            jnp.asarray([1, 1, 1], jnp.int32), (3, T, C)))
  last = fn(PARAMS, None, jax.random.fold_in(key, 2), jnp.asarray([1, 0, 0], jnp.int32), (3, T, C))
  np.testing.assert_array_equal(x[6], last[0])
  path = tmp_path / "synthetic" / "unguided.npz"
  save_dataset(str(path), x * 2.0 + 1.0, y, channel_names=("a", "b", "c"),
               class_names=("no", "yes"), method=np.asarray("unguided"))
  back = load_dataset(str(path))
  np.testing.assert_allclose(back.x, x * 2 + 1, rtol=1e-6)
  np.testing.assert_array_equal(back.y, y)
  assert back.channel_names == ("a", "b", "c") and back.class_names == ("no", "yes")
  with np.load(path, allow_pickle=False) as f:
    assert f["y"].dtype == np.int32 and str(f["method"]) == "unguided"


def test_configs_convert():
  for name in ("default", "tiny", "default:paper"):
    cfg = experiment_config(load_config(name))
    sc, d = cfg.sampling, cfg.diffusion
    assert sc.clip is None and sc.variance == "analytic" and sc.calibrate_x0
    assert sampling_plan(d.make_schedule(), sc).t.shape == (sc.num_steps,)
