"""TimesNet with fixed periods: shapes, batch independence, periods, exactness of the Inception
shortcut, of the dense time map against the grid convs and of the DFT amplitudes, derivatives
(grad, jvp, grad of jvp) against finite differences."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.models.grid_conv import fft_size
from tardiff_jax.models.timesnet import (
  InceptionBlock,
  TimesNet,
  TokenEmbedding,
  choose_impl,
  conv_matrix_indices,
  inception_grid,
  inception_spectral,
  inception_unfold,
  period_amplitudes,
  timesnet_periods,
)

TINY = dict(d_model=4, d_ff=4, e_layers=1, top_k=2, num_kernels=2, dropout=0.1)


def random_params(init, seed, scale=0.5):
  """Random float32 params with the shapes of `init(key)` (no compile: jax.eval_shape). Model
  inits compile one threefry RNG per parameter (seconds each on this CPU); tests that only need
  some parameter values use these, and `tiny24` checks the real init."""
  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(lambda a: (scale * rng.randn(*a.shape)).astype(np.float32), shapes)


def _tiny(t, c, periods, num_classes=2, real_init=False, impl="auto", **kw):
  cfg = ClassifierConfig(model="timesnet", num_classes=num_classes, T=t, C=c, periods=periods,
                         **{**TINY, **kw})
  clf = make_classifier(cfg, impl)
  if real_init:
    return clf, clf.init(jax.random.key(0), t, c)
  return clf, random_params(clf.init, 0)


@pytest.fixture(scope="module")
def tiny24():
  """Binary tiny TimesNet at T=24 (the "dense" TimesBlock) and its jitted logits (batch 4)."""
  clf, params = _tiny(24, 3, (8, 6), real_init=True)
  return clf, params, jax.jit(clf.logits_fn)


def _check_batch_independence(f, params, x):
  logits = f(params, x)
  assert np.all(np.isfinite(logits))
  # A sample's logits do not depend on its batch mates (one batch shape: one compile).
  other = f(params, jnp.concatenate([x[2:3], 10.0 * x[:2] + 3.0, x[3:]], axis=0))
  np.testing.assert_allclose(other[0], logits[2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(other[3], logits[3], rtol=1e-5, atol=1e-5)
  return logits


def test_shapes_and_batch_independence_dense(tiny24):
  clf, params, f = tiny24
  assert choose_impl(24, (8, 6), 4, 4, 2) == "dense"
  logits = _check_batch_independence(f, params, jax.random.normal(jax.random.key(1), (4, 24, 3)))
  assert logits.shape == (4, 1)


def test_long_series_spectral_path_equals_unfold_conv_and_dense():
  """T=100, periods 12 and 33 (grids 9x12 and 4x33, both zero-padded): "auto" picks "spectral"
  (the grid convs by an FFT along the phase axis); batch independence, and the same logits and
  parameter gradients as the row-wise matmuls ("unfold"), the reference XLA convolutions
  ("conv") and the dense time map."""
  assert choose_impl(100, (12, 33), 4, 4, 2) == "spectral"
  clf, params = _tiny(100, 3, (12, 33), num_classes=3)
  x = jax.random.normal(jax.random.key(1), (4, 100, 3))
  logits = _check_batch_independence(jax.jit(clf.logits_fn), params, x)
  assert logits.shape == (4, 3)
  y = jnp.array([0, 1, 2, 1])

  def outputs(impl):
    mod = TimesNet(num_outputs=3, periods=(12, 33), impl=impl, d_model=4, d_ff=4, e_layers=1,
                   num_kernels=2)
    loss = lambda p: jnp.sum(jax.nn.log_softmax(mod.apply({"params": p}, x)) * jax.nn.one_hot(y, 3))
    return jax.jit(lambda p: (mod.apply({"params": p}, x), jax.grad(loss)(p)))(params)

  got = {impl: outputs(impl) for impl in ("spectral", "unfold", "conv", "dense")}
  np.testing.assert_allclose(got["spectral"][0], logits, rtol=1e-6, atol=1e-6)  # auto
  for impl in ("unfold", "conv", "dense"):
    np.testing.assert_allclose(got[impl][0], logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got[impl][1]), jax.tree.leaves(got["spectral"][1])):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  with pytest.raises(ValueError, match="impl"):
    jax.eval_shape(TimesNet(num_outputs=3, periods=(12, 33), impl="fft").init, jax.random.key(9), x)


def test_inception_unfold_and_spectral_equal_xla_conv():
  """`inception_unfold` and `inception_spectral` against `inception_grid` (XLA convolution) in
  float64 on grids that crop the kernel in one direction, in both, and in neither; one cycle (the
  spectral path's matmul case), FFT lengths that are and are not 2-3-5 smooth (7 + 2 -> 9,
  11 + 2 -> 15, 29 + 2 -> 32), and a kernel of width 1."""
  rng = np.random.RandomState(5)
  with jax.enable_x64(True):
    kernel, bias = rng.randn(5, 5, 3, 4), rng.randn(4)
    for h, w in ((1, 8), (2, 2), (6, 7), (3, 11), (12, 29)):
      x = rng.randn(2, h, w, 3)
      ref = inception_grid(x, kernel, bias)
      np.testing.assert_allclose(inception_unfold(x, kernel, bias), ref, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(inception_spectral(x, kernel, bias), ref, rtol=1e-10, atol=1e-10)
    x = rng.randn(2, 4, 6, 3)
    np.testing.assert_allclose(inception_spectral(x, kernel[2:3, 2:3], bias),
                               inception_grid(x, kernel[2:3, 2:3], bias), rtol=1e-12, atol=1e-12)


def test_fft_size_is_the_next_2_3_5_smooth_length():
  smooth = [n for n in range(1, 200) if all(p in (2, 3, 5) for p in _prime_factors(n))]
  for n in range(1, 190):
    assert fft_size(n) == min(m for m in smooth if m >= n)


def _prime_factors(n):
  out, p = [], 2
  while n > 1:
    while n % p == 0:
      out.append(p)
      n //= p
    p += 1
  return out


def test_token_embedding_matmul_equals_conv():
  """The matmul token embedding (long series) equals the Conv1d with circular padding, and both
  paths have `nn.Conv`'s parameter (name, shape, init) so checkpoints do not depend on T."""
  x = jax.random.normal(jax.random.key(3), (2, 9, 3))
  conv, mat = TokenEmbedding(5), TokenEmbedding(5, as_matmul=True)
  params = conv.init(jax.random.key(4), x)
  assert jax.tree.map(np.shape, params) == {"params": {"kernel": (3, 3, 5)}}
  ref = nn.Conv(5, kernel_size=(3,), padding="VALID", use_bias=False,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))
  np.testing.assert_array_equal(params["params"]["kernel"],
                                ref.init(jax.random.key(4), x)["params"]["kernel"])
  xp = jnp.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
  want = ref.apply(params, xp)
  np.testing.assert_allclose(conv.apply(params, x), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mat.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_periods_recovered_from_known_signal():
  rng = np.random.RandomState(0)
  t = np.arange(288)
  n = 50
  phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
  x = (3.0 * np.sin(2 * np.pi * t[None, :, None] / 24 + phase)
       + 1.5 * np.cos(2 * np.pi * t[None, :, None] / 72 + phase)
       + 0.3 * rng.randn(n, 288, 2))
  assert timesnet_periods(x, 2) == (24, 72)
  x24 = np.sin(2 * np.pi * np.arange(24)[None, :, None] / 6 + phase) + 0.1 * rng.randn(n, 24, 3)
  assert timesnet_periods(x24, 1) == (6,)
  # Distinct periods: frequencies 5 and 6 of T=24 both have period 4; the second one is skipped.
  x_dup = (np.sin(2 * np.pi * 5 * np.arange(24) / 24)[None, :, None] * 2.0
           + np.sin(2 * np.pi * 6 * np.arange(24) / 24)[None, :, None] * 1.9
           + np.sin(2 * np.pi * 2 * np.arange(24) / 24)[None, :, None])
  assert timesnet_periods(x_dup, 2) == (4, 12)
  with pytest.raises(ValueError, match="top_k"):
    timesnet_periods(x24, 8)  # T=24 has 7 distinct periods


def test_bad_periods_rejected():
  with pytest.raises(ValueError, match="distinct"):
    ClassifierConfig(model="timesnet", T=24, C=3, periods=(6, 6), top_k=2)
  with pytest.raises(ValueError, match="Period 5"):
    ClassifierConfig(model="timesnet", T=24, C=3, periods=(5,), top_k=1)
  with pytest.raises(ValueError, match="periods"):
    ClassifierConfig(model="timesnet", T=24, C=3, periods=None)


def test_inception_equals_mean_of_separate_convs():
  x = jax.random.normal(jax.random.key(2), (2, 1, 8, 5))  # grid 1 x 8: kernel rows get cropped
  block = InceptionBlock(in_channels=5, out_channels=4, num_kernels=2)
  params = random_params(lambda k: block.init(k, x)["params"], 3)

  @jax.jit
  def both(p, z):
    outs = []
    for i in range(2):
      y = jax.lax.conv_general_dilated(z, p[f"conv_{i}_kernel"], (1, 1), ((i, i), (i, i)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      outs.append(y + p[f"conv_{i}_bias"])
    return block.apply({"params": p}, z), jnp.mean(jnp.stack(outs), axis=0)

  got, want = both(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dense_time_map_is_the_grid_conv():
  """conv_matrix_indices against a direct loop over grid cells and kernel offsets (T=10, p=4:
  grid 3x4 with two padded cells; kernel reach 1)."""
  t, p, r = 10, 4, 1
  fwd = conv_matrix_indices(t, (p,), r, transpose=False)  # [T, L]
  back = conv_matrix_indices(t, (p,), r, transpose=True)  # [L, T]
  assert fwd.shape == (10, 12) and back.shape == (12, 10)
  zero = (2 * r + 1) ** 2
  for u in range(12):  # input cell
    for s in range(12):  # output cell
      dy, dx = u // p - s // p, u % p - s % p
      want = (dy + r) * (2 * r + 1) + dx + r if max(abs(dy), abs(dx)) <= r else zero
      if u < t:
        assert fwd[u, s] == want
      if s < t:
        assert back[u, s] == want


def test_amplitudes_match_rfft():
  h = np.random.RandomState(1).randn(24, 5)
  periods = (24, 8, 4)  # frequencies {1}, {3}, {5, 6}
  amp = np.abs(np.fft.rfft(h, axis=0))  # [13, 5]
  want = [amp[1].mean(), amp[3].mean(), 0.5 * (amp[5].mean() + amp[6].mean())]
  got = period_amplitudes(jnp.asarray(h, jnp.float32), periods, eps=0.0)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_mask_and_dropout(tiny24):
  clf, params, f = tiny24
  x = jax.random.normal(jax.random.key(4), (4, 24, 3))
  apply = jax.jit(lambda m: clf.module.apply({"params": params}, x, mask=m))
  full = f(params, x)
  ones = apply(jnp.ones((4, 24)))
  np.testing.assert_allclose(full, ones, rtol=1e-6)
  zero = apply(jnp.zeros((4, 24)))
  np.testing.assert_allclose(zero, jnp.broadcast_to(params["projection"]["bias"], (4, 1)),
                             atol=1e-7)
  train = jax.jit(lambda k: clf.logits_fn(params, x, train=True, rngs=k))
  a, b = train(jax.random.key(5)), train(jax.random.key(6))
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match="rngs"):
    clf.logits_fn(params, x, train=True)


def check_derivatives(loss_fn, params32, x_shape, seed, h=1e-5, rtol=1e-5):
  """float64: grad_x, grad_params, jvp along G and grad_x of the jvp (the influence input
  gradient) of a per-example loss, all against central finite differences. One compile (the
  probes are NumPy: no eager JAX ops)."""
  rng = np.random.RandomState(seed)
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params32)
    x, vx = rng.randn(*x_shape), rng.randn(*x_shape)
    g = jax.tree.map(lambda a: rng.randn(*a.shape), params)
    y = np.int32(1)

    @jax.jit
    def compiled(p, z):
      loss, (gp, gx) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, z, y)
      infl = lambda zz: jax.jvp(lambda q: loss_fn(q, zz, y), (p,), (g,))[1]
      jvp, gx_jvp = jax.value_and_grad(infl)(z)
      return loss, gp, gx, jvp, gx_jvp

    quantities = lambda p, z: jax.tree.map(np.asarray, compiled(p, z))

    loss, gp, gx, jvp, gx_jvp = quantities(params, x)
    for a in jax.tree.leaves((gp, gx, gx_jvp)):
      assert np.all(np.isfinite(a))
    shift = lambda s: jax.tree.map(lambda a, b: a + s * b, params, g)
    lp = quantities(shift(h), x)[0]
    lm = quantities(shift(-h), x)[0]
    fd_p = (lp - lm) / (2 * h)
    ad_p = sum(np.vdot(a, b) for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(g)))
    np.testing.assert_allclose(ad_p, fd_p, rtol=rtol)  # grad w.r.t. params
    np.testing.assert_allclose(jvp, fd_p, rtol=rtol)  # jvp w.r.t. params
    lxp, _, _, jp, _ = quantities(params, x + h * vx)
    lxm, _, _, jm, _ = quantities(params, x - h * vx)
    np.testing.assert_allclose(np.vdot(gx, vx), (lxp - lxm) / (2 * h), rtol=rtol)
    np.testing.assert_allclose(np.vdot(gx_jvp, vx), (jp - jm) / (2 * h), rtol=rtol)
    assert abs(float(np.vdot(gx_jvp, vx))) > 1e-8  # not a vacuous zero


@pytest.mark.parametrize("impl", ["auto", "spectral", "unfold"])
def test_derivatives_match_finite_differences(impl):
  """The dense map ("auto" at T=12) and the long-series paths (FFT "spectral", matmul
  "unfold"): first and second derivatives, which influence guidance needs."""
  clf, params = _tiny(12, 2, (6, 4), d_model=4, d_ff=4, num_kernels=3, impl=impl)
  assert choose_impl(12, (6, 4), 4, 4, 3) == "dense"
  assert clf.module.impl == impl
  check_derivatives(clf.loss_fn, params, (12, 2), 7)


def test_default_size_on_paper_lengths():
  x = np.random.RandomState(3).randn(8, 288, 3).astype(np.float32)
  periods = timesnet_periods(x, 3)
  mod = TimesNet(num_outputs=1, periods=periods)
  out = jax.eval_shape(lambda k: mod.init_with_output(k, jnp.asarray(x))[0], jax.random.key(0))
  assert out.shape == (8, 1)


def test_batch_independence_at_eicu_length():
  """T=288 (eICU's five-minute steps over a day), the periods of real-looking data: the long-series
  path is chosen and a sample's logits do not depend on its batch mates."""
  x = np.random.RandomState(4).randn(4, 288, 3).astype(np.float32)
  x += np.sin(2 * np.pi * np.arange(288) / 24.0)[None, :, None]  # an hourly cycle of 24 steps
  periods = timesnet_periods(x, 2)
  assert 24 in periods
  assert choose_impl(288, periods, 4, 4, 2) == "spectral"
  clf, params = _tiny(288, 3, periods)
  logits = _check_batch_independence(jax.jit(clf.logits_fn), params, jnp.asarray(x))
  assert logits.shape == (4, 1)
