"""Data-parallel scaling: unguided and influence-guided DDIM and diffusion training steps on 1, 2,
4, ... devices of one mesh, with a correctness check against the single-device result.

  python benchmarks/bench_scaling.py                     # 8 fake CPU devices, tiny config
  python benchmarks/bench_scaling.py --fake_devices=0 --config=paper \\
      --batches=256,1024,4096,8192 --tag=gpu             # a GPU machine: its real devices

For each device count n (the first n devices; n = 1 is the plain single-device path) and batch
size B (divisible by n): samples/s of unguided and TarDiff-guided DDIM (the config's sampler,
with the analytic variance and x0 calibration replaced by DDIM's own variance, since they need a
trained model's fit; the same work per step up to a DCT), training examples/s of the denoiser's
data-parallel step, and the largest difference of the guided samples from the one-device result
(same key). The U-Net and the guide (the config's guidance classifier) are randomly initialised.

With fake CPU devices (`--fake_devices`, XLA_FLAGS=--xla_force_host_platform_device_count) every
"device" shares the same CPU cores: the numbers show the partitioning's overhead (and XLA's
concurrency across device programs), not what real devices would gain. Writes
benchmarks/results/bench_scaling[_TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time


def parse(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="tiny", choices=("tiny", "default", "paper"))
  ap.add_argument("--fake_devices", type=int, default=8,
                  help="CPU devices to fake (0: use the machine's real devices)")
  ap.add_argument("--devices", default="", help="device counts, e.g. 1,2,4,8 (default: powers "
                  "of two up to all)")
  ap.add_argument("--batches", default="64,256")
  ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
  ap.add_argument("--train_steps", type=int, default=5, help="timed training steps")
  ap.add_argument("--repeats", type=int, default=2, help="timed sampler calls (best kept)")
  ap.add_argument("--tag", default="")
  return ap.parse_args(argv)


def main(argv=None) -> dict:
  args = parse(argv)
  if args.fake_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={args.fake_devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # noqa: PLC0415 (after XLA_FLAGS)
  import numpy as np  # noqa: PLC0415

  from tardiff_jax import io as tio  # noqa: PLC0415
  from tardiff_jax.config import experiment_config, load_config  # noqa: PLC0415
  from tardiff_jax.diffusion import eps_loss  # noqa: PLC0415
  from tardiff_jax.influence.cache import build_guidance_cache  # noqa: PLC0415
  from tardiff_jax.influence.guidance import guidance_from_config, make_gparams  # noqa: PLC0415
  from tardiff_jax.models import UNet1D, init_params, make_denoiser  # noqa: PLC0415
  from tardiff_jax.models.classifier import make_classifier  # noqa: PLC0415
  from tardiff_jax.parallel import make_mesh, replicate, shard_rows, shard_sampler  # noqa: PLC0415
  from tardiff_jax.sampling import make_sampler  # noqa: PLC0415
  from tardiff_jax.training.diffusion_trainer import (  # noqa: PLC0415
      init_state,
      make_optimizer,
      make_train_step,
  )

  cfg = experiment_config(load_config("default:paper" if args.config == "paper" else args.config))
  T, C, K = 24, 7, 2  # noqa: N806 (the simulator's shape)
  devices = jax.devices()
  counts = ([int(n) for n in args.devices.split(",")] if args.devices else
            [2 ** i for i in range(len(devices).bit_length()) if 2 ** i <= len(devices)])
  batches = [int(b) for b in args.batches.split(",")]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(max(batches) * 2, T, C)).astype(np.float32)
  y = (rng.random(x.shape[0]) < 0.3).astype(np.int32)
  unet = dataclasses.replace(cfg.unet, num_classes=K)
  _, apply_fn = make_denoiser(unet)
  params = init_params(unet, jax.random.PRNGKey(2), T, C)
  schedule = cfg.diffusion.make_schedule()
  clf = make_classifier(cfg.classifier.spec(K, T, C))
  gp = clf.init(jax.random.PRNGKey(1))
  cache = build_guidance_cache(clf.loss_fn, gp, x[:512], y[:512], batch_size=256)
  scfg = dataclasses.replace(cfg.sampling, num_steps=args.steps, variance="ddim",
                             calibrate_x0=False)
  samplers = {"unguided": make_sampler(apply_fn, schedule, scfg, K),
              "guided": make_sampler(apply_fn, schedule, scfg, K,
                                     guidance_fn=guidance_from_config(clf.loss_fn, cfg.guidance))}
  gparams = {"unguided": None, "guided": make_gparams(gp, cache.G, 1.0)}
  key = jax.random.PRNGKey(3)
  loss = lambda f, p, s, x0, yy, m, k: eps_loss(f, p, s, x0, yy, m, k, loss=cfg.diffusion.loss,  # noqa: E731
                                                prediction=cfg.diffusion.prediction)
  res = {"config": args.config, "backend": jax.default_backend(),
         "device_kind": devices[0].device_kind, "fake_devices": args.fake_devices,
         "cpu_count": os.cpu_count(), "platform": platform.platform(), "ddim_steps": args.steps,
         "jax": jax.__version__, "results": {}}
  reference: dict[int, np.ndarray] = {}
  for n in counts:
    mesh = None if n == 1 else make_mesh(devices=devices[:n])
    for b in batches:
      if b % n:
        continue
      row: dict = {}
      yb = (np.arange(b) % K).astype(np.int32)
      for name, fn in samplers.items():
        jitted = shard_sampler(fn, mesh)
        p, g = replicate(mesh, params), replicate(mesh, gparams[name])
        ys = shard_rows(mesh, yb)
        t0 = time.perf_counter()
        out = jax.block_until_ready(jitted(p, g, key, ys, (b, T, C)))
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(args.repeats):
          t0 = time.perf_counter()
          jax.block_until_ready(jitted(p, g, key, ys, (b, T, C)))
          best = min(best, time.perf_counter() - t0)
        row[f"{name}_samples_per_s"] = b / best
        row[f"{name}_first_call_s"] = first
        if name == "guided":
          host = np.asarray(out)
          reference.setdefault(b, host)
          row["guided_max_diff_vs_1_device"] = float(np.max(np.abs(host - reference[b])))
      tcfg = dataclasses.replace(cfg.train_diffusion, batch_size=b)
      tx = make_optimizer(tcfg)
      step = make_train_step(UNet1D(unet), tx, schedule, tcfg, x.shape[0], loss, mesh)
      state = replicate(mesh, init_state(unet, tx, 0, T, C))
      data = [shard_rows(mesh, a) for a in (x, y, np.ones(x.shape, bool))]
      t0 = time.perf_counter()
      state, _ = jax.block_until_ready(step(state, *data))
      row["train_first_call_s"] = time.perf_counter() - t0
      t0 = time.perf_counter()
      for _ in range(args.train_steps):
        state, _ = step(state, *data)
      jax.block_until_ready(state)
      row["train_examples_per_s"] = b * args.train_steps / (time.perf_counter() - t0)
      res["results"].setdefault(str(n), {})[str(b)] = row
      print(f"[bench_scaling] devices={n} batch={b}: unguided "
            f"{row['unguided_samples_per_s']:.0f} guided {row['guided_samples_per_s']:.0f} "
            f"samples/s, train {row['train_examples_per_s']:.0f} ex/s, guided diff "
            f"{row['guided_max_diff_vs_1_device']:.1e}", flush=True)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                     "bench_scaling" + (f"_{args.tag}" if args.tag else ""))
  tio.write_json(out + ".json", res)
  tio.write_text(out + ".md", markdown(res, " ".join(sys.argv[1:] if argv is None else argv)))
  return res


def markdown(res: dict, argv: str) -> str:
  fake = res["fake_devices"]
  lines = [f"# Data-parallel scaling ({res['config']} config, {res['backend']})", "",
           f"`python benchmarks/bench_scaling.py {argv}`".replace(" `", "`"), "",
           f"{res['device_kind']}, jax {res['jax']}, {res['cpu_count']} CPU cores; DDIM-"
           f"{res['ddim_steps']}, T = 24, C = 7, random weights. "
           + (f"{fake} fake CPU devices sharing the same cores: no hardware is added, so a "
              "gain is XLA running the per-device programs side by side (one device's program "
              "leaves cores idle on small ops) and a loss is the cost of partitioning "
              "(cross-device sums); neither predicts real devices." if fake else
              "Real devices."), "",
           "| devices | batch | unguided samples/s | guided samples/s | train examples/s | "
           "guided max diff vs 1 device |", "|---|---|---|---|---|---|"]
  for n, rows in res["results"].items():
    for b, r in rows.items():
      lines.append(f"| {n} | {b} | {r['unguided_samples_per_s']:,.0f} | "
                   f"{r['guided_samples_per_s']:,.0f} | {r['train_examples_per_s']:,.0f} | "
                   f"{r['guided_max_diff_vs_1_device']:.1e} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
