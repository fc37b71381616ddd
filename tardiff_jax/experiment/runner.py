"""The command line's modes over an `Experiment`: each stage alone, or the whole pipeline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tardiff_jax.experiment.evaluate import evaluate
from tardiff_jax.experiment.methods import check_methods, get_method
from tardiff_jax.experiment.run import Experiment

MODES = ("pipeline", "data", "train_diffusion", "train_classifier", "cache_guidance", "generate",
         "evaluate")


def generate_methods(exp: Experiment, methods: Sequence[str] | None = None) -> dict[str, Any]:
  """Draws (or reads back) each method's synthetic set and writes synthetic/<method>.npz;
  returns the published views."""
  return {m: exp.export_synthetic(exp.synthetic(m))
          for m in check_methods(methods or exp.config.evaluation.methods)}


def run_pipeline(exp: Experiment) -> dict[str, Any]:
  """Every stage in order; each skips what the workdir already holds."""
  t0 = time.perf_counter()
  methods = exp.config.evaluation.methods
  _ = exp.data  # Each stage is a property computed (or read back) on first access.
  exp.log("stage train_diffusion")
  _ = exp.denoiser
  exp.log("stage train_classifier")
  _ = exp.guide
  _ = exp.guide_quality
  if any(get_method(m).guided for m in methods):
    exp.log("stage cache_guidance")
    _ = exp.guidance_cache
  selecting = [m for m in methods if exp.selects_scale(m)]
  if selecting:
    exp.log(f"stage select_scale ({', '.join(selecting)})")
    for m in selecting:
      _ = exp.selection_for(m)
  exp.log("stage generate")
  generate_methods(exp)
  exp.log("stage evaluate")
  rep = evaluate(exp)
  exp.log(f"pipeline finished in {time.perf_counter() - t0:.1f}s: "
          f"{exp.workdir.path('report.md')}")
  return rep


def run_mode(mode: str, config: Any, workdir: str, *, quiet: bool = False,
             retrain: bool = False, methods: Sequence[str] | None = None) -> Any:
  """Runs one mode of the `tardiff` command in `workdir` (holding its lock throughout)."""
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
  with Experiment(config, workdir, quiet=quiet, retrain=retrain) as exp:
    if mode == "pipeline":
      return run_pipeline(exp)
    if mode == "data":
      return exp.data
    if mode == "train_diffusion":
      return exp.denoiser
    if mode == "train_classifier":
      _ = exp.guide_quality
      return exp.guide
    if mode == "cache_guidance":
      return exp.guidance_cache
    if mode == "generate":
      return generate_methods(exp, methods)
    return evaluate(exp)
