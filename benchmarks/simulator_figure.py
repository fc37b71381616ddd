"""Simulator summary: figure of simulated stays and the numbers quoted in docs/simulator.md.

  python benchmarks/simulator_figure.py

Writes docs/figures/simulator.png (a few survivors and non-survivors per channel, clinical units)
and benchmarks/results/simulator.json (oracle AUROC/AUPRC at default settings on 20,000 stays,
prevalence, long-stay rate, subtype counts, time to simulate, and a learning-curve check:
logistic regression and gradient boosting on per-stay summary features trained on 250, 1,000,
4,000 and 16,000 stays, tested on the last 4,000).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from tardiff_jax import io as tio  # noqa: E402
from tardiff_jax.data import CHANNEL_NAMES, CHANNEL_UNITS, SUBTYPE_NAMES, simulate_icu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def auroc(y: np.ndarray, score: np.ndarray) -> float:
  """Area under the ROC curve (ties count one half)."""
  return float(skm.roc_auc_score(y, score))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
  """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k (step-wise)."""
  return float(skm.average_precision_score(y, score))


def time_simulation(num_stays: int, seed: int, repeats: int = 3) -> dict:
  simulate_icu(50, seed=seed)  # Warm-up (imports, allocator).
  wall, cpu = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    simulate_icu(num_stays, seed=seed)
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  return {"num_stays": num_stays, "repeats": repeats, "wall_s_min": min(wall),
          "wall_s_median": float(np.median(wall)), "cpu_s_min": min(cpu),
          "cpu_s_median": float(np.median(cpu))}


def summary_features(x: np.ndarray) -> np.ndarray:
  """float[N, 6C]: per channel mean, min, max, std, first-6h mean, last-6h mean (NaN-aware)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    f = np.concatenate([np.nanmean(x, 1), np.nanmin(x, 1), np.nanmax(x, 1), np.nanstd(x, 1),
                        np.nanmean(x[:, :6], 1), np.nanmean(x[:, -6:], 1)], axis=1)
  return f  # NaN where a channel is unobserved in the window.


def learning_curve(sim, sizes=(250, 1000, 4000, 16000), n_test: int = 4000,
                   max_repeats: int = 4) -> dict:
  """Test AUROC/AUPRC vs training size of two simple classifiers on per-stay summary features.

  Training sets are the first stays (disjoint blocks of `n`, averaged over up to `max_repeats`
  blocks for small `n`); the test set is the last `n_test` stays.
  """
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  f, y = summary_features(sim.dataset.x), sim.dataset.y
  te = np.arange(len(y) - n_test, len(y))
  f_lr = np.where(np.isnan(f), np.nanmean(f[:-n_test], 0), f)  # Mean-impute, standardise.
  f_lr = (f_lr - f_lr[:-n_test].mean(0)) / (f_lr[:-n_test].std(0) + 1e-6)
  models = {
      "logistic": (lambda: LogisticRegression(C=0.1, max_iter=2000), f_lr),
      "hist_gradient_boosting": (lambda: HistGradientBoostingClassifier(
          max_iter=200, learning_rate=0.05, random_state=0), f)}
  out = {"features": "36 per-stay summary features (mean, min, max, std, first-6h and last-6h "
                     "means per channel)",
         "models": {"logistic": "LogisticRegression(C=0.1), mean-imputed, standardised",
                    "hist_gradient_boosting": "HistGradientBoostingClassifier(max_iter=200, "
                                              "learning_rate=0.05), NaN-aware"},
         "n_test": n_test,
         "oracle_test": {"auroc": auroc(y[te], sim.latent_risk[te]),
                         "auprc": average_precision(y[te], sim.latent_risk[te])}}
  for name, (make, feats) in models.items():
    rows = {}
    for n in sizes:
      reps = max(1, min(max_repeats, (len(y) - n_test) // n))
      scores = []
      for k in range(reps):
        tr = np.arange(k * n, (k + 1) * n)
        p = make().fit(feats[tr], y[tr]).predict_proba(feats[te])[:, 1]
        scores.append((auroc(y[te], p), average_precision(y[te], p)))
      m = np.mean(scores, 0)
      rows[str(n)] = {"auroc": float(m[0]), "auprc": float(m[1]), "repeats": reps}
    out[name] = rows
  return out


def plot(sim, path: str, per_class: int = 4, seed: int = 0) -> None:
  ds = sim.dataset
  rng = np.random.default_rng(seed)
  surv = rng.choice(np.flatnonzero(ds.y == 0), per_class, replace=False)
  died = rng.choice(np.flatnonzero(ds.y == 1), per_class, replace=False)
  fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True)
  hours = np.arange(ds.T)
  for c, ax in enumerate(axes.flat[:7]):
    for idx, color in ((surv, "tab:blue"), (died, "tab:red")):
      for i in idx:
        ax.plot(hours, ds.x[i, :, c], "-o", color=color, ms=2.5, lw=1.0, alpha=0.75)
    ax.set_title(f"{CHANNEL_NAMES[c]} ({CHANNEL_UNITS[c]})")
  ax = axes.flat[7]
  for idx, color in ((surv, "tab:blue"), (died, "tab:red")):
    for i in idx:
      label = SUBTYPE_NAMES[sim.subtype[i]] if sim.subtype[i] >= 0 else "none"
      ax.plot(hours, sim.severity[i], color=color, lw=1.2, alpha=0.8)
      ax.annotate(label, (hours[-1], sim.severity[i, -1]), fontsize=7, color=color)
  ax.set_title("latent severity (not observed)")
  for ax in axes[1]:
    ax.set_xlabel("hour")
  handles = [plt.Line2D([], [], color="tab:blue", label=f"survived ({per_class})"),
             plt.Line2D([], [], color="tab:red", label=f"died ({per_class})")]
  fig.legend(handles=handles, loc="upper right")
  fig.suptitle("Simulated ICU stays (gaps = unobserved values)")
  fig.tight_layout(rect=(0, 0, 0.93, 0.95))
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  tio.write_bytes(path, buf.getvalue())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--num_stays", type=int, default=20_000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--png", default=os.path.join(ROOT, "docs", "figures", "simulator.png"))
  ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "simulator.json"))
  args = ap.parse_args()

  timing = time_simulation(args.num_stays, args.seed)
  sim = simulate_icu(args.num_stays, seed=args.seed)
  y = sim.dataset.y
  counts = lambda sel: {n: int(((sim.subtype == k) & sel).sum())  # noqa: E731
                        for k, n in enumerate(SUBTYPE_NAMES)}
  result = {
      "settings": {"num_stays": args.num_stays, "seed": args.seed, **sim.options},
      "oracle_auroc": sim.oracle_auroc,
      "oracle_auprc": sim.oracle_auprc,
      "auprc_definition": "average precision (step-wise, no interpolation)",
      "prevalence": float(y.mean()),
      "long_stay_rate": float(sim.long_stay.mean()),
      "long_stay_oracle_auroc": auroc(sim.long_stay, sim.long_stay_risk),
      "missing_rate": float(1.0 - sim.dataset.mask.mean()),
      "subtype_counts_all": {**counts(np.ones_like(y, bool)), "none": int((sim.subtype < 0).sum())},
      "subtype_counts_died": {**counts(y == 1), "none": int(((sim.subtype < 0) & (y == 1)).sum())},
      "transient_events": int((sim.transient_subtype >= 0).sum()),
      "transient_events_in_survivors": int(((sim.transient_subtype >= 0) & (y == 0)).sum()),
      "time_to_simulate": timing,
      "reference_learning_curve": learning_curve(sim),
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "load_avg_1m": os.getloadavg()[0]},
  }
  plot(sim, args.png)
  tio.write_json(args.json, result)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
