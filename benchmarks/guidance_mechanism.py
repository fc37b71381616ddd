"""How guidance moves samples: a reference classifier's view of real, unguided and guided sets.

  python benchmarks/guidance_mechanism.py [--regime default] [--seed 0] [--root runs/utility]
                                          [--variants tardiff,classifier] [--out benchmarks/results]

Reads a cohort that `benchmarks/utility.py` has run (its workdir under ROOT/REGIME/seedK holds
the unguided set and every variant's set at each w of the grid). A reference GRU is trained on a
large fresh simulated cohort (20,000 stays from another simulator seed, normalised like the
cohort; early-stopped on 20% of it, its threshold the F1-best there): it knows the task far
better than the guide, so it says what guidance does to the samples. Per set and class:
P(died) quantiles, the share of "hard" samples (on the wrong side of the reference threshold),
the mean distance to the nearest real training stay (closeness) and the mean pairwise distance
(spread; a collapse shows as a falling spread). Real training stays are the reference row. The
test split is not read. Writes OUT/guidance_mechanism.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utility import REGIMES, ROOT, VARIANTS, cohort_config  # noqa: E402

from tardiff_jax import io as tio  # noqa: E402
from tardiff_jax.data.normalizers import normalize_dataset  # noqa: E402
from tardiff_jax.data.simulator import simulate_icu  # noqa: E402
from tardiff_jax.evaluation import metrics as mt  # noqa: E402
from tardiff_jax.experiment import Experiment, stages  # noqa: E402
from tardiff_jax.models.classifier import make_classifier  # noqa: E402
from tardiff_jax.training.classifier_trainer import predict_proba, train_classifier  # noqa: E402

REFERENCE_STAYS = 20000


def reference_classifier(exp, seed: int):
  """A GRU trained on a fresh simulated cohort (normalised with the cohort's normaliser)."""
  s = exp.config.data.simulator
  sim = simulate_icu(REFERENCE_STAYS, seed=100_000 + seed, missing_rate=s.missing_rate,
                     prevalence=s.prevalence)
  ds = normalize_dataset(sim.dataset, exp.data.normalizer)
  rng = np.random.default_rng(seed)
  idx = rng.permutation(len(ds.y))
  n_val = len(idx) // 5
  va, tr = idx[:n_val], idx[n_val:]
  clf = make_classifier(stages.classifier_spec(exp.config, exp.data, "gru"))
  cfg = exp.config.train_classifier
  params, hist = train_classifier(clf, ds.x[tr], ds.y[tr], ds.x[va], ds.y[va], cfg, seed=seed,
                                  target=1, quiet=True)
  p_val = predict_proba(clf, params, ds.x[va])
  thr = mt.best_f1_threshold(ds.y[va], p_val, 1)
  quality = mt.binary_metrics(ds.y[va], p_val, threshold=thr, minority=1)
  return (lambda x: predict_proba(clf, params, x)), thr, {
      "auroc": float(quality["auroc"]), "auprc": float(quality["auprc"]), "threshold": thr,
      "best_epoch": hist.get("best_epoch")}


def _distances(a: np.ndarray, b: np.ndarray | None, n: int, rng, same: bool = False) -> float:
  """Mean nearest-neighbour distance from rows of a to b (b None: mean pairwise within a;
  `same`: a is b, a row's own copy is not its neighbour)."""
  a = a.reshape(len(a), -1)[rng.permutation(len(a))[:n]]
  if b is None:
    d = np.sqrt(np.maximum(((a[:, None] - a[None]) ** 2).sum(-1), 0.0))
    return float(d[np.triu_indices(len(a), 1)].mean()) if len(a) > 1 else float("nan")
  b = b.reshape(len(b), -1)
  d = np.sqrt(np.maximum((a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None], 0.0))
  if same:
    d[d < 1e-6] = np.inf
  return float(d.min(1).mean())


def describe(x, y, score, thr: float, real_x, real_y, rng, n: int = 300,
             same: bool = False) -> dict[str, dict]:
  p = score(x)
  out = {}
  for c in np.unique(y):
    pc = p[y == c]
    wrong = pc < thr if c == 1 else pc >= thr
    out[str(int(c))] = {
        "n": int(pc.size), "p_died_q10_q50_q90": [float(q) for q in np.quantile(pc, [.1, .5, .9])],
        "p_died_mean": float(pc.mean()), "hard_share": float(wrong.mean()),
        "nn_to_real_train": _distances(x[y == c], real_x[real_y == c], n, rng, same),
        "pairwise": _distances(x[y == c], None, n, rng)}
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--regime", default="default", choices=list(REGIMES))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--variants", default="tardiff,classifier")
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
  ap.add_argument("--root", default=os.path.join(ROOT, "runs", "utility"))
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  args = ap.parse_args()
  t0 = time.perf_counter()
  wd = os.path.join(args.root, args.regime, f"seed{args.seed}")
  rows = {}
  with Experiment(cohort_config(args.config, args.regime, args.seed), wd, quiet=True,
                  readonly=True) as exp:
    d = exp.data
    score, thr, quality = reference_classifier(exp, args.seed)
    rng = np.random.default_rng(0)
    rx, ry = d.train.x, d.train.y
    rows["real train"] = describe(rx, ry, score, thr, rx, ry, rng, same=True)
    un = exp.synthetic("unguided")
    rows["unguided"] = describe(un.x, un.y, score, thr, rx, ry, rng)
    grid = [float(w) for w in exp.config.guidance.scale_grid if w != 0.0]
  for v in [v for v in args.variants.split(",") if v]:
    with Experiment(cohort_config(args.config, args.regime, args.seed, v), wd, quiet=True,
                    readonly=True) as e:
      for w in grid:
        # G over all guidance-val rows unless the variant fixes another class filter.
        syn = e.synthetic(VARIANTS[v][0], scale=w, class_filter=e.config.guidance.fixed_filter)
        rows[f"{v} w={w:g}"] = describe(syn.x, syn.y, score, thr, rx, ry, rng)
  res = {"regime": args.regime, "seed": args.seed, "reference": quality,
         "reference_stays": REFERENCE_STAYS, "sets": rows,
         "seconds": time.perf_counter() - t0,
         "command": "python benchmarks/guidance_mechanism.py " + " ".join(sys.argv[1:])}
  tio.write_json(os.path.join(args.out, "guidance_mechanism.json"), res)
  lines = ["# How guidance moves samples (reference-classifier view)", "",
           f"Command: `{res['command']}` (cohort {args.regime}/{args.seed})", "",
           f"Reference GRU trained on {REFERENCE_STAYS} fresh simulated stays: held-out AUROC "
           f"{quality['auroc']:.3f}, AUPRC {quality['auprc']:.3f}, F1 threshold "
           f"{thr:.3f}. Hard = on the wrong side of that threshold. Distances in normalised "
           "units over 300 samples per class (real train: to its nearest other stay).", "",
           "| set | class | n | P(died) q10 / q50 / q90 | hard share | NN distance to real train "
           "| mean pairwise distance |", "|---|---|---|---|---|---|---|"]
  for name, by_c in rows.items():
    for c, r in by_c.items():
      q = " / ".join(f"{v:.3f}" for v in r["p_died_q10_q50_q90"])
      lines.append(f"| {name} | {c} | {r['n']} | {q} | {r['hard_share']:.3f} | "
                   f"{r['nn_to_real_train']:.3f} | {r['pairwise']:.3f} |")
  tio.write_text(os.path.join(args.out, "guidance_mechanism.md"), "\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
