"""Classifier throughput at the default config's size: training examples/s and per-example
gradient throughput (vmapped `jax.grad` of the per-example loss), TimesNet and GRU.

  python benchmarks/bench_classifiers.py [--n 2048] [--repeats 3] [--seeds 1,3] [--n-val 256]

Writes benchmarks/results/bench_classifiers.json. Training runs the trainer itself
(`train_classifier_seeds`, S seeds vmapped, epochs of `--n` examples per seed in whole compiled
chunks): the time of an epoch is the difference between a (1 + `--epochs`)-epoch and a 1-epoch
training, divided by `--epochs`, so it excludes compilation and set-up but includes the
trainer's validation pass over `--n-val` examples after each epoch (a few % of an epoch's work
at the defaults). `first_call_s_incl_compile` is the first 1-epoch training (compilation
included). Each number is the median of `--repeats` timed calls. The machine's load average is
recorded with the results: on a shared CPU the numbers scale with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.data import make_normalizer, normalize_dataset, simulate_icu
from tardiff_jax.models.classifier import make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.training.classifier_trainer import CHUNK, train_classifier_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def bench_model(model: str, x: np.ndarray, y: np.ndarray, cfg, repeats: int,
                seed_counts: list[int], n_val: int, epochs: int) -> dict:
  t, c = x.shape[1:]
  periods = timesnet_periods(x, cfg.classifier.timesnet.top_k) if model == "timesnet" else None
  ccfg = cfg.classifier.spec(2, t, c, model=model, periods=periods)
  clf = make_classifier(ccfg)
  tcfg = cfg.train_classifier
  n = x.shape[0]
  b = min(tcfg.batch_size, n)
  steps = n // b
  params0 = clf.init(jax.random.PRNGKey(0), t, c)
  out = {"config": ccfg.to_dict(), "num_params": int(sum(np.size(a) for a in
                                                         jax.tree_util.tree_leaves(params0))),
         "batch_size": b, "train": {}}
  steps = max(CHUNK, steps - steps % CHUNK)  # Whole compiled chunks of CHUNK steps.
  epoch_size = steps * b
  x_val, y_val = x[:n_val], y[:n_val]  # Validation only drives early stopping (off here).

  def train(seeds, num_epochs):
    # patience = max_epochs: no seed stops early, every epoch runs.
    config = dataclasses.replace(tcfg, max_epochs=num_epochs, patience=num_epochs)
    params, _ = train_classifier_seeds(clf, x, y, x_val, y_val, config, seeds,
                                       epoch_size=epoch_size, quiet=True)
    return params

  for s in seed_counts:
    seeds = list(range(s))
    compile_s = _timed(lambda seeds=seeds: train(seeds, 1))
    one = _median_time(lambda seeds=seeds: train(seeds, 1), repeats)
    more = _median_time(lambda seeds=seeds: train(seeds, 1 + epochs), repeats)
    sec_per_epoch = (more - one) / epochs
    out["train"][f"seeds_{s}"] = {
        "examples_per_s": s * epoch_size / sec_per_epoch,
        "steps_per_s": steps / sec_per_epoch, "first_call_s_incl_compile": compile_s,
        "examples_per_epoch_per_seed": epoch_size}
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
  ap.add_argument("--n-val", type=int, default=256,
                  help="validation examples the trainer scores after each epoch")
  ap.add_argument("--epochs", type=int, default=2,
                  help="extra epochs whose time, over a 1-epoch training, gives the epoch time")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "bench_classifiers.json"))
  args = ap.parse_args()
  cfg = experiment_config(load_config("default"))
  sim = simulate_icu(args.n, seed=0)
  ds = normalize_dataset(sim.dataset, make_normalizer("zscore").fit(sim.dataset))
  x, y = ds.x.astype(np.float32), ds.y.astype(np.int32)
  seed_counts = [int(s) for s in args.seeds.split(",")]
  results = {"command": "python benchmarks/bench_classifiers.py " + " ".join(
      f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "out"),
             "device": str(jax.devices()[0]), "platform": platform.platform(),
             "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(),
             "T": int(x.shape[1]), "C": int(x.shape[2]), "models": {}}
  for m in args.models.split(","):
    print(f"[bench] {m} ...", flush=True)
    results["models"][m] = bench_model(m, x, y, cfg, args.repeats, seed_counts, args.n_val,
                                       args.epochs)
    print(json.dumps(results["models"][m], default=str)[:600], flush=True)
  results["load_avg_after"] = os.getloadavg()
  tio.write_json(args.out, results)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
