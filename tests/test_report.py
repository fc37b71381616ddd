"""Tests for report.json assembly/validation and report.md rendering."""

from __future__ import annotations

import copy
import json
import math

import pytest

from tardiff_jax.evaluation import report as rp
from tardiff_jax.evaluation import report_markdown as rmd

METHODS = ["real", "unguided", "tardiff", "oversample"]


def _entry(auroc, auprc, f1, spread=0.01, n=3):
  seeds = [{"seed": s, "auroc": auroc + spread * (s - 1), "auprc": auprc + spread * (s - 1),
            "minority_f1": f1} for s in range(n)]
  return {"auroc": auroc, "auprc": auprc, "minority_f1": f1, "seeds": seeds, "num_seeds": n}


def _inputs():
  tstr = {"real": _entry(0.80, 0.40, 0.45), "unguided": _entry(0.70, 0.30, 0.35),
          "tardiff": _entry(0.76, 0.38, 0.40), "oversample": _entry(0.72, 0.31, 0.33)}
  tsrtr = {m: {a: _entry(0.78 + 0.01 * a, 0.39, 0.44) for a in (0.2, 0.4, 1.0)}
           for m in METHODS[1:]}
  fidelity = {m: {"discriminative": {"mean": 0.1, "std": 0.02, "repeats": 5, "per_repeat": [0.1]},
                  "predictive": 0.12} for m in METHODS[1:]}
  fidelity["real"] = {"predictive": {"mean": 0.11, "std": 0.0, "repeats": 3}}
  privacy = {m: 0.52 for m in METHODS[1:]}
  dataset = {"name": "simulator", "n_train": 3200, "n_val": 400, "n_test": 400, "T": 24, "C": 7,
             "prevalence_train": 0.08, "oracle_auroc": 0.9, "oracle_auprc": 0.6}
  grad = {0: {"mean": 1.0, "std": 0.1, "count": 3000}, 1: {"mean": 3.0, "std": 0.5, "count": 200}}
  timing = {"train_diffusion_s": 100.0, "train_classifier_s": 20.0, "cache_guidance_s": 1.0,
            "generate_s": 30.0, "samples_per_s": 120.0}
  return dict(dataset_info=dataset, methods=METHODS, tstr=tstr, tsrtr=tsrtr, fidelity=fidelity,
              privacy=privacy, grad_norms=grad, timing=timing)


def test_build_report_keys_and_values():
  r = rp.build_report(**_inputs(), extras={"notes": ["TSRTR uses 3 alphas only."]})
  assert set(r) == set(rp.REQUIRED) | {"extras"}
  assert set(rp.build_report(**_inputs())) == set(rp.REQUIRED)  # exactly SPECS 3 without extras
  assert set(r["tsrtr"]["tardiff"]) == {"0.2", "0.4", "1.0"}
  assert r["privacy"]["tardiff"] == {"mir": 0.52}
  assert r["fidelity"]["tardiff"]["discriminative"] == 0.1
  assert r["fidelity"]["tardiff"]["discriminative_std"] == 0.02
  assert set(r["grad_norms"]) == {"0", "1"}
  for m in METHODS:
    for k in rp.METRICS:
      assert math.isfinite(r["tstr"][m][k])
  json.dumps(r)  # JSON-able


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["timing"].pop("generate_s"), "timing.generate_s"),
    (lambda d: d["dataset_info"].pop("prevalence_train"), "dataset.prevalence_train"),
    (lambda d: d["tstr"].pop("tardiff"), "tstr.tardiff"),
    (lambda d: d["tstr"]["unguided"].pop("seeds"), "tstr.unguided.seeds"),
    (lambda d: d["tsrtr"]["tardiff"][0.4].pop("auprc"), "tsrtr.tardiff.0.4.auprc"),
    (lambda d: d["privacy"].pop("oversample"), "privacy.oversample"),
    (lambda d: d["fidelity"]["tardiff"].pop("predictive"), "fidelity.tardiff.predictive"),
    (lambda d: d["grad_norms"][1].pop("std"), "grad_norms.1.std"),
])
def test_missing_key_raises(mutate, needle):
  d = copy.deepcopy(_inputs())
  mutate(d)
  with pytest.raises(rp.ReportError, match=needle.replace(".", r"\.")):
    rp.build_report(**d)


def test_non_finite_raises():
  d = _inputs()
  d["tstr"]["tardiff"]["seeds"][1]["auprc"] = float("nan")
  with pytest.raises(rp.ReportError, match=r"tstr\.tardiff\.seeds\[1\]\.auprc"):
    rp.build_report(**d)
  d = _inputs()
  d["timing"]["samples_per_s"] = float("inf")
  with pytest.raises(ValueError, match="timing.samples_per_s"):
    rp.build_report(**d)


def test_verdict_from_numbers():
  r = rp.build_report(**_inputs())
  v = rmd.verdict(r)
  assert v.startswith("TarDiff vs unguided: TarDiff wins on TSTR AUPRC (0.380 vs 0.300")
  assert "95% of train-on-real" in v
  d = _inputs()
  d["tstr"]["tardiff"] = _entry(0.701, 0.301, 0.35)
  assert "ties on TSTR AUPRC" in rmd.verdict(rp.build_report(**d))
  d["tstr"]["tardiff"] = _entry(0.60, 0.20, 0.35)
  assert "loses on TSTR AUPRC" in rmd.verdict(rp.build_report(**d))
  d["methods"] = ["real", "unguided", "oversample"]
  d["tstr"].pop("tardiff")
  assert "not available" in rmd.verdict(rp.build_report(**d))


def test_write_report(tmp_path):
  r = rp.build_report(**_inputs(), extras={"notes": ["Trimmed: 2 seeds for TSRTR."]})
  jp, mp = rp.write_report(tmp_path, r, {"tsrtr": "plots/tsrtr.png"})
  with open(jp) as f:
    assert json.load(f) == json.loads(json.dumps(r))
  md = open(mp).read()
  for m in METHODS:
    assert f"| {m}" in md
  assert "real (train on real, TRTR)" in md
  assert "0.380 ± 0.010" in md  # tardiff TSTR AUPRC with its seed spread
  assert "alpha=1.0" in md and "plots/tsrtr.png" in md and "Trimmed: 2 seeds" in md
  assert "TarDiff vs unguided:" in md
  bad = dict(r)
  bad["surprise"] = 1
  with pytest.raises(rp.ReportError, match="unexpected"):
    rp.write_report(tmp_path, bad, {})
