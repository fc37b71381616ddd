"""Tests of the U-Net's `attention="transformer"` sites (the reference code's LDM spatial
transformer, tardiff_jax/models/transformer_block.py) and of `attention="self"` staying as it was.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.models import UNetConfig, count_params, init_params, make_denoiser
from tardiff_jax.models.transformer_block import SpatialTransformer1D

# The reference network (devin-21/TarDiff configs/base/mimic_icustay_base.yaml, T=24, C=7):
# 22.55 M parameters its forward uses (22.89 M in all, with ResBlock cond_emb_layers and a null
# context it never touches); ~274 MFLOP per sample per forward.
REFERENCE_PARAMS = 22.6e6
REFERENCE_FLOPS = 274e6
TINY = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), num_heads=2, attention="transformer")


def _paper() -> UNetConfig:
  return experiment_config(load_config("default:paper")).unet


def _abstract_params(cfg: UNetConfig, channels: int = 7):
  return jax.eval_shape(lambda k: init_params(cfg, k, 24, channels), jax.random.PRNGKey(0))


def test_paper_config_is_the_reference_network():
  cfg = _paper()
  assert cfg.attention == "transformer" and cfg.transformer_depth == 1
  assert cfg.context_tokens == 0  # The reference runs with --uncond: no context.
  n = count_params(_abstract_params(cfg))
  assert abs(n - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.02, n
  # Pinned: 13,595,527 (plain attention) + 16 sites x (18 c^2 + 15 c) at widths 64/128/256.
  assert n == 22_554_055


def test_paper_forward_flops():
  cfg = _paper()
  _, apply_fn = make_denoiser(cfg)
  batch = 4
  x = jax.ShapeDtypeStruct((batch, 24, 7), jnp.float32)
  z = jax.ShapeDtypeStruct((batch,), jnp.int32)
  lowered = jax.jit(apply_fn).lower(_abstract_params(cfg), x, z, z)
  ca = lowered.cost_analysis()  # XLA's estimate of the unoptimised program: no compile.
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  if not ca or "flops" not in ca:
    ca = lowered.compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  flops = float(ca["flops"]) / batch
  assert abs(flops - REFERENCE_FLOPS) / REFERENCE_FLOPS < 0.10, flops / 1e6


def _layer_norm(h, p, eps=1e-5):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _attention(h, ctx, p, heads):
  """Explicit multi-head attention, one head at a time (float64)."""
  q, k, v = h @ p["to_q"]["kernel"], ctx @ p["to_k"]["kernel"], ctx @ p["to_v"]["kernel"]
  d = q.shape[-1] // heads
  out = np.zeros_like(q)
  for b in range(h.shape[0]):
    for i in range(heads):
      s = slice(i * d, (i + 1) * d)
      logits = q[b, :, s] @ k[b, :, s].T / np.sqrt(d)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out[b, :, s] = (w / w.sum(-1, keepdims=True)) @ v[b, :, s]
  return out @ p["to_out"]["kernel"] + p["to_out"]["bias"]


def _explicit_transformer(x, p, heads, groups, context=None):
  """The reference's Spatial1DTransformer written out in numpy (depth 1)."""
  b, t, c = x.shape
  g = x.reshape(b, t, groups, c // groups)
  mu = g.mean(axis=(1, 3), keepdims=True)
  var = ((g - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  h = ((g - mu) / np.sqrt(var + 1e-6)).reshape(b, t, c) * p["norm"]["scale"] + p["norm"]["bias"]
  h = h @ p["proj_in"]["kernel"] + p["proj_in"]["bias"]
  blk = p["block_0"]
  h = h + _attention(_layer_norm(h, blk["norm1"]), _layer_norm(h, blk["norm1"]), blk["attn1"],
                     heads)
  n2 = _layer_norm(h, blk["norm2"])
  h = h + _attention(n2, n2 if context is None else context, blk["attn2"], heads)
  ff = _layer_norm(h, blk["norm3"]) @ blk["ff"]["proj"]["kernel"] + blk["ff"]["proj"]["bias"]
  a, gate = np.split(ff, 2, axis=-1)
  gelu = 0.5 * gate * (1.0 + erf(gate / np.sqrt(2.0)))  # The exact GELU.
  h = h + (a * gelu) @ blk["ff"]["out"]["kernel"] + blk["ff"]["out"]["bias"]
  return x + h @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]


@pytest.mark.parametrize("context_shape", [None, (2, 3, 6)])
def test_transformer_block_matches_explicit_computation(context_shape):
  block = SpatialTransformer1D(num_heads=2, depth=1, norm_groups=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  ctx = (None if context_shape is None
         else jax.random.normal(jax.random.PRNGKey(1), context_shape))
  params = block.init(jax.random.PRNGKey(2), x, ctx)["params"]
  # Zero-initialised proj_out: the site is the identity at init.
  np.testing.assert_array_equal(np.asarray(block.apply({"params": params}, x, ctx)),
                                np.asarray(x))
  # Random parameters everywhere (LayerNorm/GroupNorm scales and biases included).
  rng = np.random.default_rng(3)
  params = jax.tree_util.tree_map(
      lambda p: p + jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), params)
  got = np.asarray(block.apply({"params": params}, x, ctx))
  p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  want = _explicit_transformer(np.asarray(x, np.float64), p64, heads=2, groups=4,
                               context=None if ctx is None else np.asarray(ctx, np.float64))
  assert float(np.max(np.abs(want - np.asarray(x)))) > 0.1  # The block did something.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tiny_transformer_unet_forward_and_identity_sites():
  """With every transformer site's proj_out at zero, the U-Net computes what the self-attention
  U-Net with the same other parameters computes (both kinds of site are the identity)."""
  self_cfg = dataclasses.replace(TINY, attention="self")
  # Random parameters from numpy in the shapes eval_shape gives: no init to compile (the output
  # conv is zero at init, so the test needs them perturbed anyway). Norm scales near 1.
  rng = np.random.default_rng(0)

  def fill(path, a):
    scale = jax.tree_util.keystr(path).endswith("['scale']")
    return jnp.asarray((1.0 if scale else 0.0) + 0.2 * rng.standard_normal(a.shape), a.dtype)

  pt = jax.tree_util.tree_map_with_path(fill, _abstract_params(TINY, channels=3))
  # The self-attention sites' parameters: zeros (a zero proj_out makes the rest irrelevant).
  ps = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                              _abstract_params(self_cfg, channels=3))
  sites = sorted(k for k in pt if "_attn" in k)
  assert sites == sorted(k for k in ps if "_attn" in k) == [
      "down_1_attn_0", "mid_attn", "up_1_attn_0", "up_1_attn_1"]
  assert all("block_0" in pt[s] and "attn2" in pt[s]["block_0"] for s in sites)
  zeroed = {k: ({**v, "proj_out": jax.tree_util.tree_map(jnp.zeros_like, v["proj_out"])}
                if k in sites else v) for k, v in pt.items()}
  ps = {k: (ps[k] if k in sites else v) for k, v in zeroed.items()}
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 21, 3))  # T=21: padded to 22 inside.
  t = jnp.array([0, 7, 99], jnp.int32)
  y = jnp.array([0, 1, 2], jnp.int32)
  apply_t = jax.jit(make_denoiser(TINY)[1])
  out_t = apply_t(zeroed, x, t, y)
  out_s = jax.jit(make_denoiser(self_cfg)[1])(ps, x, t, y)
  assert out_t.shape == x.shape and bool(jnp.all(jnp.isfinite(out_t)))
  assert float(jnp.max(jnp.abs(out_t))) > 1e-3
  np.testing.assert_allclose(np.asarray(out_t), np.asarray(out_s), rtol=1e-5, atol=1e-6)
  # With the sites switched on the output changes (the comparison above can fail).
  assert float(jnp.max(jnp.abs(apply_t(pt, x, t, y) - out_t))) > 1e-4


def test_label_context_option():
  cfg = dataclasses.replace(TINY, context_tokens=3, context_dim=6)
  abstract = _abstract_params(cfg, channels=3)
  assert abstract["label_context"]["embedding"].shape == (cfg.num_classes + 1, 3 * 6)
  attn2 = abstract["mid_attn"]["block_0"]["attn2"]
  assert attn2["to_k"]["kernel"].shape == (6, 16) and attn2["to_q"]["kernel"].shape == (16, 16)
  assert "label_context" not in _abstract_params(TINY, channels=3)
  # The sites attend to the label's context tokens: moving one label's tokens moves its output.
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), abstract)
  moved = {**params, "label_context": {"embedding": params["label_context"]["embedding"].at[1]
                                       .add(1.0)}}
  apply_fn = jax.jit(make_denoiser(cfg)[1])
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 3))
  t, y = jnp.array([3, 3], jnp.int32), jnp.array([0, 1], jnp.int32)
  diff = jnp.abs(apply_fn(params, x, t, y) - apply_fn(moved, x, t, y)).max(axis=(1, 2))
  assert float(diff[0]) == 0.0 and float(diff[1]) > 1e-4, diff


def test_self_attention_unchanged():
  # Counted with jax.eval_shape on the parent commit (e1872b9), before `attention` existed.
  assert count_params(_abstract_params(UNetConfig())) == 689_127
  paper_self = dataclasses.replace(_paper(), attention="self")
  assert count_params(_abstract_params(paper_self)) == 13_595_527
  assert experiment_config(load_config("default")).unet.attention == "self"
  # The checkpoint meta of a self-attention U-Net has no new keys (old checkpoints still match).
  d = UNetConfig().to_dict()
  assert not {"attention", "transformer_depth", "context_tokens", "context_dim"} & set(d)
  assert UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) == \
      UNetConfig()
  d = TINY.to_dict()
  assert d["attention"] == "transformer"
  assert UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) == TINY


@pytest.mark.parametrize("kwargs,match", [
    (dict(attention="cross"), "unet.attention must be one of"),
    (dict(attention="transformer", context_dim=0), "unet.context_dim must be >= 1"),
    (dict(attention="transformer", context_tokens=-1), "unet.context_tokens must be >= 0"),
    (dict(attention="transformer", transformer_depth=0), "unet.transformer_depth must be >= 1"),
    (dict(context_tokens=2), "needs unet.attention='transformer'"),
    (dict(attention="transformer", num_heads=3), "does not divide attention width"),
])
def test_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    UNetConfig(**kwargs)
