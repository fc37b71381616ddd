"""Does influence guidance help? Paired comparisons over simulated cohorts in two regimes.

  python benchmarks/utility.py [--cohorts 5] [--regimes default,scarce] [--root runs/utility]
                               [--variants tardiff,classifier] [--out benchmarks/results]

Regimes (the ICU simulator of `configs/default.py`, 10,000 stays, 20% validation):
  default  70% test -> 1,000 training stays, ~8% positive (the default pipeline's cohort);
  scarce   76% test, prevalence 3% -> ~400 training stays with a dozen positives, where
           augmentation should matter most (diffusion trained 1,000 steps: the same 160 epochs).

Per cohort k (`data.simulator.seed = data.split_seed = k`; model seeds unchanged) one diffusion
model, one guide (early-stopped on guidance-val) and one guidance cache are trained and shared by
every variant; nothing is retrained per variant. Every guided method's set is drawn at each w of
`guidance.scale_grid` with the common sampling key (w = 0 is the unguided set); `tardiff` (the
default, `guidance.class_filter = "auto"`) also at each w of `guidance.minority_scale_grid` with
G over the minority class only, the class filter chosen with w (`tardiff_all`: all rows only).

1. Selection (the pipeline's procedure): TSRTR alpha = 1 models for every (method, w) and TRTR,
   one vmapped group with the same inits for every set, early-stopped on guidance-val, scored
   on evaluation-val (which chooses w) and, for the record only, on test (which w would have
   been best: the selection regret of each criterion, evaluation-val AUPRC, AUROC, log-loss).
2. Final numbers: at each method's chosen w (evaluation-val AUPRC), TSRTR alpha = 1 and TSTR
   models early-stopped on validation and scored on test, as the pipeline's report does.

Paired differences per cohort with a 95% t-interval over cohorts, for TSRTR alpha = 1 and TSTR
AUPRC, AUROC and minority F1. Resumable: every finished cohort is kept in the results JSON
(written after each cohort, regimes interleaved) and in its workdir's artifact store, so a rerun
continues where a killed one stopped. Writes OUT/utility_simulator.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from scipy import stats

from tardiff_jax import io as tio
from tardiff_jax.config import load_config
from tardiff_jax.experiment import Experiment
from tardiff_jax.experiment.selection import choose_row, sweep_grids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Compared variants: a guided method and the config switches that make it (see GuidanceConfig).
VARIANTS = {
    # The default: G over all guidance-val rows or over the minority class only, chosen on
    # evaluation-val with w (guidance.class_filter = "auto").
    "tardiff": ("tardiff", {}),
    "tardiff_all": ("tardiff", {"guidance.class_filter": "all"}),
    "classifier": ("classifier", {}),
    "batch": ("batch", {}),
    "tardiff_cb": ("tardiff", {"guidance.class_balance": True}),
    "classifier_cb": ("classifier", {"guidance.class_balance": True}),
    # G over the guidance set's minority (positive) stays only (the paper's Table 5).
    "tardiff_min": ("tardiff", {"guidance.class_filter": "minority"}),
    # The same on a finer grid (minority-only G is ~32x longer than the all-class G on the
    # default cohorts: the shared grid's w = 1 may overshoot).
    "tardiff_min_fine": ("tardiff", {"guidance.class_filter": "minority",
                                     "guidance.scale_grid": (0.0, 0.03, 0.06, 0.1, 0.15, 0.3)}),
    # w J added to x0_hat (eps recomputed) instead of the mean: the mean moves by c_t w J, c_t
    # 0.03 -> 1 over the default 20 steps (mean 0.28), hence a grid about 3.5x the default's.
    "tardiff_x0": ("tardiff", {"guidance.placement": "x0", "guidance.class_filter": "all",
                               "guidance.scale_grid": (0.0, 3.0, 7.0, 10.0, 20.0, 35.0)}),
    # Guidance in the plain DDIM sampler (the step's own noise, x0_hat not recalibrated): the
    # analytic variance and the x0 calibration were fitted on unguided paths. Its w = 0 is that
    # sampler's own unguided set.
    "tardiff_plain": ("tardiff", {"sampling.variance": "ddim", "sampling.calibrate_x0": False,
                                  "guidance.class_filter": "all"}),
    # Three guides (seeds) averaged; TracIn over three checkpoints of the guide's training.
    "tardiff_ens": ("tardiff", {"guidance.ensemble": 3}),
    "tardiff_tracin": ("tardiff", {"guidance.trajectory": 3}),
}
# The name suffix of the variant that fixes a class filter of the default's sweep.
FILTER_SUFFIX = {"all": "all", "minority": "min", "majority": "maj"}
REGIMES = {
    "default": {},
    "scarce": {"data.simulator.prevalence": 0.03, "data.simulator.test_fraction": 0.76},
}
# The scarce regime's training set is 0.4x the default's: its diffusion model trains 0.4x the
# optimiser steps (the same number of epochs).
STEP_FACTOR = {"default": 1.0, "scarce": 0.4}
CRITERIA = ("auprc", "auroc", "log_loss")
METRICS = ("auprc", "auroc", "minority_f1")
COMPARISONS = (("tardiff", "unguided"), ("tardiff", "real"), ("tardiff", "classifier"),
               ("classifier", "unguided"), ("unguided", "real"), ("tardiff_cb", "unguided"),
               ("tardiff_cb", "tardiff"), ("classifier_cb", "classifier"),
               ("batch", "unguided"), ("tardiff_min", "unguided"), ("tardiff_min", "tardiff"),
               ("tardiff_min_fine", "unguided"), ("tardiff_min_fine", "tardiff"),
               ("tardiff", "tardiff_all"), ("tardiff_all", "unguided"),
               ("tardiff_x0", "tardiff_all"), ("tardiff_x0", "unguided"),
               ("tardiff_plain", "tardiff_all"), ("tardiff_plain", "unguided"),
               ("tardiff_ens", "unguided"), ("tardiff_ens", "tardiff"),
               ("tardiff_tracin", "unguided"), ("tardiff_tracin", "tardiff"),
               ("tardiff+masks", "tardiff"),
               ("unguided+masks", "unguided"), ("tardiff+masks", "unguided+masks"))


def cohort_config(config: str, regime: str, seed: int, variant: str | None = None):
  c = load_config(config)
  f = STEP_FACTOR[regime]
  c.train_diffusion.num_steps = max(1, round(f * c.train_diffusion.num_steps))
  c.train_diffusion.warmup_steps = round(f * c.train_diffusion.warmup_steps)
  overrides = {"data.simulator.seed": seed, "data.split_seed": seed,
               "guidance.gate_permutations": 0,  # The gate's permuted guides: not needed here.
               "evaluation.methods": ("unguided", "tardiff", "classifier", "batch"),
               **REGIMES[regime], **(VARIANTS[variant][1] if variant else {})}
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _ranking(res: dict[str, Any], split: str) -> dict[str, float]:
  return {k: res["also"][split][k] for k in CRITERIA}


def run_cohort(config: str, regime: str, seed: int, root: str, variants: tuple[str, ...],
               with_masks: bool = True) -> dict[str, Any]:
  """One cohort: shared models, the sweep group (selection + regret), the final group."""
  t0 = time.perf_counter()
  workdir = os.path.join(root, regime, f"seed{seed}")
  drawn, grids = {}, {}
  for v in variants:  # A variant's config switches change only its guided sets.
    with Experiment(cohort_config(config, regime, seed, v), workdir, quiet=True) as e:
      # Its own grid per class filter of G, as the pipeline's sweep (`sweep_grids`).
      grids[v] = sweep_grids(e, VARIANTS[v][0])
      for f, ws in grids[v].items():
        for w in ws:
          if w != 0.0 or _own_sampler(v):
            drawn[v, f, w] = e.synthetic(VARIANTS[v][0], scale=w, class_filter=f)
  with Experiment(cohort_config(config, regime, seed), workdir, quiet=True) as exp:
    d = exp.data
    grid = tuple(float(w) for w in exp.config.guidance.scale_grid)
    real = (d.train.x, d.train.y, d.fingerprint("train"))
    unguided = exp.synthetic("unguided")
    fits = {"trtr": real, "unguided": exp.mix(unguided, 1.0)[:3]}
    fit_of, by_identity = {}, {}  # Sets drawn by several variants (same key) train once.
    for (v, f, w), syn in drawn.items():
      x, y, ident = exp.mix(syn, 1.0)[:3]
      fit_of[v, f, w] = by_identity.setdefault(ident, _fit_name(v, f, w, grids[v]))
      fits.setdefault(fit_of[v, f, w], (x, y, ident))
    t_models = time.perf_counter() - t0
    sweep = exp.protocol_group(fits, "guide_val", "eval_val", "utility_sweep",
                               also=("eval_val", "test"))
    rows, selected, test_best, filters, parent = {}, {}, {}, {}, {}
    for m in variants:
      rows[m], parent[m] = [], m
      for f, ws in grids[m].items():
        for w in ws:
          res = sweep[fit_of[m, f, w] if (m, f, w) in fit_of else "unguided"]
          rows[m].append({"scale": w, "class_filter": f, **_ranking(res, "eval_val"),
                          "test": _ranking(res, "test")})
      # The default's sweep holds one sweep per class filter: each is also scored as the
      # variant that fixes that filter (tardiff_all, tardiff_min), from the same models.
      for f in grids[m] if len(grids[m]) > 1 else ():
        sub = f"{m}_{FILTER_SUFFIX[f]}"
        if sub not in variants:
          rows[sub] = [r for r in rows[m] if r["class_filter"] == f or not r["scale"]]
          parent[sub] = m
    for m, rs in rows.items():
      best = {c: choose_row(rs, c) for c in CRITERIA}
      selected[m] = {c: float(r["scale"]) for c, r in best.items()}
      filters[m] = {c: r["class_filter"] for c, r in best.items()}
      tb = choose_row([{**r, **r["test"]} for r in rs])
      test_best[m], filters[m]["test_best"] = float(tb["scale"]), tb["class_filter"]
    # Final numbers at the chosen w (evaluation-val AUPRC), as the pipeline's report scores them.
    sets = {"unguided": unguided}
    for m in rows:
      w = selected[m]["auprc"]
      sets[m] = drawn.get((parent[m], filters[m]["auprc"], w), unguided)
    alias, owner = {}, {}
    for m, syn in sets.items():
      # Methods that chose w = 0 share the unguided set: its models are trained once.
      alias[m] = owner.setdefault(syn.key.digest, m)
    seen = {m: syn for m, syn in sets.items() if alias[m] == m}
    masks = None
    if with_masks:  # The same sets with real training stays' missingness imposed.
      seen.update({f"{m}+masks": exp.downstream_set(sets[m], masks=True) for m in list(seen)})
      alias.update({f"{m}+masks": f"{alias[m]}+masks" for m in sets})
      # Which view helps, judged on evaluation-val (models early-stopped on guidance-val).
      res = exp.protocol_group({m: exp.mix(s, 1.0)[:3] for m, s in seen.items()}, "guide_val",
                               "eval_val", "utility_masks", also=("eval_val", "test"))
      masks = {m: {"eval_val": _ranking(res[alias[m]], "eval_val"),
                   "test": _ranking(res[alias[m]], "test")} for m in alias}
    final_fits = {"trtr": real}
    for m, syn in seen.items():
      final_fits[f"tsrtr_{m}"] = exp.mix(syn, 1.0)[:3]
      final_fits[f"tstr_{m}"] = (syn.x, syn.y, syn.identity)
    res = exp.protocol_group(final_fits, "val", "test", "utility_final")
    pick = lambda r: {k: float(r[k]) for k in METRICS}  # noqa: E731
    final = {"real": {"tsrtr_1.0": pick(res["trtr"]), "tstr": pick(res["trtr"])}}
    for m, src in alias.items():
      final[m] = {"tsrtr_1.0": pick(res[f"tsrtr_{src}"]), "tstr": pick(res[f"tstr_{src}"])}
    info = d.info
    return {"regime": regime, "seed": seed, "backend": jax.default_backend(),
            "downstream": exp.config.evaluation.downstream,
            "model_seeds": exp.config.evaluation.num_seeds,
            "n_train": int(len(d.train)), "n_pos_train": int(np.sum(d.train.y == d.target_class)),
            "oracle_auprc": info.get("oracle_auprc"), "oracle_auroc": info.get("oracle_auroc"),
            "guide_auroc": exp.guide_quality.metrics["auroc"]["value"],
            "grid": list(grid),
            "grids": {m: {f: list(ws) for f, ws in grids[parent[m]].items()
                          if m == parent[m] or m.endswith("_" + FILTER_SUFFIX[f])}
                      for m in rows},
            "sweep": rows, "selected": selected, "test_best": test_best,
            "selected_filter": filters,
            "final": final, "masks": masks, "seconds": {"models_and_sets": t_models,
                                        "total": time.perf_counter() - t0}}


def _own_sampler(variant: str) -> bool:
  """Whether the variant changes the sampler: then its w = 0 is its own unguided set."""
  return any(k.startswith("sampling.") for k in VARIANTS[variant][1])


def _fit_name(variant: str, class_filter: str, w: float, grids: dict[str, Any]) -> str:
  """A sweep set's protocol name; the variant's first class filter keeps the older names."""
  first = next(iter(grids))
  return f"{variant}_w{w:g}" if class_filter == first else f"{variant}_{class_filter}_w{w:g}"


def _row_key(r: dict[str, Any]) -> tuple[str, float]:
  return (r.get("class_filter", "all") if r["scale"] else "-", float(r["scale"]))


def _interval(diffs: list[float]) -> dict[str, Any]:
  v = np.asarray(diffs, np.float64)
  n, m = v.size, float(v.mean())
  half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
  return {"mean": m, "lo": m - half, "hi": m + half, "n": int(n),
          "wins": int(np.sum(v > 0)), "values": [float(x) for x in v]}


def _chosen_key(c: dict[str, Any], m: str, crit: str) -> tuple[str, float]:
  """(class filter, w) of variant m's row chosen by `crit` ("test_best": the test-best row)."""
  w = c["test_best"][m] if crit == "test_best" else c["selected"][m][crit]
  return _row_key({"scale": w,
                   "class_filter": c.get("selected_filter", {}).get(m, {}).get(crit, "all")})


def _label(c: dict[str, Any], m: str, crit: str) -> Any:
  """The chosen w, with its class filter when the variant swept several."""
  f, w = _chosen_key(c, m, crit)
  return f"{w:g} ({f})" if len(c.get("grids", {}).get(m, {})) > 1 and w else w


def aggregate(cohorts: list[dict[str, Any]]) -> dict[str, Any]:
  """Per regime: paired intervals, selection regret, the mean sweep and the mean scores; each
  comparison over the cohorts that ran both of its variants."""
  out: dict[str, Any] = {}
  for regime in REGIMES:
    cs = [c for c in cohorts if c["regime"] == regime]
    if not cs:
      continue
    has = lambda c, m: m in c["final"]  # noqa: E731
    names = list(dict.fromkeys(m for c in cs for m in c["final"]))
    paired = {}
    for a, b in COMPARISONS:
      both = [c for c in cs if has(c, a) and has(c, b)]
      if both:
        paired[f"{a}_vs_{b}"] = {
            f"{proto}_{k}": _interval([c["final"][a][proto][k] - c["final"][b][proto][k]
                                       for c in both])
            for proto in ("tsrtr_1.0", "tstr") for k in METRICS}
    means = {m: {f"{proto}_{k}": float(np.mean([c["final"][m][proto][k] for c in cs
                                                 if has(c, m)]))
                 for proto in ("tsrtr_1.0", "tstr") for k in METRICS} for m in names}
    selection = {}
    for m in dict.fromkeys(v for c in cs for v in c["sweep"]):
      ms = [c for c in cs if m in c["sweep"]]
      regret = {}
      test_auprc = [{_row_key(r): r["test"]["auprc"] for r in c["sweep"][m]} for c in ms]
      for crit in CRITERIA:
        r = [t[_chosen_key(c, m, "test_best")] - t[_chosen_key(c, m, crit)]
             for t, c in zip(test_auprc, ms)]
        regret[crit] = {"mean_regret_test_auprc": float(np.mean(r)),
                        "hits": int(sum(_chosen_key(c, m, crit) == _chosen_key(c, m, "test_best")
                                        for c in ms))}
      selection[m] = {
          "cohorts": len(ms), "selected": [_label(c, m, "auprc") for c in ms],
          "test_best": [_label(c, m, "test_best") for c in ms], "regret": regret,
          "mean_sweep": [{"scale": r0["scale"], "class_filter": _row_key(r0)[0],
                          **{f"eval_val_{k}": float(np.mean([c["sweep"][m][i][k] for c in ms]))
                             for k in CRITERIA},
                          **{f"test_{k}": float(np.mean([c["sweep"][m][i]["test"][k]
                                                         for c in ms])) for k in CRITERIA}}
                         for i, r0 in enumerate(ms[0]["sweep"][m])]}
    # Missingness parity, judged on evaluation-val: masked minus as-drawn, per method.
    mc = [c for c in cs if c.get("masks")]
    masks = {m: {f"{split}_{k}": _interval([c["masks"][f"{m}+masks"][split][k]
                                            - c["masks"][m][split][k] for c in mc
                                            if m in c["masks"]])
                 for split in ("eval_val", "test") for k in ("auprc", "auroc")}
             for m in dict.fromkeys(k for c in mc for k in c["masks"] if "+" not in k)}
    out[regime] = {"cohorts": len(cs), "seeds": [c["seed"] for c in cs],
                   "n_train": float(np.mean([c["n_train"] for c in cs])),
                   "n_pos_train": float(np.mean([c["n_pos_train"] for c in cs])),
                   "oracle_auprc": float(np.mean([c["oracle_auprc"] or np.nan for c in cs])),
                   "backends": sorted({c["backend"] for c in cs}),
                   "downstream": cs[0].get("downstream"), "model_seeds": cs[0].get("model_seeds"),
                   "seconds": float(sum(c["seconds"]["total"] for c in cs)),
                   "paired": paired, "means": means, "selection": selection,
                   "masks_minus_plain": masks}
  return out


def _fmt(s: dict[str, Any]) -> str:
  return f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}] ({s['wins']}/{s['n']})"


def markdown(agg: dict[str, Any], command: str, runs: dict[str, list[str]]) -> str:
  lines = ["# Utility on the simulator: does influence guidance help?", "",
           f"Command: `{command}`. Cohorts computed by:", "",
           *[f"- {run}: {', '.join(names)}" for run, names in runs.items()], "",
           "Paired differences per cohort (data seed), mean over cohorts with a 95% t-interval "
           "and the number of cohorts where the first method is ahead. Every number is a mean "
           "over the downstream model's seeds; each method's w is chosen on evaluation-val "
           "AUPRC, never on test.", ""]
  for regime, r in agg.items():
    lines += [f"## Regime `{regime}`: {r['cohorts']} cohorts, {r['n_train']:.0f} training "
              f"stays ({r['n_pos_train']:.1f} positive), oracle AUPRC {r['oracle_auprc']:.3f}, "
              f"backend {', '.join(r['backends'])}, {r['seconds'] / 60:.1f} min", "",
              f"Downstream {r['downstream']} x {r['model_seeds']} seeds; seeds (cohorts) "
              f"{sorted(r['seeds'])}.", "",
              "| comparison | " + " | ".join(f"{p} {k}" for p in ("TSRTR a=1", "TSTR")
                                             for k in METRICS) + " |",
              "|---|" + "---|" * 2 * len(METRICS)]
    for name, cells in r["paired"].items():
      lines.append(f"| {name} | " + " | ".join(_fmt(cells[f"{p}_{k}"])
                                              for p in ("tsrtr_1.0", "tstr") for k in METRICS)
                   + " |")
    lines += ["", "Mean scores:", "", "| method | " + " | ".join(
        f"{p} {k}" for p in ("TSRTR a=1", "TSTR") for k in METRICS) + " |",
              "|---|" + "---|" * 2 * len(METRICS)]
    for m, v in r["means"].items():
      lines.append(f"| {m} | " + " | ".join(f"{v[f'{p}_{k}']:.3f}" for p in ("tsrtr_1.0", "tstr")
                                            for k in METRICS) + " |")
    if r.get("masks_minus_plain"):
      lines += ["", "Missingness parity: synthetic samples with real training stays' masks "
                "minus as drawn (TSRTR a=1 models early-stopped on guidance-val; the choice is "
                "made on evaluation-val, test shown for the record):", "",
                "| method | eval-val AUPRC | eval-val AUROC | test AUPRC | test AUROC |",
                "|---|---|---|---|---|"]
      for m, cells in r["masks_minus_plain"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(cells[f"{sp}_{k}"]) for sp in
                                              ("eval_val", "test") for k in ("auprc", "auroc"))
                     + " |")
    for m, s in r["selection"].items():
      lines += ["", f"Scale selection, `{m}`: chosen w per cohort {s['selected']}, test-best w "
                f"{s['test_best']}.", "",
                "| criterion (evaluation-val) | picks the test-best w | mean test-AUPRC regret |",
                "|---|---|---|"]
      for crit, g in s["regret"].items():
        lines.append(f"| {crit} | {g['hits']}/{s['cohorts']} | "
                     f"{g['mean_regret_test_auprc']:.4f} |")
      lines += ["", "Mean sweep (TSRTR a=1 models early-stopped on guidance-val):", "",
                "| w | eval-val AUPRC | eval-val AUROC | eval-val log-loss | test AUPRC | "
                "test AUROC |", "|---|---|---|---|---|---|"]
      for row in s["mean_sweep"]:
        f = row.get("class_filter", "-")
        w = f"{row['scale']:g}" + ("" if f in ("all", "-") else f" (G over {f})")
        lines.append(f"| {w} | {row['eval_val_auprc']:.4f} | "
                     f"{row['eval_val_auroc']:.4f} | {row['eval_val_log_loss']:.4f} | "
                     f"{row['test_auprc']:.4f} | {row['test_auroc']:.4f} |")
    lines.append("")
  return "\n".join(lines)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Whether two runs' settings agree: the same config and the same settings for every regime
  both ran (one may have run other regimes too); the variants may differ per cohort."""
  ra, rb = a.get("regimes", {}), b.get("regimes", {})
  return a.get("config") == b.get("config") and all(ra[r] == rb[r] for r in set(ra) & set(rb))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", default="0,1,2,3,4", help="Data seeds (cohorts) per regime.")
  ap.add_argument("--regimes", default="default,scarce")
  ap.add_argument("--variants", default="tardiff,classifier",
                  help=f"Guided variants compared with unguided sampling and real data: "
                       f"{', '.join(VARIANTS)}.")
  ap.add_argument("--masks", action=argparse.BooleanOptionalAction, default=True,
                  help="Also score every set with real training stays' missingness imposed.")
  ap.add_argument("--merge", action="append", default=[],
                  help="Another run's results JSON (same regimes and config) whose cohorts are "
                       "added.")
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
  ap.add_argument("--root", default=os.path.join(ROOT, "runs", "utility"))
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  ap.add_argument("--budget_min", type=float, default=88.0,
                  help="Start no new cohort after this many minutes.")
  args = ap.parse_args()
  variants = tuple(v for v in args.variants.split(",") if v)
  regimes = [r for r in args.regimes.split(",") if r]
  bad = [r for r in regimes if r not in REGIMES] + [v for v in variants if v not in VARIANTS]
  if bad:
    raise SystemExit(f"Unknown regimes or variants {bad}; known: {list(REGIMES)}, "
                     f"{list(VARIANTS)}.")
  path = os.path.join(args.out, "utility_simulator.json")
  settings = {"regimes": {r: REGIMES[r] for r in regimes},
              "config": os.path.relpath(os.path.abspath(args.config), ROOT)}
  done: dict[str, Any] = {}
  for other in [path, *args.merge]:
    if not os.path.exists(other):
      continue
    prev = tio.read_json(other)
    if not _same(prev.get("settings", {}), settings):
      if other != path:
        raise SystemExit(f"{other} was run with other settings: {prev.get('settings')}.")
      continue
    settings["regimes"] = {**prev["settings"].get("regimes", {}), **settings["regimes"]}
    for c in prev["cohort_results"].values():
      c.setdefault("command", prev.get("command"))  # The run that computed the cohort.
    done = {**prev["cohort_results"], **done}
  command = "python benchmarks/utility.py " + " ".join(sys.argv[1:])
  t0 = time.perf_counter()
  for k in [int(s) for s in args.seeds.split(",") if s]:
    for regime in regimes:
      name = f"{regime}/{k}"
      if (name in done and set(variants) <= set(done[name]["sweep"])
          and (done[name].get("masks") or not args.masks)):
        continue  # Done with every requested variant (a missing one reruns the cohort, whose
        # stored models and sets are read back).
      if (time.perf_counter() - t0) / 60 > args.budget_min:
        print(f"[utility] budget of {args.budget_min} min spent; {name} not started", flush=True)
        continue
      print(f"[utility] cohort {name} ...", flush=True)
      want = tuple(dict.fromkeys([*done.get(name, {}).get("sweep", {}), *variants]))
      done[name] = c = run_cohort(args.config, regime, k, args.root, want, args.masks)
      c["command"] = command
      print(f"[utility] cohort {name}: {c['seconds']['total']:.0f}s, chosen w "
            f"{ {m: c['selected'][m]['auprc'] for m in want} }, TSRTR AUPRC "
            f"{ {m: round(v['tsrtr_1.0']['auprc'], 4) for m, v in c['final'].items()} }",
            flush=True)
      write(path, settings, command, done)
  write(path, settings, command, done)


def write(path: str, settings: dict, command: str, done: dict) -> None:
  """The results JSON (aggregate + every cohort's record, for resuming) and its Markdown."""
  if not done:
    return
  agg = aggregate(list(done.values()))
  tio.write_json(path, {"settings": settings, "command": command, "regimes": agg,
                        "cohort_results": done})
  runs: dict[str, list[str]] = {}
  for name, c in sorted(done.items()):
    runs.setdefault(f"`{c.get('command')}` ({c['backend']})", []).append(name)
  tio.write_text(os.path.splitext(path)[0] + ".md", markdown(agg, command, runs))


if __name__ == "__main__":
  main()
