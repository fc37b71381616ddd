"""Summary of the unguided-fidelity ablation: how the training data handling and the sampler
change the per-class, per-channel fidelity of unguided samples to real train.

  python benchmarks/fidelity_ablation.py    # reads benchmarks/results/fidelity_ablation/*.json

Each row is one `benchmarks/diffusion_fidelity.py` result (moved into
benchmarks/results/fidelity_ablation/<tag>.json). The models are the default config's U-Net
trained for 2,500 steps (unless stated) on the default simulator cohort (1,000 training stays, 77
of class 1):

  zero    python -m tardiff_jax.main --config=configs/default.py --workdir=runs/d2 \
            --config.train_diffusion.fill=zero --config.sampling.variance=ddim   (old default)
  interp  ... --workdir=runs/fill_interp --mode=train_diffusion --config.train_diffusion.fill=interp
  clean   ... --workdir=runs/miss0 --mode=train_diffusion --config.data.simulator.missing_rate=0.0
          (no missing values at all: the reference point for the data handling)
  d3      the default pipeline itself (python -m tardiff_jax.main --config=configs/default.py
          --workdir=runs/d3); its model equals interp's (same config and seed)
  +gn1 / +l2: --config.unet.norm_groups=1 / --config.diffusion.loss=l2
  d4      the default pipeline after x0 calibration became the default (--workdir=runs/d4);
          the same model as d3 and interp (same config and seed; only the sampler changed)
  s5000   interp trained for 5,000 steps (--workdir=runs/e_s5000 --mode=train_diffusion
          --config.train_diffusion.num_steps=5000)
  c48     interp with a wider U-Net (--workdir=runs/e_c48 --mode=train_diffusion
          --config.unet.base_channels=48)

and the fidelity command is
  python benchmarks/diffusion_fidelity.py --workdir=runs/<model> --tag <tag> --diagnose
      [--counts 1000,1000] [--variance analytic] [--num_steps N] [--sampler ddpm] [--eta 0]
      [--cfg_scale S] [--calibrate_x0 0|1] [--key_offset 1]

"between" and "within" are the synthetic/real ratios of the between-stay std (std of per-stay
means) and the within-stay std, averaged over the 7 channels (1.00 = right spread). "P c1": the
mean P(died) that a logistic regression fitted on real train gives class-1 samples (how strongly
they are conditioned; fresh simulator deaths, the oracle row, get 0.26).
Writes benchmarks/results/fidelity_ablation.{json,md}.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tardiff_jax import io as tio

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "results", "fidelity_ablation")

# tag -> (training, sampler). The sampler is DDIM-20, eta 1, cfg 1 unless stated.
ROWS = {
    "oracle": ("none: fresh simulator stays (a perfect generator)", "--oracle 1000"),
    "d2_c1k": ("zero (old default)", "DDIM-20"),
    "d2_c1k_eta0s50": ("zero (old default)", "DDIM-50, eta 0"),
    "d2_c1k_ddpm": ("zero (old default)", "DDPM-200"),
    "d2_c1k_ana": ("zero (old default)", "DDIM-20 + analytic variance"),
    "d2_cfg1.5": ("zero (old default)", "DDIM-20, cfg 1.5"),
    "d2_cfg2.5": ("zero (old default)", "DDIM-20, cfg 2.5"),
    "fi_c1k": ("interp", "DDIM-20"),
    "fi_c1k_s50": ("interp", "DDIM-50"),
    "fi_c1k_s100": ("interp", "DDIM-100"),
    "fi_c1k_ddpm": ("interp", "DDPM-200"),
    "fi_c1k_ana": ("interp", "DDIM-20 + analytic variance (session 3's default)"),
    "fi_c1k_ana_cfg15": ("interp", "DDIM-20 + analytic variance, cfg 1.5"),
    "d3_c1k": ("interp, pipeline run runs/d3", "DDIM-20 + analytic variance"),
    "d3_c1k_cfg15": ("interp, pipeline run runs/d3", "DDIM-20 + analytic variance, cfg 1.5"),
    "d3_c1k_cfg20": ("interp, pipeline run runs/d3", "DDIM-20 + analytic variance, cfg 2.0"),
    "d4_c1k": ("interp (default), pipeline run runs/d4",
               "DDIM-20 + analytic variance + x0 calibration (new default)"),
    "d4_c1k_k1": ("interp (default), pipeline run runs/d4",
                  "DDIM-20 + analytic variance + x0 calibration, another sampling key"),
    "d4_c1k_nocal": ("interp (default), pipeline run runs/d4",
                     "DDIM-20 + analytic variance (x0 calibration off)"),
    "d4_c1k_cal_ddimvar": ("interp (default), pipeline run runs/d4",
                           "DDIM-20 + x0 calibration (variance ddim)"),
    "s5000_c1k": ("interp, 5,000 steps", "DDIM-20 + analytic variance"),
    "s5000_c1k_cfg15": ("interp, 5,000 steps", "DDIM-20 + analytic variance, cfg 1.5"),
    "s5000_c1k_cal": ("interp, 5,000 steps", "DDIM-20 + analytic variance + x0 calibration"),
    "c48_c1k": ("interp, U-Net base_channels 48", "DDIM-20 + analytic variance"),
    "c48_c1k_cfg15": ("interp, U-Net base_channels 48", "DDIM-20 + analytic variance, cfg 1.5"),
    "l2_interp": ("interp + l2 loss", "DDIM-20"),
    "miss0": ("clean (no missing values)", "DDIM-20"),
    "m0_c1k": ("clean (no missing values)", "DDIM-20"),
    "miss0_eta0": ("clean (no missing values)", "DDIM-20, eta 0"),
    "miss0_eta0_s50": ("clean (no missing values)", "DDIM-50, eta 0"),
    "miss0_ddpm": ("clean (no missing values)", "DDPM-200"),
    "m0_c1k_ddpm": ("clean (no missing values)", "DDPM-200"),
    "m0_gn1": ("clean + 1 GroupNorm group", "DDIM-20"),
    "m0_l2": ("clean + l2 loss", "DDIM-20"),
}


def _ratios(res: dict, cls: str) -> tuple[float | None, float | None]:
  d = res.get("diagnostics", {}).get(cls)
  if d is None:
    return None, None
  r = {k: float(np.mean(np.asarray(d["syn"][k]) / np.asarray(d["real"][k])))
       for k in ("between", "within")}
  return r["between"], r["within"]


def main() -> dict:
  rows = []
  for tag, (training, sampler) in ROWS.items():
    path = os.path.join(DIR, f"{tag}.json")
    if not os.path.exists(path):
      continue
    res = json.load(open(path))
    counts = res.get("fresh_samples", {}).get("sampling", {}).get("counts", "match")
    row = {"tag": tag, "training": training, "sampler": sampler, "counts": counts,
           "cells": res["cells_within_tolerance"], "of": res["cells"]}
    for c, t in res["per_class"].items():
      row[f"pass_class{c}"] = int(sum(sum(v) for v in t["pass"].values()))
      row[f"between_class{c}"], row[f"within_class{c}"] = _ratios(res, c)
    row["p_died_class1"] = res.get("class_conditioning", {}).get("mean_p1_class1")
    rows.append(row)
  fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
  lines = ["# Unguided fidelity ablation: data handling x sampler (default U-Net, 2,500 steps "
           "unless stated)",
           "", "Cells within 15% of real train (7 channels x mean/std/acf1 x 2 classes = 42). "
           "between / within: synthetic/real ratio of the between-stay and within-stay std, "
           "mean over channels. counts: synthetic samples per class ('match' = the training "
           "counts, 923 / 77). P c1: mean P(died) of class-1 samples under a logistic "
           "regression fitted on real train (fresh simulator deaths: the oracle row). "
           "Regenerate: `python benchmarks/fidelity_ablation.py`.", "",
           "| training | sampler | counts | cells | class 0 | class 1 | between c0 | within c0 "
           "| between c1 | within c1 | P c1 | tag |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['training']} | {r['sampler']} | {r['counts']} | {r['cells']}/{r['of']} "
                 f"| {r.get('pass_class0')}/21 | {r.get('pass_class1')}/21 "
                 f"| {fmt(r.get('between_class0'))} | {fmt(r.get('within_class0'))} "
                 f"| {fmt(r.get('between_class1'))} | {fmt(r.get('within_class1'))} "
                 f"| {fmt(r.get('p_died_class1'))} | {r['tag']} |")
  out = os.path.join(HERE, "results", "fidelity_ablation")
  tio.write_json(out + ".json", {"rows": rows})
  tio.write_text(out + ".md", "\n".join(lines) + "\n")
  print("\n".join(lines))
  return {"rows": rows}


if __name__ == "__main__":
  main()
