"""Issue 3 acceptance: do unguided samples match the training data, per class and channel?

  python benchmarks/diffusion_fidelity.py --workdir=runs/simulator [--tag default]

Reads a pipeline workdir after its `generate` stage (synthetic/unguided.npz, original units) and
compares, per class and channel, the means, standard deviations and lag-1 autocorrelations of the
unguided samples with the real training split (observed values only), in clinical units.
A cell passes when the relative difference is within 15%. It also checks that the class
conditioning works: a logistic regression fitted on real train scores class-1 samples higher
than class-0 samples. Writes benchmarks/results/diffusion_fidelity[_TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from sklearn.linear_model import LogisticRegression

from tardiff_jax import io as tio
from tardiff_jax.data import DataConfig, prepare_data
from tardiff_jax.evaluation.fidelity import marginal_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 0.15


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b) / np.maximum(np.abs(b), 1e-8)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--tag", default="")
  ap.add_argument("--method", default="unguided")
  args = ap.parse_args()
  cfg = json.load(open(os.path.join(args.workdir, "config.json")))
  data = prepare_data(DataConfig(**cfg["data"]))
  raw = data.raw.train
  with np.load(os.path.join(args.workdir, "synthetic", f"{args.method}.npz"),
               allow_pickle=False) as z:
    xs, ys = z["x"], z["y"]
  names = list(raw.channel_names)
  table, n_pass, n_cells = {}, 0, 0
  for c in range(raw.num_classes):
    st = marginal_stats(raw.x[raw.y == c], xs[ys == c], mask=raw.mask[raw.y == c])
    r = {"mean": rel(st["syn_mean"], st["real_mean"]), "std": rel(st["syn_std"], st["real_std"]),
         "acf1": rel(st["syn_acf1"], st["real_acf1"])}
    table[str(c)] = {
        "class_name": raw.class_names[c], "n_real": int(np.sum(raw.y == c)),
        "n_syn": int(np.sum(ys == c)), "channels": names,
        **{k: st[k] for k in ("real_mean", "syn_mean", "real_std", "syn_std", "real_acf1",
                              "syn_acf1")},
        **{f"rel_{k}": v.tolist() for k, v in r.items()},
        "pass": {k: (v <= TOL).tolist() for k, v in r.items()}}
    for v in r.values():
      n_pass += int(np.sum(v <= TOL))
      n_cells += v.size
  # Class conditioning: a simple classifier trained on real (normalised, filled) data.
  lr = LogisticRegression(max_iter=2000, C=0.1)
  tr = data.train
  lr.fit(tr.x.reshape(len(tr.x), -1), tr.y)
  p = lr.predict_proba(data.normalizer.transform(xs).reshape(len(xs), -1))[:, 1]
  thr = float(np.quantile(lr.predict_proba(tr.x.reshape(len(tr.x), -1))[:, 1],
                          1 - float(np.mean(tr.y))))
  cond = {"mean_p1_class1": float(p[ys == 1].mean()), "mean_p1_class0": float(p[ys == 0].mean()),
          "frac_pred1_class1": float(np.mean(p[ys == 1] >= thr)),
          "frac_pred1_class0": float(np.mean(p[ys == 0] >= thr)),
          "threshold": thr, "threshold_rule": "top-prevalence quantile of real-train scores"}
  res = {"workdir": os.path.abspath(args.workdir), "method": args.method, "tolerance": TOL,
         "cells_within_tolerance": n_pass, "cells": n_cells, "per_class": table,
         "class_conditioning": cond}
  tag = f"_{args.tag}" if args.tag else ""
  out = os.path.join(ROOT, "benchmarks", "results", f"diffusion_fidelity{tag}")
  tio.write_json(out + ".json", res)
  lines = [f"# Unguided samples vs real train ({args.method}), per class and channel", "",
           f"Workdir `{args.workdir}`; relative difference |syn - real| / |real| in clinical "
           f"units, observed real values only. Within {TOL:.0%}: {n_pass}/{n_cells} cells.", ""]
  for c, t in table.items():
    lines += [f"## class {c} ({t['class_name']}): {t['n_real']} real, {t['n_syn']} synthetic", "",
              "| channel | mean real | mean syn | rel | std real | std syn | rel | acf1 real | "
              "acf1 syn | rel |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, ch in enumerate(t["channels"]):
      lines.append(
          f"| {ch} | {t['real_mean'][i]:.2f} | {t['syn_mean'][i]:.2f} | {t['rel_mean'][i]:.1%} "
          f"| {t['real_std'][i]:.2f} | {t['syn_std'][i]:.2f} | {t['rel_std'][i]:.1%} "
          f"| {t['real_acf1'][i]:.3f} | {t['syn_acf1'][i]:.3f} | {t['rel_acf1'][i]:.1%} |")
    lines.append("")
  lines += ["## Class conditioning", "",
            f"Logistic regression on real train: mean P(died) of class-1 samples "
            f"{cond['mean_p1_class1']:.3f} vs class-0 samples {cond['mean_p1_class0']:.3f}; "
            f"predicted positive (top-prevalence threshold) {cond['frac_pred1_class1']:.1%} vs "
            f"{cond['frac_pred1_class0']:.1%}.", ""]
  tio.write_text(out + ".md", "\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
