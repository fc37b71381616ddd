"""Classifier throughput at the default config's size: training examples/s and per-example
gradient throughput (vmapped `jax.grad` of the per-example loss), TimesNet and GRU.

  python benchmarks/bench_classifiers.py [--n 2048] [--repeats 3] [--seeds 1,3]

Writes benchmarks/results/bench_classifiers.json. Timings exclude compilation (one warm-up call
per jitted function); each number is the median of `--repeats` timed calls. The machine's load
average is recorded with the results: on a shared CPU the numbers scale with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.config_file import load_config
from tardiff_jax.data import simulate_icu
from tardiff_jax.data.normalizers import make_normalizer, normalize_dataset
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.training import classifier_trainer as ct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_model(model: str, x: np.ndarray, y: np.ndarray, cfg, repeats: int,
                seed_counts: list[int]) -> dict:
  sec = cfg.classifier
  sec.model = model
  t, c = x.shape[1:]
  periods = timesnet_periods(x, sec.timesnet.top_k) if model == "timesnet" else None
  ccfg = ClassifierConfig.from_config(sec, num_classes=2, T=t, C=c, periods=periods)
  clf = make_classifier(ccfg)
  tcfg = ct.TrainClassifierConfig.from_config(cfg.train_classifier)
  n = x.shape[0]
  b = min(tcfg.batch_size, n)
  steps = n // b
  params0 = clf.init(jax.random.PRNGKey(0), t, c)
  out = {"config": ccfg.to_dict(), "num_params": int(sum(np.size(a) for a in
                                                         jax.tree_util.tree_leaves(params0))),
         "batch_size": b, "train": {}}
  fns = ct._make_fns(clf, tcfg.learning_rate, t, c)
  steps = max(ct.CHUNK, steps - steps % ct.CHUNK)  # Whole compiled chunks of CHUNK steps.
  for s in seed_counts:
    seeds = list(range(s))
    state = fns["init"](jnp.stack([jax.random.PRNGKey(i) for i in seeds]))
    idx = np.stack([ct._epoch_indices(i, 1, n, b, steps) for i in seeds])  # [S, steps, B]
    w = np.ones((s, ct.CHUNK, b), np.float32)
    active = jnp.ones(s, bool)
    holder = {"state": state}

    def run_epoch(holder=holder, active=active, idx=idx, w=w):
      # As the trainer does: minibatches gathered on the host, CHUNK per compiled call.
      losses = []
      for k in range(0, steps, ct.CHUNK):
        ib = idx[:, k:k + ct.CHUNK]
        holder["state"], loss = fns["epoch"](holder["state"], active, jnp.asarray(x[ib]),
                                             jnp.asarray(y[ib]), jnp.asarray(w))
        losses.append(loss)
      return losses

    t0 = time.perf_counter()
    jax.block_until_ready(run_epoch())
    compile_s = time.perf_counter() - t0
    sec_per_epoch = _median_time(run_epoch, repeats)
    out["train"][f"seeds_{s}"] = {
        "examples_per_s": s * steps * b / sec_per_epoch,
        "steps_per_s": steps / sec_per_epoch, "first_call_s_incl_compile": compile_s,
        "examples_per_epoch_per_seed": steps * b}
  # Per-example parameter gradients (what guidance caching and grad-norm stats do).
  gb = min(256, n)
  grads = jax.jit(jax.vmap(jax.grad(clf.loss_fn), in_axes=(None, 0, 0)))
  xg, yg = jnp.asarray(x[:gb]), jnp.asarray(y[:gb])
  t0 = time.perf_counter()
  jax.block_until_ready(grads(params0, xg, yg))
  compile_s = time.perf_counter() - t0
  grad_s = _median_time(lambda: grads(params0, xg, yg), repeats)
  out["per_example_grads"] = {"batch": gb, "examples_per_s": gb / grad_s,
                              "first_call_s_incl_compile": compile_s}
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--n", type=int, default=2048, help="training examples per epoch")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--seeds", default="1,3", help="seed counts trained together (vmapped)")
  ap.add_argument("--models", default="timesnet,gru")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "bench_classifiers.json"))
  args = ap.parse_args()
  cfg = load_config("default")
  sim = simulate_icu(args.n, seed=0)
  ds = normalize_dataset(sim.dataset, make_normalizer("zscore").fit(sim.dataset))
  x, y = ds.x.astype(np.float32), ds.y.astype(np.int32)
  seed_counts = [int(s) for s in args.seeds.split(",")]
  results = {"command": "python benchmarks/bench_classifiers.py " + " ".join(
      f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
             "device": str(jax.devices()[0]), "platform": platform.platform(),
             "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(),
             "T": int(x.shape[1]), "C": int(x.shape[2]), "models": {}}
  for m in args.models.split(","):
    print(f"[bench] {m} ...", flush=True)
    results["models"][m] = bench_model(m, x, y, cfg, args.repeats, seed_counts)
    print(json.dumps(results["models"][m], default=str)[:600], flush=True)
  results["load_avg_after"] = os.getloadavg()
  tio.write_json(args.out, results)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
