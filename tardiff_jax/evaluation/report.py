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


def is_number(v: Any) -> bool:
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
  elif is_number(obj) and not math.isfinite(float(obj)):
    raise ReportError(f"report: non-finite value at {path} = {obj}.")


def _need(d: Any, keys: Sequence[str], path: str) -> None:
  if not isinstance(d, Mapping):
    raise ReportError(f"report: {path} must be a dict; got {type(d).__name__}.")
  for k in keys:
    if k not in d:
      raise ReportError(f"report: missing key {path}.{k}.")
    if k != "name" and not is_number(d[k]):
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
  from tardiff_jax.evaluation.report_markdown import render_markdown  # noqa: PLC0415 (cycle)
  md = render_markdown(report, plots)
  json_path = os.path.join(workdir, "report.json")
  md_path = os.path.join(workdir, "report.md")
  tio.write_json(json_path, report)
  tio.write_text(md_path, md)
  return json_path, md_path

