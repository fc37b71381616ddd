"""Data parallelism on 8 fake CPU devices equals the single-device computation (same keys):
sampling with a toy denoiser, and the pipeline's training step, guidance cache, sampler fits,
guided sampler and protocol groups.

Runs in a subprocess: XLA_FLAGS must be set before jax is imported, and the rest of the test
session keeps its single device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
  import json, os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax
  import jax.numpy as jnp
  import numpy as np
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  from tardiff_jax.diffusion import make_schedule
  from tardiff_jax.parallel import (generate_sharded, make_mesh, replicate, shard_batch,
                                    shard_sampler)
  from tardiff_jax.sampling import SamplerConfig, generate, make_sampler

  assert jax.device_count() == 8, jax.devices()
  sched = make_schedule("ldm_linear", 20, 5e-4, 0.1)
  params = {"w": jnp.float32(0.5), "b": jnp.asarray(np.linspace(-1, 1, 9).reshape(3, 3),
                                                   jnp.float32)}

  def apply(p, x, t, y):
    return (jnp.tanh(p["w"] * x) + p["b"][y][:, None, :]
            + 0.01 * t.astype(jnp.float32)[:, None, None])

  def guide(g, x_t, x0_hat, y, info):  # classifier-like pull through the denoiser
    return g * jax.grad(lambda x: jnp.sum(jnp.sin(info.x0_fn(x))))(x_t)

  def linear(p, x, t, y):
    return p["w"] * x + p["b"][y][:, None, :] + 0.01 * t.astype(jnp.float32)[:, None, None]

  key = jax.random.key(0)
  y = jnp.asarray(np.arange(16) % 2, jnp.int32)
  mesh = make_mesh()
  ys = shard_batch(mesh, y)
  # Unguided DDIM with a linear per-example model: expected bit-identical.
  plain = make_sampler(linear, sched, SamplerConfig("ddim", 5, 1.0, 1.0, variance="ddim",
                                                      calibrate_x0=False), 2)
  p1 = jax.jit(plain, static_argnames="shape")(params, None, key, y, (16, 6, 3))
  p8 = shard_sampler(plain, mesh)(replicate(mesh, params), None, key, ys, (16, 6, 3))
  # Classifier-free + guidance through the denoiser, tanh/sin: equal to float tolerance.
  sample = make_sampler(apply, sched, SamplerConfig("ddim", 5, 1.0, 2.0, variance="ddim",
                                                      calibrate_x0=False), 2, guide)
  single_fn = jax.jit(sample, static_argnames="shape")
  single = single_fn(params, jnp.float32(0.1), key, y, (16, 6, 3))
  sharded_fn = shard_sampler(sample, mesh)
  a, b = shard_batch(mesh, np.zeros((8, 2)), np.zeros((16,)))
  sharded = sharded_fn(replicate(mesh, params), replicate(mesh, jnp.float32(0.1)), key, ys,
                       (16, 6, 3))
  try:
    shard_batch(mesh, np.zeros((12,)))
    bad_ok = False
  except ValueError:
    bad_ok = True
  counts = [9, 7]
  xs, ls = generate(single_fn, params, jnp.float32(0.1), key, counts, (6, 3), 8, progress=False)
  xg, lg = generate_sharded(sample, params, jnp.float32(0.1), key, counts, (6, 3), 8, mesh,
                            progress=False)
  print(json.dumps(dict(
      n_shards=len(sharded.sharding.device_set),
      plain_bit_equal=bool(np.array_equal(np.asarray(p1), np.asarray(p8))),
      plain_n_shards=len(p8.sharding.device_set),
      in_shards=len(ys.sharding.device_set),
      max_diff=float(jnp.max(jnp.abs(sharded - single))),
      bit_equal=bool(np.array_equal(np.asarray(sharded), np.asarray(single))),
      gen_max_diff=float(np.max(np.abs(xg - xs))),
      gen_labels_equal=bool(np.array_equal(lg, ls)),
      gen_shape=list(xg.shape),
      bad_ok=bad_ok,
      finite=bool(np.all(np.isfinite(np.asarray(single)))))))
""")


# The pipeline's own pieces on a mesh of 8 vs one device: the tiny config's U-Net trained 3
# data-parallel steps (and resumed from a checkpoint), the GRU guide's guidance cache, the
# sampler fits (analytic variance, x0 calibration), the default sampler with influence guidance,
# and a protocol group of 3 members padded to 8.
PIECES = textwrap.dedent("""
  import dataclasses, json, os, tempfile
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax
  import jax.numpy as jnp
  import numpy as np
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  from tardiff_jax.config import experiment_config, load_config
  from tardiff_jax.influence.cache import build_guidance_cache
  from tardiff_jax.influence.guidance import guidance_from_config, make_gparams
  from tardiff_jax.models.classifier import make_classifier
  from tardiff_jax.parallel import make_mesh, replicate, shard_rows, shard_sampler
  from tardiff_jax.sampling import make_sampler
  from tardiff_jax.sampling.fitting import fit_sampler
  from tardiff_jax.sampling.generate import generate
  from tardiff_jax.training.classifier_trainer import train_classifier_seeds
  from tardiff_jax.training.diffusion_trainer import (_cached_train_step, init_state,
                                                    make_optimizer, train_diffusion)

  assert jax.device_count() == 8
  cfg = experiment_config(load_config("tiny"))
  rng = np.random.default_rng(0)
  T, C, N = 8, 3, 48
  x = rng.normal(size=(N, T, C)).astype(np.float32)
  y = (np.arange(N) % 3 == 0).astype(np.int32)
  mesh = make_mesh()
  tmp = tempfile.mkdtemp()
  out = {}
  def maxdiff(a, b):
    return float(max(np.max(np.abs(np.asarray(u) - np.asarray(v))) for u, v in
                     zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))

  # Diffusion training: 3 data-parallel steps (batch 16 over 8 devices) vs one device.
  tcfg = dataclasses.replace(cfg.train_diffusion, batch_size=16, num_steps=3, checkpoint_every=2,
                             warmup_steps=1)
  kw = dict(unet=cfg.unet, diffusion=cfg.diffusion, train=tcfg, num_classes=2, seed=0, quiet=True)
  d1 = train_diffusion(x, y, None, f"{tmp}/one", **kw)
  d8 = train_diffusion(x, y, None, f"{tmp}/eight", mesh=mesh, **kw)
  out["train_params_diff"] = maxdiff(d1.raw_params, d8.raw_params)
  out["train_ema_diff"] = maxdiff(d1.params, d8.params)
  out["train_moved"] = maxdiff(d1.raw_params, jax.tree_util.tree_map(
      jnp.zeros_like, d1.raw_params)) > 0
  # Resume from the step-2 checkpoint on the mesh: same as uninterrupted.
  d8r = train_diffusion(x, y, None, f"{tmp}/resumed", mesh=mesh, stop_after=2, **kw)
  d8r = train_diffusion(x, y, None, f"{tmp}/resumed", mesh=mesh, **kw)
  out["resume_diff"] = maxdiff(d8.raw_params, d8r.raw_params)
  # The compiled data-parallel step: per-device minibatch rows and a cross-device gradient sum.
  unet = dataclasses.replace(cfg.unet, num_classes=2)
  step = _cached_train_step(unet, tcfg, cfg.diffusion, N, None, mesh)
  state = replicate(mesh, init_state(unet, make_optimizer(tcfg), 0, T, C))
  count = (3,) if tcfg.steps_per_call > 1 else ()  # Steps in the call (a scan over them).
  hlo = step.lower(state, *(shard_rows(mesh, a) for a in (x, y, np.ones(x.shape, bool))),
                   *count).compile().as_text()
  out["step_all_reduce"] = "all-reduce" in hlo
  out["step_local_batch"] = "f32[2,8,3]" in hlo  # 16 rows / 8 devices, T = 8, C = 3

  # Guidance cache over the guidance set, sharded (batch 12 -> 16 rows on 8 devices).
  spec = cfg.classifier.spec(2, T, C)
  clf = make_classifier(spec)
  gp = clf.init(jax.random.PRNGKey(1))
  c1 = build_guidance_cache(clf.loss_fn, gp, x[:30], y[:30], batch_size=12)
  c8 = build_guidance_cache(clf.loss_fn, gp, x[:30], y[:30], batch_size=12, mesh=mesh)
  out["cache_diff"] = maxdiff(c1.G, c8.G)
  out["cache_norm"] = c1.norm

  # Sampler fits (analytic variance + x0 calibration), batch 16 split over 8 devices.
  scfg = cfg.sampling
  key = jax.random.PRNGKey(3)
  f1 = fit_sampler(d1.apply_fn, d1.params, d1.schedule, scfg, x, y, key, 2, batch_size=16, draws=1)
  f8 = fit_sampler(d1.apply_fn, d1.params, d1.schedule, scfg, x, y, key, 2, batch_size=16, draws=1,
                   mesh=mesh)
  out["fit_gamma_diff"] = maxdiff(f1.gamma, f8.gamma)
  out["fit_cal_diff"] = maxdiff(f1.calibration, f8.calibration)
  out["fit_gamma_scale"] = float(np.max(np.abs(f1.gamma)))

  # The default sampler with influence guidance: sharded == one device; output split 8 ways.
  gfn = guidance_from_config(clf.loss_fn, cfg.guidance)
  fn = make_sampler(d1.apply_fn, d1.schedule, scfg, 2, guidance_fn=gfn, gamma=f1.gamma,
                    calibration=f1.calibration)
  gparams = make_gparams(gp, c1.G, 5.0)
  one = jax.jit(fn, static_argnames="shape")
  eight = shard_sampler(fn, mesh)
  yb = (np.arange(16) % 2).astype(np.int32)
  s1 = one(d1.params, gparams, key, yb, (16, T, C))
  s8 = eight(replicate(mesh, d1.params), replicate(mesh, gparams), key, shard_rows(mesh, yb),
             (16, T, C))
  u1 = one(d1.params, make_gparams(gp, c1.G, 0.0), key, yb, (16, T, C))
  out["sample_diff"] = float(jnp.max(jnp.abs(s1 - s8)))
  out["guidance_effect"] = float(jnp.max(jnp.abs(s1 - u1)))
  out["sample_shards"] = len(s8.sharding.device_set)
  out["shard_rows"] = sorted({int(sh.data.shape[0]) for sh in s8.addressable_shards})
  xs, ls = generate(one, d1.params, gparams, key, [9, 7], (T, C), 16, progress=False)
  xg, lg = generate(eight, replicate(mesh, d1.params), replicate(mesh, gparams), key, [9, 7],
                    (T, C), 16, progress=False, place_fn=lambda a: shard_rows(mesh, a))
  out["generate_diff"] = float(np.max(np.abs(xs - xg)))
  out["generate_labels_equal"] = bool(np.array_equal(ls, lg))

  # A protocol group: 3 members padded to 8, split over the devices, == unsharded.
  tc = dataclasses.replace(cfg.train_classifier, max_epochs=2, batch_size=16)
  xv, yv = x[30:], y[30:]
  p1, h1 = train_classifier_seeds(clf, x[:30], y[:30], xv, yv, tc, [0, 1, 2], quiet=True)
  p8, h8 = train_classifier_seeds(clf, x[:30], y[:30], xv, yv, tc, [0, 1, 2], quiet=True,
                                  mesh=mesh)
  out["group_diff"] = maxdiff(p1, p8)
  out["group_shape"] = int(jax.tree_util.tree_leaves(p8)[0].shape[0])
  out["group_hist_equal"] = ([h["val_auprc"] for h in h1] == [h["val_auprc"] for h in h8]
                             and len(h8) == 3 and h8[0]["group_size"] == 3)
  print(json.dumps(out))
""")


def _run(script: str) -> dict:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def result():
  return _run(SCRIPT)


@pytest.fixture(scope="module")
def pieces():
  return _run(PIECES)


def test_sharded_sampling_equals_single_device(result):
  assert result["in_shards"] == 8 and result["n_shards"] == 8
  assert result["finite"]
  # jax.random draws do not depend on sharding and the denoiser is per-example: a linear model
  # gives bit-identical samples. Transcendentals (tanh, sin) are compiled into differently
  # vectorised loops for the per-device shapes, which moves results by a few float32 ulps.
  assert result["plain_bit_equal"] and result["plain_n_shards"] == 8, result
  assert result["max_diff"] <= 1e-5, result
  assert result["bad_ok"]


def test_sharded_generate_equals_generate(result):
  assert result["gen_shape"] == [16, 6, 3] and result["gen_labels_equal"]
  assert result["gen_max_diff"] <= 1e-5, result


def test_sharded_training_step_equals_single_device(pieces):
  assert pieces["train_moved"]
  assert pieces["train_params_diff"] <= 1e-5 and pieces["train_ema_diff"] <= 1e-5, pieces
  assert pieces["resume_diff"] == 0.0, pieces  # resumed on the mesh: bit-identical
  # Really data-parallel: each device holds 2 of the 16 rows; gradients summed across devices.
  assert pieces["step_all_reduce"] and pieces["step_local_batch"], pieces


def test_sharded_guidance_cache_equals_unsharded(pieces):
  assert pieces["cache_norm"] > 0
  assert pieces["cache_diff"] <= 1e-6 * max(1.0, pieces["cache_norm"]), pieces


def test_sharded_sampler_fits_equal_unsharded(pieces):
  assert pieces["fit_gamma_diff"] <= 1e-5 * pieces["fit_gamma_scale"], pieces
  assert pieces["fit_cal_diff"] <= 1e-4, pieces


def test_sharded_influence_guided_sampler_equals_single_device(pieces):
  assert pieces["guidance_effect"] > 1e-3, pieces  # guidance at w = 5 moves the samples
  assert pieces["sample_diff"] <= 1e-5, pieces
  assert pieces["sample_shards"] == 8 and pieces["shard_rows"] == [2], pieces
  assert pieces["generate_diff"] <= 1e-5 and pieces["generate_labels_equal"], pieces


def test_sharded_protocol_group_equals_unsharded(pieces):
  assert pieces["group_shape"] == 3 and pieces["group_hist_equal"], pieces
  assert pieces["group_diff"] <= 1e-5, pieces


def test_run_mesh_and_its_errors():
  import jax

  from tardiff_jax.parallel import ParallelConfig, check_divisible, run_mesh

  n = jax.device_count()
  assert run_mesh(1) is None
  assert (run_mesh(0) is None) == (n == 1)
  with pytest.raises(ValueError, match=f"only {n} devices"):
    run_mesh(n + 1)
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="parallel.devices"):
      ParallelConfig(devices=bad)
  check_divisible("sampling.batch_size", 64, None)
