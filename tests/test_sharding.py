"""Data-parallel sampling on 8 fake CPU devices equals single-device sampling (same key).

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


@pytest.fixture(scope="module")
def result():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


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
