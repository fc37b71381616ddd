"""The evaluation stage: TSTR / TSRTR / TRTR, fidelity, privacy, plots and the report.

The test split is read here and nowhere else. Each method's TSTR set and every TSRTR ratio train
as one vmapped group of fresh downstream models (x seeds); every setting's result, fidelity
score and privacy score is an artifact, so a killed evaluation resumes with the same numbers.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from tardiff_jax.evaluation import fidelity, plots, privacy, protocols, report
from tardiff_jax.evaluation.downstream import CURVE_GRID
from tardiff_jax.experiment import gate
from tardiff_jax.experiment.methods import METHODS, DiffusionMethod, get_method
from tardiff_jax.experiment.run import Experiment, SyntheticSet
from tardiff_jax.experiment.selection import cache_filters, sweep_name

LIBRARY_TIMESNET = (32, 64, 2, 6)  # Time-Series-Library: d_model, d_ff, e_layers, num_kernels.


def _fidelity_scores(exp: Experiment, syn: SyntheticSet) -> dict[str, Any]:
  """Discriminative and predictive scores and membership-inference AUROC of one set."""
  d, e = exp.data, exp.config.evaluation
  key = exp.store.key("fidelity", f"fidelity_{syn.method}",
                      {"synthetic": syn.identity, "train": d.fingerprint("train"),
                       "test": d.fingerprint("test"), "seed": exp.config.seed,
                       "repeats": e.fidelity_repeats, "steps": e.fidelity_steps})
  entry = exp.store.read_json(key)
  if entry is None:
    t0 = time.perf_counter()
    entry = {"discriminative": fidelity.discriminative_score(
                 d.train.x, syn.x, seed=exp.config.seed, repeats=e.fidelity_repeats,
                 steps=e.fidelity_steps),
             "predictive": fidelity.predictive_score(syn.x, d.test.x, seed=exp.config.seed,
                                                     steps=e.fidelity_steps // 2),
             "mir": float(privacy.membership_inference_auroc(d.train.x, d.test.x, syn.x))}
    exp.store.write_json(key, entry, seconds=time.perf_counter() - t0)
  return entry


def _real_predictive(exp: Experiment) -> dict[str, Any]:
  d, e = exp.data, exp.config.evaluation
  key = exp.store.key("fidelity", "fidelity_real",
                      {"train": d.fingerprint("train"), "test": d.fingerprint("test"),
                       "seed": exp.config.seed, "steps": e.fidelity_steps})
  entry = exp.store.read_json(key)
  if entry is None:
    entry = {"predictive": fidelity.predictive_score(d.train.x, d.test.x, seed=exp.config.seed,
                                                     steps=e.fidelity_steps // 2)}
    exp.store.write_json(key, entry)
  return entry


def channel_table(exp: Experiment, syn: dict[str, SyntheticSet]) -> dict[str, Any]:
  """Per class and channel: mean, SD and lag-1 autocorrelation in original units, of the
  held-out real test split (observed values) and of each method's samples."""
  d = exp.data
  raw = d.raw.test
  out: dict[str, Any] = {"reference": "real test split (held out from every fitted part)",
                         "channels": list(d.train.channel_names), "classes": {}}
  for k, cname in enumerate(d.train.class_names):
    sel = raw.y == k
    rows = {"real": fidelity.channel_stats(raw.x[sel], raw.mask[sel])}
    for m, s in syn.items():
      xs = d.normalizer.inverse(s.x[s.y == k])
      if len(xs):
        rows[m] = fidelity.channel_stats(xs)
    out["classes"][cname] = {
        src: {ch: {stat: float(v[i]) if np.isfinite(v[i]) else None for stat, v in st.items()}
              for i, ch in enumerate(d.train.channel_names)} for src, st in rows.items()}
  return out


def _notes(exp: Experiment) -> list[str]:
  cfg = exp.config
  e = cfg.evaluation
  notes = []
  dropped = [m for m in METHODS if m not in e.methods]
  if dropped:
    notes.append(f"Methods not run in this config: {', '.join(dropped)}.")
  if tuple(e.alphas) != (0.2, 0.4, 0.6, 0.8, 1.0):
    notes.append(f"TSRTR ratios trimmed to {list(e.alphas)} (paper: 0.2..1.0).")
  if e.num_seeds < 3:
    notes.append(f"{e.num_seeds} seeds per setting (fewer than 3: spreads are rough).")
  tn = cfg.classifier.timesnet
  sizes = (tn.d_model, tn.d_ff, tn.e_layers, tn.num_kernels)
  if e.downstream == "timesnet" and sizes != LIBRARY_TIMESNET:
    notes.append("Downstream TimesNet is smaller than the Time-Series-Library classifier "
                 f"(d_model, d_ff, e_layers, num_kernels = {sizes}, library "
                 f"{LIBRARY_TIMESNET}) to fit the CPU budget; `configs/default.py:paper` uses "
                 "the library sizes.")
  if e.fidelity_repeats < 5:
    notes.append(f"Discriminative score over {e.fidelity_repeats} repeats (TimeGAN's protocol: "
                 "5).")
  notes.append(f"Every protocol model runs epochs of {exp.epoch_size} minibatch positions "
               "(the largest TSRTR set); smaller sets (TSTR, low alpha) cycle through their "
               "rows within an epoch. Early stopping on validation AUPRC, patience "
               f"{cfg.train_classifier.patience}, at most {cfg.train_classifier.max_epochs} "
               "epochs.")
  if e.synthetic_masks:
    notes.append("Diffusion samples reach the downstream models with the missingness mask of a "
                 "random real training stay of their class, gaps filled as in real series "
                 "(evaluation.synthetic_masks).")
  if exp.data.num_classes > 2:
    t = exp.data.target_class
    notes.append(f"{exp.data.num_classes} classes: AUROC, AUPRC and F1 are one-vs-rest for the "
                 f"target class {t} ({exp.data.train.class_names[t]!r}, the rarest in train).")
  return notes


def _timing(exp: Experiment, syn: dict[str, SyntheticSet]) -> dict[str, float]:
  def stage_seconds(kind, name):
    secs = [e["seconds"] for e in exp.store.entries(kind).values()
            if e["name"] == name and e["seconds"] is not None]
    return float(secs[-1]) if secs else 0.0
  diffusion = [s for m, s in syn.items() if isinstance(get_method(m), DiffusionMethod)]
  gen_s = float(sum(s.seconds for s in diffusion))
  n = sum(len(s.y) for s in diffusion)
  return {"data_s": float(getattr(exp, "data_seconds", 0.0)),
          "train_diffusion_s": stage_seconds("timing", "train_diffusion"),
          "train_classifier_s": stage_seconds("timing", "train_classifier"),
          "cache_guidance_s": float(sum(exp.cache_for(f)[0].build_seconds
                                        for f in cache_filters(exp, syn))),
          "guide_gate_s": stage_seconds("guide_quality", "guide_quality"),
          "select_scale_s": sum(stage_seconds("selection", sweep_name(m)) for m in syn
                                if exp.selects_scale(m)),
          "generate_s": gen_s, "samples_per_s": n / max(gen_s, 1e-9) if n else 0.0}


def _plots(exp: Experiment, syn: dict[str, SyntheticSet], tsrtr, tstr, grad_norms,
           curves) -> dict[str, str]:
  d, wd, seed = exp.data, exp.workdir, exp.config.seed
  inv = d.normalizer.inverse
  out = {}
  first = next((m for m in ("tardiff", "unguided") if m in syn), next(iter(syn)))
  rel = os.path.join("plots", f"traces_{first}.png")
  plots.plot_traces(wd.path(rel), inv(d.train.x), d.train.y, inv(syn[first].x), syn[first].y,
                    d.train.channel_names, d.train.class_names, n=3, seed=seed)
  out[f"Real vs {first} traces"] = rel
  rel = os.path.join("plots", "pca.png")
  plots.plot_pca(wd.path(rel), d.train.x, {m: s.x for m, s in syn.items()}, seed=seed)
  out["PCA of real vs synthetic"] = rel
  rel = os.path.join("plots", "tsrtr.png")
  plots.plot_tsrtr(wd.path(rel), tsrtr, reference=tstr["real"])
  out["TSRTR over alpha"] = rel
  rel = os.path.join("plots", "roc_pr.png")
  a = protocols.alpha_key(max(exp.config.evaluation.alphas))
  plots.plot_curves(wd.path(rel), curves, CURVE_GRID,
                    title=f"Test ROC and PR curves, TSRTR alpha={a} (mean over seeds)")
  out[f"Test ROC and PR curves (TSRTR alpha={a})"] = rel
  for m in syn:
    if exp.selects_scale(m):
      sel = exp.selection_for(m)
      rel = os.path.join("plots", f"{sweep_name(m)}.png")
      plots.plot_scale_sweep(wd.path(rel), sel.rows, selected=sel.selected,
                             selected_filter=sel.class_filter)
      out[f"Guidance-scale sweep of {m} (evaluation-val)"] = rel
  if grad_norms:
    rel = os.path.join("plots", "grad_norms.png")
    plots.plot_grad_norms(wd.path(rel), grad_norms)
    out["Gradient norm by class"] = rel
  return out


def _strip(entry: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in entry.items() if k != "curves"}


def evaluate(exp: Experiment) -> dict[str, Any]:
  """Runs (or resumes) the evaluation of every method in `evaluation.methods`, writes
  synthetic/<method>.npz, report.json, report.md and plots/, and returns the report."""
  t_start = time.perf_counter()
  d, cfg = exp.data, exp.config
  methods = list(cfg.evaluation.methods)
  # The published sets (synthetic/<method>.npz, through original units) are what is scored.
  syn = {m: exp.export_synthetic(exp.synthetic(m)) for m in methods}
  for m, s in syn.items():
    present = np.unique(s.y)
    if present.size < 2 or d.target_class not in present:
      raise ValueError(f"Synthetic set {m} has the classes {present.tolist()}; TSTR needs the "
                       f"target class {d.target_class} and another "
                       f"(sampling.counts={cfg.sampling.counts!r}).")
  real = {"trtr": (d.train.x, d.train.y, d.fingerprint("train"))}
  tstr = {"real": exp.protocol_group(real, "val", "test", "trtr")["trtr"]}
  tsrtr: dict[str, dict[str, Any]] = {}
  alphas = cfg.evaluation.alphas
  amax = protocols.alpha_key(max(alphas))
  curves = {"real (TRTR)": tstr["real"]["curves"]}
  for m in methods:
    s = syn[m]
    seen = exp.downstream_set(s)
    fits = {f"tstr_{m}": (seen.x, seen.y, seen.identity)}
    n_syn = {}
    for a in alphas:
      x, y, ident, n_syn[a] = exp.mix(s, a)
      fits[f"tsrtr_{m}_{protocols.alpha_key(a)}"] = (x, y, ident)
    res = exp.protocol_group(fits, "val", "test", f"protocols_{m}")
    tstr[m] = res[f"tstr_{m}"]
    tsrtr[m] = {protocols.alpha_key(a): dict(res[f"tsrtr_{m}_{protocols.alpha_key(a)}"],
                                             n_synthetic=int(n_syn[a])) for a in alphas}
    curves[m] = tsrtr[m][amax]["curves"]
  fid, priv = {}, {}
  for m in methods:
    entry = _fidelity_scores(exp, syn[m])
    fid[m] = {"discriminative": entry["discriminative"], "predictive": entry["predictive"]}
    priv[m] = {"mir": entry["mir"]}
  fid["real"] = {"predictive": _real_predictive(exp)["predictive"]}
  names = d.train.class_names
  grad_norms = {names[int(k)] if int(k) < len(names) else k: v
                for k, v in exp.guide.grad_norms.items()}
  tstr = {m: _strip(e) for m, e in tstr.items()}
  tsrtr = {m: {a: _strip(e) for a, e in by_a.items()} for m, by_a in tsrtr.items()}
  plot_paths = _plots(exp, syn, tsrtr, tstr, grad_norms, curves)
  timing = _timing(exp, syn)
  timing["evaluate_s"] = time.perf_counter() - t_start
  extras: dict[str, Any] = {
      "oracle": {k: d.info[k] for k in ("oracle_auroc", "oracle_auprc") if k in d.info},
      "seeds": cfg.evaluation.num_seeds, "downstream": cfg.evaluation.downstream,
      "target_class": d.target_class,
      "scales": {m: syn[m].scale for m in methods if syn[m].scale is not None},
      "class_filters": {m: syn[m].class_filter for m in methods
                        if syn[m].class_filter is not None},
      "notes": _notes(exp)}
  sweeps = {m: exp.selection_for(m).to_dict() for m in methods if exp.selects_scale(m)}
  if sweeps:
    extras["scale_sweeps"] = sweeps  # Every guided method whose w was chosen on evaluation-val.
  if "tardiff" in sweeps:
    extras["scale_sweep"] = sweeps["tardiff"]
  keys = ("name", "n_train", "n_val", "n_test", "T", "C", "prevalence_train", "oracle_auroc",
          "oracle_auprc", "label", "n_guide_val", "n_eval_val")
  rep = report.build_report(
      dataset_info={k: d.info[k] for k in keys if k in d.info}, methods=["real", *methods],
      tstr=tstr, tsrtr=tsrtr, fidelity=fid, privacy=priv, grad_norms=grad_norms, timing=timing,
      extras=extras, fidelity_channels=channel_table(exp, syn),
      guide={**exp.guide_quality.to_dict(), "suggestions": gate.suggestions(cfg),
             "guided_methods": [m for m in methods if get_method(m).guided]})
  report.write_report(exp.workdir.root, rep, plots=plot_paths)
  exp.log(f"evaluate: wrote {exp.workdir.path('report.json')} and report.md")
  return rep
