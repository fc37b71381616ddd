"""Utility of every method over several data seeds: the pipeline on several simulated cohorts,
TSTR and TSRTR per method, and whether TarDiff beats unguided sampling and real data alone.

  python benchmarks/utility.py [--seeds 0,1,2] [--root runs/utility] [--config configs/default.py]
                               [--workdir SEED=DIR ...] [--tag simulator]

For each data seed k the full pipeline runs in ROOT/seed{k} with `data.simulator.seed = k` and
`data.split_seed = k` (a new simulated cohort and split; model seeds unchanged), or an existing
finished workdir is used (`--workdir 0=runs/d1`; its config must have that data seed). Runs are
resumable: a finished workdir is only read. The script then reads every report.json and writes
benchmarks/results/utility_{TAG}.{json,md}: per method, TSTR and TSRTR (every ratio)
AUROC / AUPRC / minority F1 as the mean over data seeds (each value already a mean over the
report's model seeds) with the spread over data seeds, next to the simulator's oracle, and a
plain verdict per comparison: TarDiff vs unguided and vs real-only, paired by data seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.config import ConfigError, experiment_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("auroc", "auprc", "minority_f1")


def run_seed(seed: int, workdir: str, config: str, log_dir: str) -> float:
  """Runs (or resumes) the pipeline for one data seed; returns wall seconds of this call."""
  cmd = [sys.executable, "-m", "tardiff_jax.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.data.simulator.seed={seed}", f"--config.data.split_seed={seed}"]
  os.makedirs(log_dir, exist_ok=True)
  t0 = time.perf_counter()
  with open(os.path.join(log_dir, f"utility_seed{seed}.log"), "w") as log:
    print(f"[utility] seed {seed}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  return time.perf_counter() - t0


def check_seed(workdir: str, seed: int) -> None:
  path = os.path.join(workdir, "config.json")
  try:
    data = experiment_config(tio.read_json(path)).data
  except ConfigError as e:
    raise SystemExit(f"{path} is not a config of this version of tardiff_jax ({e}); run the "
                     "pipeline there again.") from None
  got = (data.simulator.seed, data.split_seed)
  if got != (seed, seed):
    raise SystemExit(f"{workdir} was run with (data.simulator.seed, data.split_seed) = {got}, "
                     f"not ({seed}, {seed}).")


def _stat(values: list[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "values": [float(x) for x in v]}


def aggregate(reports: dict[int, dict]) -> dict:
  """Means and spreads over data seeds of every method's TSTR / TSRTR metrics."""
  first = next(iter(reports.values()))
  ex = first.get("extras", {})
  methods = first["methods"]
  alphas = sorted({a for m in first["tsrtr"].values() for a in m}, key=float)
  out = {"seeds": sorted(reports), "methods": methods, "alphas": alphas, "tstr": {},
         "tsrtr": {}, "oracle": {}, "model_seeds": ex.get("seeds"),
         "downstream": ex.get("downstream"), "notes": ex.get("notes", []),
         "selected_scale": {k: r.get("extras", {}).get("scales", {}).get("tardiff")
                            for k, r in reports.items()},
         "timing_s": {k: _total_time(r) for k, r in reports.items()}}
  for key in ("oracle_auroc", "oracle_auprc"):
    vals = [r["dataset"].get(key) for r in reports.values()]
    if all(v is not None for v in vals):
      out["oracle"][key] = _stat(vals)
  for m in methods:
    out["tstr"][m] = {k: _stat([r["tstr"][m][k] for r in reports.values()]) for k in METRICS}
    if m in first["tsrtr"]:
      out["tsrtr"][m] = {a: {k: _stat([r["tsrtr"][m][a][k] for r in reports.values()])
                             for k in METRICS} for a in alphas}
  out["verdicts"] = verdicts(out)
  return out


def _total_time(report: dict) -> float:
  t = report.get("timing", {})
  return float(sum(v for k, v in t.items() if k.endswith("_s") and k != "samples_per_s"))


def _verdict(diffs: list[float]) -> str:
  d = np.asarray(diffs)
  if np.all(d > 0):
    return "wins"
  if np.all(d < 0):
    return "loses"
  return "ties (mixed signs or no difference)"


def verdicts(agg: dict) -> list[dict]:
  """TarDiff vs unguided / real-only / each other method, paired by data seed."""
  rows = []
  if "tardiff" not in agg["tsrtr"]:
    return rows
  td = agg["tsrtr"]["tardiff"]
  others = [m for m in agg["tsrtr"] if m != "tardiff"]
  for a in agg["alphas"]:
    for k in ("auprc", "auroc"):
      mine = td[a][k]["values"]
      real = agg["tstr"]["real"][k]["values"]
      cmp = {"real (TRTR)": real}
      cmp.update({m: agg["tsrtr"][m][a][k]["values"] for m in others})
      for name, vals in cmp.items():
        diffs = [x - y for x, y in zip(mine, vals)]
        rows.append({"alpha": a, "metric": k, "versus": name,
                     "mean_diff": float(np.mean(diffs)), "diffs": diffs,
                     "verdict": _verdict(diffs)})
  return rows


def _cell(s: dict) -> str:
  return f"{s['mean']:.3f} +/- {s['std']:.3f}"


def markdown(agg: dict, command: str) -> str:
  n = len(agg["seeds"])
  lines = ["# Utility on the ICU simulator: every method, TSTR and TSRTR", "",
           f"Command: `{command}`", "",
           f"{n} data seeds (simulated cohort and split: {agg['seeds']}); every cell is the mean "
           f"+/- sample std over data seeds of the report's mean over {agg['model_seeds']} model "
           f"seeds (fresh {agg['downstream']} per setting, early-stopped on validation, scored "
           "once on the real test split). AUPRC = average precision. Minority F1 at the "
           "threshold chosen on validation.", ""]
  if agg["oracle"]:
    o = agg["oracle"]
    lines += [f"Simulator oracle (latent risk) on the same test splits: AUROC "
              f"{_cell(o['oracle_auroc'])}, AUPRC {_cell(o['oracle_auprc'])}.", ""]
  lines += [f"Selected guidance scale w per data seed: {agg['selected_scale']}. "
            f"Pipeline wall time per data seed (s, stage sum): "
            f"{ {k: round(v) for k, v in agg['timing_s'].items()} }.", "",
            "## TSTR (train on synthetic only; `real` = TRTR)", "",
            "| method | AUROC | AUPRC | minority F1 |", "|---|---|---|---|"]
  for m in agg["methods"]:
    s = agg["tstr"][m]
    lines.append(f"| {m} | {_cell(s['auroc'])} | {_cell(s['auprc'])} | "
                 f"{_cell(s['minority_f1'])} |")
  for k in METRICS:
    lines += ["", f"## TSRTR {k} (real train + alpha x |train| synthetic)", "",
              "| method | " + " | ".join(f"alpha {a}" for a in agg["alphas"]) + " |",
              "|---|" + "---|" * len(agg["alphas"])]
    r = agg["tstr"]["real"][k]
    lines.append("| real only (TRTR) | " + " | ".join(_cell(r) for _ in agg["alphas"]) + " |")
    for m, by_a in agg["tsrtr"].items():
      lines.append(f"| {m} | " + " | ".join(_cell(by_a[a][k]) for a in agg["alphas"]) + " |")
  if agg["notes"]:
    lines += ["", "## Notes from the reports", ""] + [f"- {n}" for n in agg["notes"]]
  if agg["verdicts"]:
    lines += ["", "## TarDiff, paired by data seed (wins = better on every seed, loses = worse "
              "on every seed, ties = otherwise; a seed whose selected w is 0 gives TarDiff = "
              "unguided)", "",
              "| alpha | metric | TarDiff vs | mean diff | per seed | verdict |",
              "|---|---|---|---|---|---|"]
    for v in agg["verdicts"]:
      lines.append(f"| {v['alpha']} | {v['metric']} | {v['versus']} | {v['mean_diff']:+.4f} | "
                   + ", ".join(f"{d:+.3f}" for d in v["diffs"]) + f" | {v['verdict']} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--root", default=os.path.join(ROOT, "runs", "utility"))
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
  ap.add_argument("--workdir", action="append", default=[],
                  help="SEED=DIR: use an existing workdir for that data seed")
  ap.add_argument("--tag", default="simulator")
  args = ap.parse_args()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  given = {int(k): os.path.abspath(v) for k, v in (w.split("=", 1) for w in args.workdir)}
  reports = {}
  for s in seeds:
    wd = given.get(s, os.path.join(args.root, f"seed{s}"))
    if not os.path.exists(os.path.join(wd, "report.json")):
      secs = run_seed(s, wd, args.config, os.path.join(args.root, "logs"))
      print(f"[utility] seed {s} finished in {secs:.0f}s", flush=True)
    check_seed(wd, s)
    reports[s] = json.load(open(os.path.join(wd, "report.json")))
  agg = aggregate(reports)
  agg["workdirs"] = {s: given.get(s, os.path.join(args.root, f"seed{s}")) for s in seeds}
  command = "python benchmarks/utility.py " + " ".join(sys.argv[1:])
  out = os.path.join(ROOT, "benchmarks", "results", f"utility_{args.tag}")
  tio.write_json(out + ".json", agg)
  tio.write_text(out + ".md", markdown(agg, command))
  print(markdown(agg, command))


if __name__ == "__main__":
  main()
