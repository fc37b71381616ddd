"""Tests of the 1D U-Net denoiser: shapes (incl. T not divisible by 2^levels), labels, gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax.models import UNetConfig, count_params, init_params, make_denoiser
from tardiff_jax.models.unet1d import Conv1D, UNet1D, timestep_embedding

TINY = UNetConfig(base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                  attention_resolutions=(2, 8), num_heads=2, dropout=0.1, num_classes=2,
                  label_dropout=0.5)


@pytest.fixture(scope="module")
def tiny():
  params = init_params(TINY, jax.random.PRNGKey(0), 24, 3)
  module, apply_fn = make_denoiser(TINY)
  return module, jax.jit(apply_fn), params


def test_output_shape_equals_input_shape():
  # Tracing only (eval_shape): no compiles. T=21 is not a multiple of 2^(levels-1) = 8.
  module = UNet1D(TINY)
  for c in (1, 3, 7):
    z = jnp.zeros((2,), jnp.int32)
    variables = jax.eval_shape(lambda c=c, z=z: module.init(
        jax.random.PRNGKey(0), jnp.zeros((2, 24, c)), z, z))
    for t_len in (24, 48, 288, 21):
      x = jnp.zeros((2, t_len, c))
      out = jax.eval_shape(lambda v, x=x, z=z: module.apply(v, x, z, z), variables)
      assert out.shape == (2, t_len, c), (t_len, c)
      assert out.dtype == jnp.float32


def test_forward_finite_and_depends_on_inputs(tiny):
  module, apply_fn, params = tiny
  # The output convs are zero-initialised (eps = 0 at init); perturb params so the test can fail.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 24, 3))
  t = jnp.array([0, 10, 100, 199], jnp.int32)
  y = jnp.array([0, 1, 2, 1], jnp.int32)  # 2 = the null label.
  out = apply_fn(params, x, t, y)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  out_t = apply_fn(params, x, t + 1, y)
  out_y = apply_fn(params, x, t, 1 - jnp.minimum(y, 1))
  assert float(jnp.max(jnp.abs(out - out_t))) > 1e-6
  assert float(jnp.max(jnp.abs(out - out_y))) > 1e-6
  # Deterministic in eval mode.
  np.testing.assert_array_equal(np.asarray(out), np.asarray(apply_fn(params, x, t, y)))


def test_gradients_finite_and_nonzero():
  # A two-level net keeps the (slow) XLA CPU compile of the backward pass small.
  cfg = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2,), num_heads=2, dropout=0.1, num_classes=2,
                   label_dropout=0.5)
  module = UNet1D(cfg)
  params = init_params(cfg, jax.random.PRNGKey(0), 24, 3)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 24, 3))
  t = jnp.array([1, 2, 3, 4], jnp.int32)
  y = jnp.array([0, 1, 0, 1], jnp.int32)

  def loss(p):
    out = module.apply({"params": p}, x, t, y, train=True,
                       rngs={"dropout": jax.random.PRNGKey(4), "label": jax.random.PRNGKey(5)})
    return jnp.mean(jnp.abs(out - x))

  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  # Zero-initialised output conv: its gradient must be non-zero (the rest is zero at init).
  assert float(jnp.sum(jnp.abs(grads["out_conv"]["kernel"]))) > 0


def test_label_dropout_uses_null_label():
  cfg = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), num_heads=2, num_classes=2, label_dropout=1.0)
  module = UNet1D(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 2))
  t = jnp.array([5, 5, 5], jnp.int32)
  params = module.init(jax.random.PRNGKey(1), x, t, t)["params"]
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  y = jnp.array([0, 1, 0], jnp.int32)
  dropped = module.apply({"params": params}, x, t, y, train=True,
                         rngs={"label": jax.random.PRNGKey(3)})
  null = module.apply({"params": params}, x, t, jnp.full((3,), 2, jnp.int32))
  np.testing.assert_allclose(np.asarray(dropped), np.asarray(null), rtol=1e-6, atol=1e-6)


def test_timestep_embedding_closed_form():
  emb = timestep_embedding(jnp.array([0, 3], jnp.int32), 8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  want = np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)])
  np.testing.assert_allclose(np.asarray(emb[1]), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(emb[0]), [1, 1, 1, 1, 0, 0, 0, 0])


def test_paper_config_param_count():
  cfg = UNetConfig(64, (1, 2, 4, 4), 2, (1, 2, 4), 8, 0.0, 2, 0.1)
  params = jax.eval_shape(lambda k: init_params(cfg, k, 24, 7), jax.random.PRNGKey(0))
  assert count_params(params) == 13_595_527


@pytest.mark.parametrize("kwargs", [
    dict(base_channels=0), dict(channel_mult=()), dict(num_res_blocks=0),
    dict(attention_resolutions=(3,)), dict(num_heads=3), dict(dropout=1.0),
    dict(label_dropout=1.5), dict(norm_groups=0)])
def test_bad_hyper_parameters(kwargs):
  with pytest.raises(ValueError):
    UNetConfig(**kwargs)


def test_config_sections():
  from tardiff_jax.config import experiment_config, load_config  # noqa: PLC0415
  paper = experiment_config(load_config("default:paper")).unet
  assert paper.channel_mult == (1, 2, 4, 4) and paper.num_heads == 8
  assert paper.norm_groups == 32  # The reference's GroupNorm32 (2 channels per group at 64).
  assert experiment_config(load_config("default")).unet == UNetConfig()  # Defaults: one place.
  with pytest.raises(ValueError, match="unknown config field unet.num_classes"):
    experiment_config({"unet": {"num_classes": 3}})  # Derived from the data, not settable.


def test_norm_groups_keep_a_stays_level():
  """With one channel per group (norm_groups = width) GroupNorm removes each feature's mean over
  time, so the block output cannot see a per-stay offset of its input; with fewer groups it can."""
  from tardiff_jax.models.unet1d import _norm  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 24, 8))
  shifted = x.at[..., 0].add(3.0)  # One feature's level moves, its shape over time does not.
  for groups, sees_level in ((8, False), (2, True)):
    norm = _norm(8, "n", groups)
    params = norm.init(jax.random.PRNGKey(1), x)
    diff = float(jnp.max(jnp.abs(norm.apply(params, x) - norm.apply(params, shifted))))
    assert (diff > 1e-2) == sees_level, (groups, diff)
  # Same parameter shapes whatever the grouping (checkpoints store the grouping in the config).
  a = jax.eval_shape(lambda k: init_params(TINY, k, 24, 3), jax.random.PRNGKey(0))
  import dataclasses  # pylint: disable=g-import-not-at-top
  b = jax.eval_shape(lambda k: init_params(dataclasses.replace(TINY, norm_groups=2), k, 24, 3),
                     jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_conv1d_matmul_equals_flax_conv(k):
  """The U-Net's im2col convolution has nn.Conv's parameters (names, shapes, initial values) and
  computes its 'SAME' convolution; its gradients match too."""
  x = jax.random.normal(jax.random.key(0), (3, 10, 5))
  ours, ref = Conv1D(6, k), nn.Conv(6, (k,), padding="SAME")
  params = ours.init(jax.random.key(1), x)
  ref_params = ref.init(jax.random.key(1), x)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref_params)
  np.testing.assert_array_equal(params["params"]["kernel"], ref_params["params"]["kernel"])
  params = jax.tree.map(lambda a: a + 0.1, params)  # A non-zero bias.
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) ** 2), argnums=(0, 1))(params, x)
  g_ref = jax.grad(lambda p, x: jnp.sum(ref.apply(p, x) ** 2), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_ours, g_ref)
