"""Two processes on localhost (CPU collectives over gloo, 2 fake devices each, one mesh of 4):
a few data-parallel diffusion training steps with an orbax checkpoint saved and resumed across
the processes, the sharded guidance cache and influence-guided sampling. Both processes must
agree with each other and with one process running the same code on a mesh of its 2 devices.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
  import dataclasses, hashlib, json, os, sys, time
  pid, nproc, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  import jax
  import jax.numpy as jnp
  import numpy as np
  t0 = time.time()
  if nproc > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
  from tardiff_jax.config import experiment_config, load_config
  from tardiff_jax.influence.cache import build_guidance_cache
  from tardiff_jax.influence.guidance import guidance_from_config, make_gparams
  from tardiff_jax.models.classifier import make_classifier
  from tardiff_jax.parallel import replicate, run_mesh, shard_rows, shard_sampler, is_writer
  from tardiff_jax.sampling import make_sampler
  from tardiff_jax.sampling.generate import generate
  from tardiff_jax.training.diffusion_trainer import train_diffusion

  cfg = experiment_config(load_config("tiny"))
  mesh = run_mesh(0)
  rng = np.random.default_rng(0)
  T, C, N = 8, 3, 48
  x = rng.normal(size=(N, T, C)).astype(np.float32)
  y = (np.arange(N) % 3 == 0).astype(np.int32)
  tcfg = dataclasses.replace(cfg.train_diffusion, batch_size=16, num_steps=3, checkpoint_every=2,
                             warmup_steps=1)
  kw = dict(unet=cfg.unet, diffusion=cfg.diffusion, train=tcfg, num_classes=2, seed=0, quiet=True,
            mesh=mesh)
  train_diffusion(x, y, None, f"{workdir}/ckpt", stop_after=2, **kw)
  d = train_diffusion(x, y, None, f"{workdir}/ckpt", **kw)   # resumes from the shared step 2
  clf = make_classifier(cfg.classifier.spec(2, T, C))
  gp = clf.init(jax.random.PRNGKey(1))
  cache = build_guidance_cache(clf.loss_fn, gp, x[:30], y[:30], batch_size=12, mesh=mesh)
  scfg = dataclasses.replace(cfg.sampling, variance="ddim", calibrate_x0=False)
  fn = make_sampler(d.apply_fn, d.schedule, scfg, 2, guidance_fn=guidance_from_config(
      clf.loss_fn, cfg.guidance))
  xs, ys = generate(shard_sampler(fn, mesh), replicate(mesh, d.params),
                    replicate(mesh, make_gparams(gp, cache.G, 5.0)), jax.random.PRNGKey(3),
                    [9, 7], (T, C), 8, progress=False,
                    place_fn=None if mesh is None else lambda a: shard_rows(mesh, a))
  h = lambda t: hashlib.sha256(b"".join(np.asarray(a, np.float32).tobytes()
                                        for a in jax.tree_util.tree_leaves(t))).hexdigest()[:16]
  print(json.dumps({"pid": pid, "processes": jax.process_count(), "devices": jax.device_count(),
                    "writer": is_writer(), "step": d.step, "params": h(d.params), "G": h(cache.G),
                    "samples": h(xs), "labels": ys.tolist(), "x": xs[:2, 0].tolist(),
                    "G_norm": cache.norm, "seconds": time.time() - t0}), flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  port = str(_free_port())
  shared, alone = tmp_path_factory.mktemp("shared"), tmp_path_factory.mktemp("alone")
  cmds = [[sys.executable, "-c", SCRIPT, str(i), "2", port, str(shared)] for i in (0, 1)]
  cmds.append([sys.executable, "-c", SCRIPT, "0", "1", "0", str(alone)])
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env) for c in cmds]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      outs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      p.kill()
  return outs, shared


def test_two_processes_agree(runs):
  (p0, p1, _), shared = runs
  assert (p0["processes"], p0["devices"], p1["processes"]) == (2, 4, 2)
  assert p0["writer"] and not p1["writer"]
  assert p0["step"] == p1["step"] == 3  # trained to step 2, saved, resumed by both to 3
  for k in ("params", "G", "samples", "labels"):
    assert p0[k] == p1[k], k
  # The checkpoint both restored from, with the checksums process 0 alone recorded.
  ckpt = shared / "ckpt"
  assert (ckpt / "checksums.json").exists() and (ckpt / "3").is_dir()


def test_two_processes_equal_one_process(runs):
  (p0, _, alone), _ = runs
  assert alone["processes"] == 1 and alone["devices"] == 2 and alone["step"] == 3
  assert alone["labels"] == p0["labels"]
  np.testing.assert_allclose(p0["x"], alone["x"], atol=1e-4)
  assert abs(p0["G_norm"] - alone["G_norm"]) <= 1e-5 * alone["G_norm"]


def test_a_process_that_does_not_write_leaves_no_file(tmp_path):
  from tardiff_jax import io as tio
  from tardiff_jax.experiment.store import ArtifactStore
  from tardiff_jax.experiment.workdir import Workdir

  tio.set_writer(False)
  try:
    tio.write_json(tmp_path / "a.json", {"x": 1})
    tio.write_npz(tmp_path / "b.npz", x=np.zeros(3))
    tio.append_jsonl(tmp_path / "c.jsonl", {"x": 1})
    store = ArtifactStore(str(tmp_path))
    store.write_json(store.key("timing", "t", {"s": 1}), {"v": 2})
    Workdir(tmp_path / "run").acquire()  # process 0 holds the lock for all
    assert not tio.is_writer()
  finally:
    tio.set_writer(True)
  assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
  tio.write_json(tmp_path / "a.json", {"x": 1})
  assert tio.read_json(tmp_path / "a.json") == {"x": 1}
