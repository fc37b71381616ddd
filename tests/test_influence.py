"""Tests for tardiff_jax.influence: cache, influence scores, their gradients and the guidance
hook."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tardiff_jax.config import from_mapping
from tardiff_jax.influence import cache as cache_lib
from tardiff_jax.influence import guidance as guidance_lib
from tardiff_jax.influence import scores

T, C = 6, 3


class TinyNet(nn.Module):
  """Per-step tanh MLP, a causal running mean (a GRU-like summary) and a linear head."""
  hidden: int = 5
  num_out: int = 1

  @nn.compact
  def __call__(self, x):  # x[B, T, C] -> [B, num_out]
    h = jnp.tanh(nn.Dense(self.hidden)(x))
    run = jnp.cumsum(h, axis=1) / jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
    z = jnp.tanh(nn.Dense(self.hidden)(run[:, -1]) + jnp.mean(h, axis=1))
    return nn.Dense(self.num_out)(z)


def _binary_model(seed=0):
  net = TinyNet(num_out=1)
  params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, T, C)))

  def logits_fn(p, x):
    return net.apply(p, x)

  def loss_fn(p, x, y):
    logit = net.apply(p, x[None])[0, 0]
    return optax.sigmoid_binary_cross_entropy(logit, y.astype(logit.dtype))

  return params, logits_fn, loss_fn


def _multiclass_model(k=3, seed=1):
  net = TinyNet(num_out=k)
  params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, T, C)))

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x[None])[0], y)

  return params, (lambda p, x: net.apply(p, x)), loss_fn


@pytest.fixture(scope="module")
def setup():
  params, logits_fn, loss_fn = _binary_model()
  rng = np.random.default_rng(0)
  xg = rng.normal(size=(40, T, C)).astype(np.float32)
  yg = (rng.random(40) < 0.25).astype(np.int32)
  xg[yg == 1] += 0.7  # Make the classes differ so the gradients are informative.
  G = cache_lib.build_guidance_cache(loss_fn, params, xg, yg, batch_size=7).G
  x = rng.normal(size=(8, T, C)).astype(np.float32)
  y = np.array([0, 1, 0, 1, 1, 0, 0, 1], np.int32)
  return dict(params=params, logits_fn=logits_fn, loss_fn=loss_fn, G=G, xg=xg, yg=yg,
              x=jnp.asarray(x), y=jnp.asarray(y))


@functools.cache
def _per_sample_grads_fn(loss_fn):
  return jax.jit(jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0)))


def _per_sample_grads(loss_fn, params, x, y):
  return _per_sample_grads_fn(loss_fn)(params, x, y)


# Cached jitted helpers: one compile per (loss_fn, variant, shape) across the module.
@functools.cache
def _scores(loss_fn, variant):
  """jitted (params, G, x, y) -> influence[B]."""
  return jax.jit(lambda p, G, x, y: scores.influence(loss_fn, p, G, x, y, variant))


@functools.cache
def _input_grad(loss_fn, variant):
  """jitted (params, G, x, y) -> grad_x influence [B, T, C]."""
  return jax.jit(lambda p, G, x, y: scores.influence_input_grad(loss_fn, p, G, x, y, variant))


def _explicit_dot(loss_fn, params, G, x, y):
  g = _per_sample_grads(loss_fn, params, x, y)
  return jax.vmap(lambda gi: scores.tree_vdot(gi, G))(g), g


def test_dot_equals_explicit_gradient_product(setup):
  s = setup
  got = _scores(s["loss_fn"], "dot")(s["params"], s["G"], s["x"], s["y"])
  want, _ = _explicit_dot(s["loss_fn"], s["params"], s["G"], s["x"], s["y"])
  assert got.shape == (8,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert np.ptp(np.asarray(want)) > 1e-3  # Non-trivial scores: the check can fail.


def test_cosine_equals_explicit(setup):
  s = setup
  got = _scores(s["loss_fn"], "cosine")(s["params"], s["G"], s["x"], s["y"])
  dots, g = _explicit_dot(s["loss_fn"], s["params"], s["G"], s["x"], s["y"])
  norms = jax.vmap(scores.tree_norm)(g)
  np.testing.assert_allclose(got, dots / norms, rtol=1e-5, atol=1e-7)


def test_batch_score_is_normalised_cosine_of_batch_gradient(setup):
  s = setup
  got = _scores(s["loss_fn"], "batch")(s["params"], s["G"], s["x"], s["y"])
  g = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0),
                             _per_sample_grads(s["loss_fn"], s["params"], s["x"], s["y"]))
  want = scores.tree_vdot(g, s["G"]) / (scores.tree_norm(g) * scores.tree_norm(s["G"]))
  np.testing.assert_allclose(got, np.full(8, want), rtol=1e-5)
  assert -1.0 <= float(want) <= 1.0


def _fd_directional(f, x, v, h):
  return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.parametrize("variant", ["dot", "cosine", "classifier", "batch"])
def test_input_grad_matches_central_differences(setup, variant):
  s = setup
  loss_fn, params, G, x, y = s["loss_fn"], s["params"], s["G"], s["x"], s["y"]
  J = _input_grad(loss_fn, variant)(params, G, x, y)
  assert J.shape == x.shape
  v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  if variant == "batch":
    f = jax.jit(lambda xb: scores.batch_score(loss_fn, params, G, xb, y))
    fd = _fd_directional(f, x, v, 1e-2)
    np.testing.assert_allclose(jnp.sum(J * v), fd, rtol=2e-2, atol=1e-5)
  else:
    f = lambda xb: _scores(loss_fn, variant)(params, G, xb, y)
    fd = _fd_directional(f, x, v, 1e-2)  # Per sample: sample i only depends on x_i.
    an = jnp.sum(J * v, axis=(1, 2))
    scale = float(jnp.max(jnp.abs(an)))
    assert scale > 0
    np.testing.assert_allclose(an, fd, rtol=2e-2, atol=2e-2 * scale)


@functools.partial(jax.jit, static_argnums=0)
def _guide_loss(loss_fn, p, xg, yg):
  return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, xg, yg))


def test_sign_one_sgd_step_on_positive_influence_lowers_guidance_loss(setup):
  s = setup
  loss_fn, params, G = s["loss_fn"], s["params"], s["G"]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(32, T, C)).astype(np.float32))
  y = jnp.asarray((rng.random(32) < 0.5).astype(np.int32))
  delta = np.asarray(_scores(loss_fn, "dot")(params, G, x, y))
  base = _guide_loss(loss_fn, params, jnp.asarray(s["xg"]), jnp.asarray(s["yg"]))
  eta = 1e-2

  @jax.jit
  def loss_after_step(i):
    g = jax.grad(loss_fn)(params, x[i], y[i])
    p2 = jax.tree_util.tree_map(lambda a, b: a - eta * b, params, g)
    return _guide_loss(loss_fn, p2, jnp.asarray(s["xg"]), jnp.asarray(s["yg"]))

  ipos, ineg = int(np.argmax(delta)), int(np.argmin(delta))
  assert delta[ipos] > 0 > delta[ineg]
  change_pos = float(loss_after_step(ipos) - base)
  change_neg = float(loss_after_step(ineg) - base)
  assert change_pos < 0 < change_neg
  # First order: the change is -eta * Delta.
  np.testing.assert_allclose(change_pos, -eta * delta[ipos], rtol=0.1)
  np.testing.assert_allclose(change_neg, -eta * delta[ineg], rtol=0.1)


def test_guidance_with_positive_scale_raises_influence(setup):
  """A small step along the hook's shift (w > 0) raises Delta; w < 0 lowers it."""
  s = setup
  loss_fn, params, G, x, y = s["loss_fn"], s["params"], s["G"], s["x"], s["y"]
  fn = jax.jit(guidance_lib.make_influence_guidance(loss_fn, "dot", evaluate_on="x_t"))
  score = _scores(loss_fn, "dot")
  before = score(params, G, x, y)
  for w, sign in ((1e-2, 1.0), (-1e-2, -1.0)):
    shift = fn(guidance_lib.make_gparams(params, G, w), x, x, y, None)
    after = score(params, G, x + shift, y)
    assert np.all(sign * np.asarray(after - before) > 0)


def test_classifier_mode_is_grad_log_prob():
  params, logits_fn, loss_fn = _binary_model(seed=2)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(6, T, C)).astype(np.float32))
  y = jnp.asarray(np.array([0, 1, 1, 0, 1, 0], np.int32))
  J = _input_grad(loss_fn, "classifier")(params, None, x, y)

  def logp(xi, yi):
    logit = logits_fn(params, xi[None])[0, 0]
    return jnp.where(yi == 1, jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit))
  np.testing.assert_allclose(J, jax.jit(jax.vmap(jax.grad(logp)))(x, y), rtol=1e-5, atol=1e-7)

  params3, logits3, loss3 = _multiclass_model()
  y3 = jnp.asarray(np.array([0, 1, 2, 2, 1, 0], np.int32))
  J3 = _input_grad(loss3, "classifier")(params3, None, x, y3)
  logp3 = lambda xi, yi: jax.nn.log_softmax(logits3(params3, xi[None])[0])[yi]
  np.testing.assert_allclose(J3, jax.jit(jax.vmap(jax.grad(logp3)))(x, y3), rtol=1e-5,
                             atol=1e-7)


def test_none_variant_is_zero(setup):
  s = setup
  fn = guidance_lib.make_influence_guidance(s["loss_fn"], "none")
  out = fn(guidance_lib.make_gparams(s["params"], s["G"], 5.0), s["x"], s["x"], s["y"], None)
  assert out.shape == s["x"].shape and not np.any(np.asarray(out))


@pytest.mark.parametrize("variant,evaluate_on", [("dot", "x0_hat"), ("cosine", "x_t")])
def test_vmapped_guidance_equals_loop(setup, variant, evaluate_on):
  s = setup
  x_t = s["x"]
  x0 = 0.5 * s["x"] + 0.1
  scale = jnp.asarray([3.0, -2.0], jnp.float32)  # Per-class scales, indexed by y.
  gp = guidance_lib.make_gparams(s["params"], s["G"], scale)
  fn = jax.jit(guidance_lib.make_influence_guidance(s["loss_fn"], variant, evaluate_on=evaluate_on))
  full = fn(gp, x_t, x0, s["y"], None)
  single = fn  # Same function, batch of one (a second compiled shape).
  for i in range(x_t.shape[0]):
    one = single(gp, x_t[i:i + 1], x0[i:i + 1], s["y"][i:i + 1], None)
    np.testing.assert_allclose(full[i], one[0], rtol=1e-5, atol=1e-7)
  # The shift is w_y * J at the chosen input.
  xin = x0 if evaluate_on == "x0_hat" else x_t
  J = _input_grad(s["loss_fn"], variant)(s["params"], s["G"], xin, s["y"])
  np.testing.assert_allclose(full, scale[s["y"]][:, None, None] * J, rtol=1e-5, atol=1e-7)


def test_through_denoiser_is_chain_rule(setup):
  s = setup
  loss_fn, params, G, y = s["loss_fn"], s["params"], s["G"], s["y"]
  x_t = s["x"]
  a = jnp.linspace(0.5, 1.5, C)
  x0_fn = lambda xt: jnp.tanh(xt) * a  # A toy per-sample "denoiser".
  fn = guidance_lib.make_influence_guidance(loss_fn, "dot", through_denoiser=True)
  out = jax.jit(lambda gp, xt: fn(gp, xt, x0_fn(xt), y, {"x0_fn": x0_fn}))(
      guidance_lib.make_gparams(params, G, 2.0), x_t)
  J0 = _input_grad(loss_fn, "dot")(params, G, x0_fn(x_t), y)
  want = 2.0 * J0 * a * (1 - jnp.tanh(x_t) ** 2)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)


def test_clip_and_normalize(setup):
  s = setup
  gp = guidance_lib.make_gparams(s["params"], s["G"], 1.0)
  run = lambda **kw: jax.jit(guidance_lib.make_influence_guidance(s["loss_fn"], "dot", **kw))(
      gp, s["x"], s["x"], s["y"], None)
  raw = run()
  norms = np.sqrt(np.sum(np.square(raw), axis=(1, 2)))
  clip = float(np.median(norms))
  clipped = run(clip=clip)
  cn = np.sqrt(np.sum(np.square(clipped), axis=(1, 2)))
  np.testing.assert_allclose(cn, np.minimum(norms, clip), rtol=1e-5)
  unit = run(normalize=True)
  np.testing.assert_allclose(np.sqrt(np.sum(np.square(unit), axis=(1, 2))), 1.0, rtol=1e-5)
  # Directions are unchanged.
  np.testing.assert_allclose(unit * norms[:, None, None], raw, rtol=1e-4, atol=1e-7)


def test_cache_batching_equals_unbatched_mean_and_filters(setup):
  s = setup
  loss_fn, params, xg, yg = s["loss_fn"], s["params"], s["xg"], s["yg"]
  assert 0 < yg.sum() < len(yg) / 2  # Class 1 is the minority.
  g = _per_sample_grads(loss_fn, params, jnp.asarray(xg), jnp.asarray(yg))
  for filt, rows in (("all", np.arange(40)), ("minority", np.nonzero(yg == 1)[0]),
                     ("majority", np.nonzero(yg == 0)[0])):
    np.testing.assert_array_equal(cache_lib.select_rows(yg, filt), rows)
    want = jax.tree_util.tree_map(lambda a, rows=rows: jnp.mean(a[rows], axis=0), g)
    for bs in ((7, 64) if filt == "all" else (7,)):  # Padded last batch; batch > data.
      c = cache_lib.build_guidance_cache(loss_fn, params, xg, yg, batch_size=bs,
                                         class_filter=filt)
      assert c.count == len(rows) and c.class_filter == filt and not c.normalized
      jax.tree_util.tree_map(
          lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), c.G, want)
  cn = cache_lib.build_guidance_cache(loss_fn, params, xg, yg, batch_size=7, normalize=True)
  np.testing.assert_allclose(float(scores.tree_norm(cn.G)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(cn.norm, float(scores.tree_norm(s["G"])), rtol=1e-5)
  with pytest.raises(ValueError, match="class_filter"):
    cache_lib.select_rows(yg, "rare")
  with pytest.raises(ValueError, match="two classes"):
    cache_lib.select_rows(np.zeros(5, np.int32), "minority")


def test_save_load_roundtrip(setup, tmp_path):
  s = setup
  c = cache_lib.build_guidance_cache(s["loss_fn"], s["params"], s["xg"], s["yg"], batch_size=7,
                                     class_filter="minority")
  path = tmp_path / "guidance" / "cache.npz"
  cache_lib.save_cache(path, c, meta={"classifier_checkpoint": "ckpt/classifier", "step": 7})
  c2, meta = cache_lib.load_cache(path, s["params"])
  assert meta == {"classifier_checkpoint": "ckpt/classifier", "step": 7}
  assert (c2.count, c2.class_filter, c2.normalized, c2.classes) == (
      c.count, "minority", False, (1,))
  jax.tree_util.tree_map(np.testing.assert_array_equal, c2.G, c.G)
  other = _multiclass_model()[0]
  with pytest.raises(ValueError, match="leaf"):
    cache_lib.load_cache(path, other)


def test_config_validation():
  cfg = from_mapping(guidance_lib.GuidanceConfig, {"variant": "cosine", "scale": 3})
  assert cfg.variant == "cosine" and cfg.scale == 3.0 and not cfg.selects_scale
  assert guidance_lib.GuidanceConfig().selects_scale  # scale None: chosen on evaluation-val
  assert not guidance_lib.GuidanceConfig(class_scales=(1.0, 5.0)).selects_scale
  # Every scale fixed: no grid needed; one unset scale (classifier guidance's) needs it.
  fixed = {"scale": 1.0, "classifier_scale": 2.0, "batch_scale": 3.0, "scale_grid": ()}
  assert from_mapping(guidance_lib.GuidanceConfig, fixed).classifier_scale == 2.0
  with pytest.raises(ValueError, match="classifier_scale"):
    from_mapping(guidance_lib.GuidanceConfig, {**fixed, "classifier_scale": None})
  for bad in ({"variant": "dott"}, {"variant": "classifier"}, {"evaluate_on": "x0"},
              {"evaluate_on": "x_t", "through_denoiser": True}, {"clip": -1.0},
              {"cache_batch_size": 0}, {"class_filter": "rare"}, {"unknown_field": 1},
              {"scale": 1.0, "class_scales": (1.0, 2.0)}, {"scale_grid": ()}):
    with pytest.raises(ValueError):
      from_mapping(guidance_lib.GuidanceConfig, bad)
  with pytest.raises(ValueError, match="variant"):
    guidance_lib.make_influence_guidance(lambda p, x, y: 0.0, "dott")


def test_real_gru_classifier_influence():
  """The library's downstream GRU: jvp influence = explicit product; input grad is finite."""
  from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
  clf = make_classifier(ClassifierConfig(model="gru", T=T, C=C, gru_hidden=4, gru_num_layers=1))
  params = clf.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(5)
  xg = rng.normal(size=(12, T, C)).astype(np.float32)
  yg = np.array([0, 1] * 6, np.int32)
  G = cache_lib.build_guidance_cache(clf.loss_fn, params, xg, yg, batch_size=12).G
  x = jnp.asarray(rng.normal(size=(4, T, C)).astype(np.float32))
  y = jnp.asarray(np.array([0, 1, 1, 0], np.int32))
  val, J = jax.jit(lambda p, G, x, y: scores.influence_and_input_grad(clf.loss_fn, p, G, x, y))(
      params, G, x, y)
  want, _ = _explicit_dot(clf.loss_fn, params, G, x, y)
  np.testing.assert_allclose(val, want, rtol=1e-4, atol=1e-8)
  assert J.shape == x.shape and np.all(np.isfinite(np.asarray(J)))
  assert float(jnp.max(jnp.abs(J))) > 0


@pytest.mark.parametrize("variant", ["dot", "classifier"])
def test_class_balance_factors_equal_explicit_per_sample_loop(setup, variant):
  """f[c] = m / m_c with m_c the mean ||grad_x score(x_i, y_i)|| over class c, from one
  jax.grad per sample; after balancing both classes' mean shift is the overall mean."""
  s = setup
  x, y = s["x"], s["y"]
  def score(xi, yi):
    if variant == "classifier":
      return -s["loss_fn"](s["params"], xi, yi)  # grad_x log p(y | x).
    return scores.tree_vdot(jax.grad(s["loss_fn"])(s["params"], xi, yi), s["G"])
  norms = np.array([float(jnp.linalg.norm(jax.grad(score)(jnp.asarray(x[i]), y[i])))
                    for i in range(len(y))])
  want = np.array([norms.mean() / norms[y == c].mean() for c in (0, 1)])
  got = guidance_lib.class_balance_factors(s["loss_fn"], s["params"], s["G"], x, y, 3,
                                           variant=variant, batch_size=3)  # Padded batches.
  np.testing.assert_allclose(got[:2], want, rtol=1e-5)
  assert got[2] == 1.0  # No sample of class 2.
  balanced = [np.mean(got[c] * norms[y == c]) for c in (0, 1)]
  np.testing.assert_allclose(balanced, norms.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="per-sample"):
    guidance_lib.class_balance_factors(s["loss_fn"], s["params"], s["G"], x, y, 2, "batch")
