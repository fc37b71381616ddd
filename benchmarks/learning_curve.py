"""Learning curve on the ICU simulator: test AUROC/AUPRC of a fresh TimesNet vs training-set size.

  python benchmarks/learning_curve.py [--sizes 250,500,...,16000] [--seeds 3] [--gru-sizes 16000]
                                      [--max-epochs 30] [--grad-norm-size 2000] [--tag NAME]

One large simulated pool (sim seed 0): a fixed stratified validation set and test set (4,000
stays each by default) and nested, stratified training subsets of each size. Per size the
normaliser (z-score) is fitted on that training subset, and `evaluate_fresh` trains all seeds
together (vmapped), early-stops each on validation AUPRC, picks the F1 threshold on validation
and scores the test set. The GRU is run at `--gru-sizes`. The simulator's oracle (the latent
risk) is scored on the same test set. Model and training settings: configs/default.py.

With `--grad-norm-size N`, every model run at N training stays also gets the per-class table of
per-example parameter-gradient norms (paper Table 3): `grad_norm_stats` of each seed's early-
stopped params over that run's (normalised) training subset, recorded per seed and averaged over
seeds. The params are the very ones `evaluate_fresh` scored (captured from its training call),
so no extra training is run.

Writes benchmarks/results/learning_curve{_TAG}.json and .md (rewritten after every setting, so
a stopped run keeps what it finished).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import time

import jax
import numpy as np
from sklearn import metrics as skm

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.data import simulate_icu, stratified_split_indices
from tardiff_jax.data.normalizers import make_normalizer, normalize_dataset
from tardiff_jax.evaluation import downstream
from tardiff_jax.evaluation.downstream import evaluate_fresh
from tardiff_jax.evaluation.grad_norms import grad_norm_stats
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.training.classifier_trainer import unstack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nested_subset(y_pool: np.ndarray, n: int, seed: int) -> np.ndarray:
  """Indices of a stratified subset of size n; subsets of one seed are nested (n < m => subset)."""
  rng = np.random.default_rng([seed, 0xC0])
  prev = float(y_pool.mean())
  pos = rng.permutation(np.flatnonzero(y_pool == 1))
  neg = rng.permutation(np.flatnonzero(y_pool == 0))
  n_pos = max(2, int(round(n * prev)))
  return np.sort(np.concatenate([pos[:n_pos], neg[:n - n_pos]]))


@contextlib.contextmanager
def capture_trained(store: dict):
  """Within the block, `evaluate_fresh` also leaves its classifier and seed-stacked params in
  `store` ("classifier", "params"): its call to `train_classifier_seeds` is wrapped, unchanged."""
  orig = downstream.train_classifier_seeds

  def wrapped(classifier, *a, **kw):
    params, hists = orig(classifier, *a, **kw)
    store.update(classifier=classifier, params=params)
    return params, hists

  downstream.train_classifier_seeds = wrapped
  try:
    yield store
  finally:
    downstream.train_classifier_seeds = orig


def grad_norm_table(classifier, params, num_seeds: int, x, y, batch_size: int,
                    max_seeds: int) -> dict:
  """Per-class grad-norm stats of the first min(num_seeds, max_seeds) seeds and their mean.

  Returns {"per_seed": [{"seed": i, "stats": {CLASS: {"mean", "std", "count"}}, "time_s"}],
  "mean": {CLASS: {"mean": mean over seeds of the class mean, "std": mean over seeds of the
  class std, "count"}}, "minority_over_majority": ratio of the two class means (classes 1 / 0)}.
  """
  per_seed = []
  for i in range(min(num_seeds, max_seeds)):
    t0 = time.perf_counter()
    st = grad_norm_stats(classifier.loss_fn, unstack(params, i), x, y, batch_size=batch_size)
    per_seed.append({"seed": i, "stats": st, "time_s": time.perf_counter() - t0})
  classes = sorted(per_seed[0]["stats"], key=int)
  mean = {k: {"mean": float(np.mean([p["stats"][k]["mean"] for p in per_seed])),
              "std": float(np.mean([p["stats"][k]["std"] for p in per_seed])),
              "count": per_seed[0]["stats"][k]["count"]} for k in classes}
  out = {"per_seed": per_seed, "mean": mean, "batch_size": int(batch_size)}
  if "0" in mean and "1" in mean:
    out["minority_over_majority"] = mean["1"]["mean"] / mean["0"]["mean"]
  return out


def write_md(path: str, res: dict) -> None:
  o = res["oracle"]
  lines = [
      "# Learning curve on the ICU simulator (mortality, 24 h x 7 vitals)", "",
      f"Command: `{res['command']}`", "",
      f"Validation {res['n_val']} / test {res['n_test']} stays (fixed), test prevalence "
      f"{res['prevalence_test']:.3f}. Mean +/- sample std over {res['num_seeds']} seeds "
      "(trained together, vmapped). AUPRC = average precision (step-wise). Minority F1 at the "
      "threshold chosen on validation.", "",
      f"Oracle (latent risk) on the test set: AUROC {o['auroc']:.3f}, AUPRC {o['auprc']:.3f}.",
      "",
      "| model | train stays | AUROC | AUPRC | minority F1 | epochs (best) | train s |",
      "|---|---|---|---|---|---|---|"]
  for r in res["results"]:
    sd = r["std"]
    ep = ",".join(str(s["best_epoch"]) for s in r["seeds"])
    lines.append(
        f"| {r['model']} | {r['n_train']} | {r['auroc']:.3f} +/- {sd['auroc']:.3f} | "
        f"{r['auprc']:.3f} +/- {sd['auprc']:.3f} | {r['minority_f1']:.3f} +/- "
        f"{sd['minority_f1']:.3f} | {ep} | {r['train_time_s']:.0f} |")
  gn = [r for r in res["results"] if "grad_norms" in r]
  if gn:
    lines += ["", "## Per-class gradient norms (paper Table 3)", "",
              "Per-example ||grad_phi loss||_2 over all parameters of the early-stopped "
              "classifier, on its own (normalised) training subset. Mean / std: per class, "
              "averaged over the seeds listed (std is the within-class population std).", "",
              "| model | train stays | seeds | class | count | mean norm | std norm | "
              "per-seed means |", "|---|---|---|---|---|---|---|---|"]
    for r in gn:
      g = r["grad_norms"]
      for k, v in g["mean"].items():
        ps = ", ".join(f"{p['stats'][k]['mean']:.4g}" for p in g["per_seed"])
        lines.append(f"| {r['model']} | {r['n_train']} | {len(g['per_seed'])} | {k} | "
                     f"{v['count']} | {v['mean']:.4g} | {v['std']:.4g} | {ps} |")
    lines += [""] + [f"- {r['model']}@{r['n_train']}: minority (1) / majority (0) mean norm = "
                     f"{r['grad_norms'].get('minority_over_majority', float('nan')):.2f}"
                     for r in gn]
  lines += ["", f"Device: {res['device']}; machine shared with other jobs (times are wall)."]
  tio.write_text(path, "\n".join(lines) + "\n")


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--sizes", default="250,500,1000,2000,4000,8000,16000")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--gru-sizes", default="16000", help="sizes where the GRU also runs ('' none)")
  ap.add_argument("--n-val", type=int, default=4000)
  ap.add_argument("--n-test", type=int, default=4000)
  ap.add_argument("--max-epochs", type=int, default=0, help="override (0 = config value)")
  ap.add_argument("--sim-seed", type=int, default=0)
  ap.add_argument("--tag", default="", help="output suffix: learning_curve_TAG.json")
  ap.add_argument("--grad-norm-size", type=int, default=0,
                  help="training size whose runs also get the per-class grad-norm table (0 off)")
  ap.add_argument("--grad-norm-seeds", type=int, default=3,
                  help="at most this many seeds get the grad-norm table")
  ap.add_argument("--grad-norm-batch", type=int, default=256,
                  help="examples per vmapped per-example-gradient batch")
  args = ap.parse_args()
  sizes = [int(s) for s in args.sizes.split(",") if s]
  gru_sizes = [int(s) for s in args.gru_sizes.split(",") if s]
  cfg = experiment_config(load_config("default"))
  tcfg = cfg.train_classifier
  if args.max_epochs:
    tcfg = dataclasses.replace(tcfg, max_epochs=args.max_epochs)
  n_train_pool = max(sizes + gru_sizes)
  total = n_train_pool + args.n_val + args.n_test
  sim = simulate_icu(total, seed=args.sim_seed)
  ds = sim.dataset
  tr, va, te = stratified_split_indices(ds.y, seed=0, val_fraction=args.n_val / total,
                                        test_fraction=args.n_test / total)
  y_pool = ds.y[tr]
  oracle_risk = sim.latent_risk[te]
  y_test_raw = ds.y[te]
  oracle = {"auroc": float(skm.roc_auc_score(y_test_raw, oracle_risk)),
            "auprc": float(skm.average_precision_score(y_test_raw, oracle_risk))}
  tag = f"_{args.tag}" if args.tag else ""
  out_json = os.path.join(ROOT, "benchmarks", "results", f"learning_curve{tag}.json")
  res = {"command": "python benchmarks/learning_curve.py " + " ".join(
      f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
         "device": str(jax.devices()[0]), "platform": platform.platform(),
         "n_val": int(va.size), "n_test": int(te.size),
         "prevalence_test": float(y_test_raw.mean()), "num_seeds": args.seeds,
         "train_config": tcfg.to_dict(), "oracle": oracle, "results": []}
  print(f"[learning_curve] oracle on test: {oracle}", flush=True)
  runs = [("timesnet", n) for n in sizes] + [("gru", n) for n in gru_sizes]
  for model, n in runs:
    sub = tr[nested_subset(y_pool, n, args.sim_seed)]
    train = ds.subset(sub)
    norm = make_normalizer("zscore").fit(train)
    xt, xv, xs = (normalize_dataset(d, norm).x for d in (train, ds.subset(va), ds.subset(te)))
    top_k = cfg.classifier.timesnet.top_k
    periods = timesnet_periods(xt, top_k) if model == "timesnet" else None
    ccfg = cfg.classifier.spec(2, xt.shape[1], xt.shape[2], model=model, periods=periods)
    t0 = time.perf_counter()
    store: dict = {}
    with capture_trained(store):
      r = evaluate_fresh(xt, train.y, xv, ds.y[va], xs, y_test_raw, ccfg, tcfg,
                         seeds=list(range(args.seeds)), name=f"{model}@{n}", quiet=False)
    r.pop("curves", None)  # Test ROC / PR curves: not part of this table.
    r.update(model=model, n_train=int(n), prevalence_train=float(train.y.mean()),
             wall_s=time.perf_counter() - t0)
    if args.grad_norm_size and n == args.grad_norm_size:
      t1 = time.perf_counter()
      r["grad_norms"] = grad_norm_table(store["classifier"], store["params"], args.seeds, xt,
                                        train.y, args.grad_norm_batch, args.grad_norm_seeds)
      print(f"[learning_curve] {model} n={n} grad norms (mean over seeds): "
            f"{r['grad_norms']['mean']} ({time.perf_counter() - t1:.0f} s)", flush=True)
    print(f"[learning_curve] {model} n={n}: AUROC {r['auroc']:.3f}+/-{r['std']['auroc']:.3f} "
          f"AUPRC {r['auprc']:.3f}+/-{r['std']['auprc']:.3f} F1 {r['minority_f1']:.3f} "
          f"({r['wall_s']:.0f} s)", flush=True)
    res["results"].append(r)
    tio.write_json(out_json, res)
    write_md(out_json[:-5] + ".md", res)
  print(f"wrote {out_json}")


if __name__ == "__main__":
  main()
