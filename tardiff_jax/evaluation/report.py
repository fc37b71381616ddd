"""`report.json` (validated) and `report.md` (a two-minute read).

`build_report` assembles and validates the report dict; `write_report` writes both files
atomically. report.json holds the top-level keys `REQUIRED` (dataset, methods, tstr, tsrtr,
fidelity, privacy, grad_norms, timing), plus the `OPTIONAL` ones the caller passes (`extras`:
notes on trimmed protocol parts, scales, the scale sweep; `fidelity_channels`: per-class,
per-channel statistics; `guide`: the guide classifier's quality and the guidance-signal gate).
Nested entries may carry more than the required keys (spreads, per-seed values, seed counts);
every number anywhere in the report must be finite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tardiff_jax import io as tio

METRICS = ("auroc", "auprc", "minority_f1")
DATASET_KEYS = ("name", "n_train", "n_val", "n_test", "T", "C", "prevalence_train")
TIMING_KEYS = ("train_diffusion_s", "train_classifier_s", "cache_guidance_s", "generate_s",
               "samples_per_s")
REQUIRED = ("dataset", "methods", "tstr", "tsrtr", "fidelity", "privacy", "grad_norms", "timing")
OPTIONAL = ("extras", "fidelity_channels", "guide")
REAL = "real"  # The train-on-real (TRTR) row of `tstr`.


class ReportError(ValueError):
  """A required report key is missing or a number is not finite."""


# ---------------------------------------------------------------- summaries


def metric_mean_std(entry: Any, metric: str) -> tuple[float, float, int]:
  """(mean, std, n) of `metric` in a protocol entry.

  The spread comes from `entry["std"][metric]` (downstream.evaluate_fresh), `entry[metric +
  "_std"]`, or the per-seed list `entry["seeds"]` (sample std, ddof=1); n from `num_seeds` or
  the per-seed list (1 when neither is given). A bare number is (value, 0, 1).
  """
  if not isinstance(entry, Mapping):
    return float(entry), 0.0, 1
  seeds = entry.get("seeds") or []
  n = int(entry.get("num_seeds", len(seeds) or 1))
  if isinstance(entry.get("std"), Mapping) and metric in entry["std"]:
    return float(entry[metric]), float(entry["std"][metric]), n
  if f"{metric}_std" in entry:
    return float(entry[metric]), float(entry[f"{metric}_std"]), n
  if seeds:
    vals = np.array([float(s[metric]) for s in seeds], np.float64)
    std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return float(entry.get(metric, vals.mean())), std, n
  return float(entry[metric]), 0.0, n


def _score(value: Any, name: str) -> dict[str, Any]:
  """A fidelity/privacy score given as a number or a {"mean", "std", ...} dict, flattened."""
  if isinstance(value, Mapping):
    if "mean" not in value:
      raise ReportError(f"report: {name} is a dict without 'mean'.")
    out = {name: value["mean"], f"{name}_std": value.get("std", 0.0)}
    if "repeats" in value:
      out[f"{name}_repeats"] = value["repeats"]
    return out
  return {name: value}


# ---------------------------------------------------------------- validation


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_finite(obj: Any, path: str) -> None:
  """Raises ReportError naming the first non-finite number inside `obj`."""
  if isinstance(obj, Mapping):
    for k, v in obj.items():
      _check_finite(v, f"{path}.{k}")
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _check_finite(v, f"{path}[{i}]")
  elif isinstance(obj, np.ndarray):
    _check_finite(obj.tolist(), path)
  elif _is_number(obj) and not math.isfinite(float(obj)):
    raise ReportError(f"report: non-finite value at {path} = {obj}.")


def _need(d: Any, keys: Sequence[str], path: str) -> None:
  if not isinstance(d, Mapping):
    raise ReportError(f"report: {path} must be a dict; got {type(d).__name__}.")
  for k in keys:
    if k not in d:
      raise ReportError(f"report: missing key {path}.{k}.")
    if k != "name" and not _is_number(d[k]):
      raise ReportError(f"report: {path}.{k} must be a number; got {d[k]!r}.")


def validate_report(report: Mapping[str, Any]) -> None:
  """Checks the structure: every required key present, every number finite."""
  for k in REQUIRED:
    if k not in report:
      raise ReportError(f"report: missing top-level key {k!r}.")
  unknown = set(report) - set(REQUIRED) - set(OPTIONAL)
  if unknown:
    raise ReportError(f"report: unexpected top-level keys {sorted(unknown)}.")
  _need(report["dataset"], DATASET_KEYS, "dataset")
  methods = report["methods"]
  if (not isinstance(methods, (list, tuple)) or not methods
      or not all(isinstance(m, str) for m in methods) or len(set(methods)) != len(methods)):
    raise ReportError(f"report: methods must be a non-empty list of distinct names; got "
                      f"{methods!r}.")
  synthetic = [m for m in methods if m != REAL]
  for m in methods:
    if m not in report["tstr"]:
      raise ReportError(f"report: missing key tstr.{m}.")
    _need(report["tstr"][m], METRICS, f"tstr.{m}")
    if not isinstance(report["tstr"][m].get("seeds"), list):
      raise ReportError(f"report: missing key tstr.{m}.seeds (a list of per-seed dicts).")
  for m in synthetic:
    if m not in report["tsrtr"] or not report["tsrtr"][m]:
      raise ReportError(f"report: missing key tsrtr.{m}.")
    for a, entry in report["tsrtr"][m].items():
      _need(entry, METRICS, f"tsrtr.{m}.{a}")
    if m not in report["fidelity"]:
      raise ReportError(f"report: missing key fidelity.{m}.")
    _need(report["fidelity"][m], ("discriminative", "predictive"), f"fidelity.{m}")
    if m not in report["privacy"]:
      raise ReportError(f"report: missing key privacy.{m}.")
    _need(report["privacy"][m], ("mir",), f"privacy.{m}")
  if not isinstance(report["grad_norms"], Mapping):
    raise ReportError("report: grad_norms must be a dict {class: {mean, std}}.")
  for c, entry in report["grad_norms"].items():
    _need(entry, ("mean", "std"), f"grad_norms.{c}")
  _need(report["timing"], TIMING_KEYS, "timing")
  for k in report:
    _check_finite(report[k], k)


def _alpha_key(a: Any) -> str:
  try:
    return str(float(a))
  except (TypeError, ValueError) as e:
    raise ReportError(f"report: TSRTR alpha key {a!r} is not a number.") from e


def build_report(dataset_info: Mapping[str, Any], methods: Sequence[str],
                 tstr: Mapping[str, Mapping], tsrtr: Mapping[str, Mapping],
                 fidelity: Mapping[str, Mapping], privacy: Mapping[str, Any],
                 grad_norms: Mapping[Any, Mapping], timing: Mapping[str, float],
                 extras: Mapping[str, Any] | None = None,
                 fidelity_channels: Mapping[str, Any] | None = None,
                 guide: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Assembles and validates report.json's dict.

  Args:
    dataset_info: {"name", "n_train", "n_val", "n_test", "T", "C", "prevalence_train", ...
      optional "oracle_auroc", "oracle_auprc"}.
    methods: e.g. ["real", "unguided", "tardiff", ...]; "real" is the TRTR reference.
    tstr: {method: {"auroc", "auprc", "minority_f1", "seeds": [...], optional "std"/"num_seeds"}}
      for every method (e.g. `downstream.evaluate_fresh` outputs).
    tsrtr: {method: {alpha: entry like tstr's}} for every synthetic method; alpha keys are
      normalised to "0.2", ..., "1.0".
    fidelity: {method: {"discriminative", "predictive", ...}}; the two scores may be numbers or
      the dicts of `fidelity.discriminative_score` / `predictive_score` (flattened here into
      value, `<name>_std`, `<name>_repeats`). Optional "real": {"predictive": train-on-real MAE}.
    privacy: {method: {"mir": AUROC}} or {method: AUROC}.
    grad_norms: {class: {"mean", "std", ...}}; class keys become strings.
    timing: the stage timings `TIMING_KEYS` (seconds) and samples_per_s, plus any others.
    extras: optional JSON-able dict (e.g. {"notes": ["..."]}), stored under "extras".
    fidelity_channels: optional {"reference", "channels", "classes": {class: {source:
      {channel: {"mean", "std", "acf1"}}}}} (`source` "real" or a method), in original units.
    guide: optional guide-classifier quality {"metrics": {"auroc", "auprc", "loss": {"value",
      "lo", "hi"}}, "n", "positives", "signal", "guided_methods", ...}; without a signal the
      guided methods are marked and not compared in the verdict.
  Returns:
    the report dict. Raises ReportError (a ValueError) naming any missing or non-finite key.
  """
  fid = {}
  for m, entry in fidelity.items():
    if not isinstance(entry, Mapping):
      raise ReportError(f"report: fidelity.{m} must be a dict.")
    flat = {k: v for k, v in entry.items() if k not in ("discriminative", "predictive")}
    for k in ("discriminative", "predictive"):
      if k in entry:
        flat.update(_score(entry[k], k))
    fid[str(m)] = flat
  priv = {}
  for m, entry in privacy.items():
    if isinstance(entry, Mapping) and "mir" in entry:
      priv[str(m)] = {**{k: v for k, v in entry.items() if k != "mir"},
                      **_score(entry["mir"], "mir")}
    else:
      priv[str(m)] = _score(entry, "mir")
  report = {
      "dataset": dict(dataset_info),
      "methods": [str(m) for m in methods],
      "tstr": {str(m): dict(e) for m, e in tstr.items()},
      "tsrtr": {str(m): {_alpha_key(a): dict(e) for a, e in by_a.items()}
                for m, by_a in tsrtr.items()},
      "fidelity": fid,
      "privacy": priv,
      "grad_norms": {str(c): dict(e) for c, e in grad_norms.items()},
      "timing": dict(timing),
  }
  if extras:
    report["extras"] = dict(extras)
  if fidelity_channels:
    report["fidelity_channels"] = dict(fidelity_channels)
  if guide:
    report["guide"] = dict(guide)
  validate_report(report)
  return report


# ---------------------------------------------------------------- markdown


def _pm(mean: float, std: float, digits: int = 3) -> str:
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _compare(a: Mapping, b: Mapping, metric: str) -> tuple[str, float, float, float]:
  """('wins'|'ties'|'loses', mean_a, mean_b, diff): a tie when |diff| <= 2 standard errors."""
  ma, sa, na = metric_mean_std(a, metric)
  mb, sb, nb = metric_mean_std(b, metric)
  diff = ma - mb
  se = math.sqrt(sa * sa / max(na, 1) + sb * sb / max(nb, 1))
  if abs(diff) <= max(2.0 * se, 1e-3):
    return "ties", ma, mb, diff
  return ("wins" if diff > 0 else "loses"), ma, mb, diff


def verdict(report: Mapping[str, Any], method: str = "tardiff",
            baseline: str = "unguided") -> str:
  """One plain-language line comparing `method` with `baseline` from the numbers.

  TSTR AUPRC and AUROC (tie = difference within 2 standard errors over seeds) and TSRTR AUPRC
  at the largest alpha; also TarDiff's TSTR AUPRC as a fraction of train-on-real.
  """
  label = "TarDiff" if method == "tardiff" else method
  tstr = report["tstr"]
  guide = report.get("guide") or {}
  if guide.get("signal") is False and method in guide.get("guided_methods", [method]):
    a = guide["metrics"]["auroc"]
    perm = guide.get("permuted_auroc") or []
    beat = (f"; guides trained on permuted labels reach {max(perm):.3f}" if perm else "")
    return (f"{label} vs {baseline}: not compared: no guidance signal. The guide classifier "
            f"does not beat chance and label-free guides on guidance-val (AUROC "
            f"{a['value']:.3f}, 95% interval [{a['lo']:.3f}, {a['hi']:.3f}]{beat}), so the "
            "guided rows follow a guide that learned nothing usable. See 'Guide classifier' "
            "below for what to try.")
  if method not in tstr or baseline not in tstr:
    missing = [m for m in (method, baseline) if m not in tstr]
    return f"{label} vs {baseline}: not available ({', '.join(missing)} not run)."
  parts = []
  for metric in ("auprc", "auroc"):
    word, ma, mb, d = _compare(tstr[method], tstr[baseline], metric)
    n = metric_mean_std(tstr[method], metric)[2]
    parts.append(f"{word} on TSTR {metric.upper()} ({ma:.3f} vs {mb:.3f}, {d:+.3f}, {n} seeds)")
  tsrtr = report.get("tsrtr", {})
  if method in tsrtr and baseline in tsrtr:
    common = sorted(set(tsrtr[method]) & set(tsrtr[baseline]), key=float)
    if common:
      a = common[-1]
      word, ma, mb, d = _compare(tsrtr[method][a], tsrtr[baseline][a], "auprc")
      parts.append(f"{word} on TSRTR AUPRC at alpha={a} ({ma:.3f} vs {mb:.3f})")
  line = f"{label} vs {baseline}: {label} " + "; ".join(parts) + "."
  if REAL in tstr:
    real = metric_mean_std(tstr[REAL], "auprc")[0]
    ours = metric_mean_std(tstr[method], "auprc")[0]
    if real > 0:
      line += f" Its TSTR AUPRC is {100 * ours / real:.0f}% of train-on-real ({real:.3f})."
  return line


def _method_label(m: str, report: Mapping[str, Any] | None = None) -> str:
  if m == REAL:
    return "real (train on real, TRTR)"
  guide = (report or {}).get("guide") or {}
  if guide.get("signal") is False and m in guide.get("guided_methods", []):
    return f"{m} (no guidance signal)"
  return m


def render_markdown(report: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
  """report.md: dataset, verdict, TSTR/TSRTR/fidelity/privacy/grad-norm/timing tables, plots."""
  ds = report["dataset"]
  methods = report["methods"]
  lines = [f"# TarDiff report: {ds['name']}", ""]
  lines.append(
      f"**Data.** {ds['n_train']} train / {ds['n_val']} validation / {ds['n_test']} test stays, "
      f"{ds['T']} time steps x {ds['C']} channels; positive-class prevalence in train "
      f"{100 * float(ds['prevalence_train']):.1f}%.")
  if "oracle_auroc" in ds or "oracle_auprc" in ds:
    lines.append(f"Simulator oracle (ceiling for any classifier): AUROC "
                 f"{float(ds.get('oracle_auroc', float('nan'))):.3f}, AUPRC "
                 f"{float(ds.get('oracle_auprc', float('nan'))):.3f}.")
  lines += ["", f"**Verdict.** {verdict(report)}", ""]

  lines += ["## TSTR: train on synthetic only, test on real",
            "Fresh downstream classifier per seed; mean ± std over seeds. AUPRC is average "
            "precision (step-wise). Minority F1 uses the threshold that maximises F1 on "
            "validation. Higher is better.", "",
            "| method | AUROC | AUPRC | minority F1 | seeds |", "|---|---|---|---|---|"]
  for m in methods:
    e = report["tstr"][m]
    cells = [_pm(*metric_mean_std(e, k)[:2]) for k in METRICS]
    lines.append(f"| {_method_label(m, report)} | " + " | ".join(cells)
                 + f" | {metric_mean_std(e, 'auroc')[2]} |")

  syn = [m for m in methods if m != REAL and m in report["tsrtr"]]
  if syn:
    alphas = sorted({a for m in syn for a in report["tsrtr"][m]}, key=float)
    lines += ["", "## TSRTR: real train + alpha x |real train| synthetic, test on real", ""]
    if REAL in report["tstr"]:
      r = report["tstr"][REAL]
      lines.append("Reference, real only (alpha = 0): AUROC "
                   f"{_pm(*metric_mean_std(r, 'auroc')[:2])}, AUPRC "
                   f"{_pm(*metric_mean_std(r, 'auprc')[:2])}.")
    for k in METRICS:
      name = "minority F1" if k == "minority_f1" else k.upper()
      lines += ["", f"**{name}** (mean ± std over seeds)", "",
                "| method | " + " | ".join(f"alpha={a}" for a in alphas) + " |",
                "|---|" + "---|" * len(alphas)]
      for m in syn:
        by_a = report["tsrtr"][m]
        cells = [_pm(*metric_mean_std(by_a[a], k)[:2]) if a in by_a else "-" for a in alphas]
        lines.append(f"| {_method_label(m, report)} | " + " | ".join(cells) + " |")

  lines += ["", "## Fidelity and privacy",
            "Discriminative score: |accuracy - 0.5| of a GRU telling real from synthetic "
            "(0 = indistinguishable). Predictive score: test MAE of a GRU trained on the data "
            "to predict the last channel one step ahead, in units of the real test range (lower is "
            "better; compare with the train-on-real row). Membership-inference "
            "AUROC: nearest-synthetic-neighbour attack, real train vs real test (0.5 = no "
            "leakage).", "",
            "| method | discriminative | predictive MAE | membership-inference AUROC |",
            "|---|---|---|---|"]
  fid, priv = report["fidelity"], report["privacy"]

  def cell(d: Mapping | None, k: str) -> str:
    if not d or k not in d:
      return "-"
    s = d.get(f"{k}_std")
    n = d.get(f"{k}_repeats")
    txt = f"{float(d[k]):.3f}" if s is None else _pm(float(d[k]), float(s))
    return txt + (f" ({n} runs)" if n is not None else "")

  for m in methods:
    if m == REAL and m not in fid and m not in priv:
      continue
    lines.append(f"| {_method_label(m, report)} | {cell(fid.get(m), 'discriminative')} | "
                 f"{cell(fid.get(m), 'predictive')} | {cell(priv.get(m), 'mir')} |")

  lines += _channel_tables(report.get("fidelity_channels"))

  lines += _guide_section(report.get("guide"), ds)

  lines += ["", "## Guidance gradient norms by class", "",
            "| class | mean | std | count |", "|---|---|---|---|"]
  for c, e in report["grad_norms"].items():
    lines.append(f"| {c} | {float(e['mean']):.4g} | {float(e['std']):.4g} | "
                 f"{e.get('count', '-')} |")

  t = report["timing"]
  lines += ["", "## Timing", "", "| stage | seconds |", "|---|---|"]
  for k, v in t.items():
    if k != "samples_per_s" and _is_number(v):
      lines.append(f"| {k.removesuffix('_s')} | {float(v):.1f} |")
  lines.append(f"\nSampling throughput: {float(t['samples_per_s']):.1f} samples/s.")

  if plots:
    lines += ["", "## Plots", ""]
    for name, rel in plots.items():
      lines.append(f"- [{name}]({rel})")
      lines.append(f"  ![{name}]({rel})")

  extras = report.get("extras") or {}
  notes = extras.get("notes")
  if notes:
    lines += ["", "## Notes (protocol trims and settings)", ""]
    for note in ([notes] if isinstance(notes, str) else notes):
      lines.append(f"- {note}")
  return "\n".join(lines) + "\n"


def _guide_section(guide: Mapping[str, Any] | None, ds: Mapping[str, Any]) -> list[str]:
  """The guide classifier's guidance-val quality and the gate's verdict."""
  if not guide:
    return []
  m = guide["metrics"]
  iv = lambda k, d=3: (f"{m[k]['value']:.{d}f} [{m[k]['lo']:.{d}f}, "  # noqa: E731
                       f"{m[k]['hi']:.{d}f}]")
  lines = ["", "## Guide classifier",
           f"The classifier that guidance differentiates, on guidance-val ({guide['n']} cases, "
           f"{guide['positives']} of the target class; {int(100 * guide['level'])}% bootstrap "
           f"intervals over {guide['resamples']} resamples): AUROC {iv('auroc')}, AUPRC "
           f"{iv('auprc')} (prevalence in train {100 * float(ds['prevalence_train']):.1f}%), "
           f"mean loss {iv('loss', 4)}."]
  if "oracle_auroc" in ds:
    lines[-1] += f" Simulator oracle AUROC {float(ds['oracle_auroc']):.3f}."
  perm = guide.get("permuted_auroc") or []
  if perm:
    lines[-1] += (f" Guides trained the same way on {len(perm)} permutations of the training "
                  f"labels: AUROC {min(perm):.3f} to {max(perm):.3f}.")
  norms = ", ".join(f"{c}: {v['mean']:.3g} ± {v['std']:.3g}" for c, v in
                    guide.get("grad_norms", {}).items())
  if norms:
    lines[-1] += f" Per-class gradient norms (mean ± SD): {norms}."
  if guide.get("signal"):
    lines += ["", f"Guidance signal: yes ({guide['rule']})."]
  else:
    tries = "; ".join(f"`{s.split(' (')[0]}`" for s in guide.get("suggestions", []))
    lines += ["", f"**No guidance signal**: it does not hold that {guide['rule']}. The guided "
              f"methods ({', '.join(guide.get('guided_methods', []))}) follow a guide that "
              f"learned nothing usable from the labels. To try: {tries}."]
  return lines


def _channel_tables(table: Mapping[str, Any] | None) -> list[str]:
  """Per class: one row per channel, 'mean ± SD (lag-1 acf)' of real and each method."""
  if not table:
    return []
  lines = ["", "## Per-class, per-channel statistics (original units)",
           f"Each cell: mean ± SD (lag-1 autocorrelation) over observed values; real = "
           f"{table.get('reference', 'real data')}."]
  for cname, by_src in table["classes"].items():
    srcs = list(by_src)
    lines += ["", f"**{cname}**", "", "| channel | " + " | ".join(srcs) + " |",
              "|---|" + "---|" * len(srcs)]
    for ch in table["channels"]:
      cells = []
      for src in srcs:
        st = by_src[src].get(ch)
        fmt = lambda v, f: "nan" if v is None else format(v, f)  # noqa: E731
        cells.append("-" if st is None else f"{fmt(st['mean'], '.4g')} ± "
                     f"{fmt(st['std'], '.3g')} ({fmt(st['acf1'], '.2f')})")
      lines.append(f"| {ch} | " + " | ".join(cells) + " |")
  return lines


def write_report(workdir: str | os.PathLike, report: Mapping[str, Any],
                 plots: Mapping[str, str] | None = None) -> tuple[str, str]:
  """Validates and writes `workdir/report.json` and `workdir/report.md` atomically.

  plots: {name: path relative to workdir}, linked from the markdown.
  Returns (json_path, md_path).
  """
  validate_report(report)
  for name, rel in (plots or {}).items():
    if os.path.isabs(rel):
      raise ValueError(f"write_report: plot {name!r} path must be relative to workdir; "
                       f"got {rel!r}.")
  workdir = os.fspath(workdir)
  md = render_markdown(report, plots)
  json_path = os.path.join(workdir, "report.json")
  md_path = os.path.join(workdir, "report.md")
  tio.write_json(json_path, report)
  tio.write_text(md_path, md)
  return json_path, md_path
