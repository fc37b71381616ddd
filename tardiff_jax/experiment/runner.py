"""The command line's modes over an `Experiment`: each stage alone, or the whole pipeline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tardiff_jax.experiment.evaluate import evaluate
from tardiff_jax.experiment.methods import DiffusionMethod, check_methods, get_method
from tardiff_jax.experiment.run import Experiment
from tardiff_jax.experiment.selection import cache_filters
from tardiff_jax.experiment.store import settings_digest
from tardiff_jax.sampling.generate import class_counts
from tardiff_jax.sampling.stream import stream_generate

MODES = ("pipeline", "data", "train_diffusion", "train_classifier", "cache_guidance", "generate",
         "evaluate")


def generate_methods(exp: Experiment, methods: Sequence[str] | None = None) -> dict[str, Any]:
  """Draws (or reads back) each method's synthetic set and writes synthetic/<method>.npz;
  returns the published views."""
  return {m: exp.export_synthetic(exp.synthetic(m))
          for m in check_methods(methods or exp.config.evaluation.methods)}


def stream_method(exp: Experiment, method: str, num_samples: int,
                  chunk_size: int | None = None) -> dict[str, Any]:
  """Draws `num_samples` samples of a diffusion method (classes as `sampling.counts`) into
  <workdir>/synthetic/<method>_n<num_samples>/: chunk files in original units (x, y and the
  channel and class names; samples are class-sorted, so a chunk may hold one class: read them
  with `tardiff_jax.sampling.iter_chunks`) and manifest.json, with one chunk in host memory; a
  rerun resumes where a killed one stopped (`sampling.stream.stream_generate`). With N equal to
  the training count this is the run's synthetic/<method>.npz, sample for sample. Returns the
  manifest."""
  m = get_method(method)
  if not isinstance(m, DiffusionMethod):
    raise ValueError(f"--num_samples streams diffusion methods only; {method} is a baseline "
                     "that resamples the training set.")
  if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
  scale = exp.scale(method) if m.guided else None
  sampled = exp.sampled_method(method, scale)
  d = exp.data
  counts = class_counts(exp.train_counts(), mode=exp.config.sampling.counts, total=num_samples)
  out = exp.workdir.path("synthetic", f"{method}_n{int(num_samples)}")
  extra = {"method": np.asarray(method),
           "channel_names": np.asarray([str(c) for c in d.train.channel_names], np.str_),
           "class_names": np.asarray([str(c) for c in d.train.class_names], np.str_)}
  if scale is not None:
    extra["scale"] = np.asarray(scale, np.float32)
  if m.guided:
    extra["class_filter"] = np.asarray(exp.class_filter(method))
  settings = exp.synthetic_settings(method, scale)
  settings.pop("counts")
  meta = {"method": method, "scale": None if scale is None else np.asarray(scale).tolist(),
          "settings": settings_digest(settings)}
  exp.log(f"generate: streaming {int(num_samples)} samples of {method} to {out}")
  t0 = time.perf_counter()
  inputs = exp.draw_inputs(sampled, scale)
  manifest = stream_generate(exp.sampler(sampled), inputs["params"], inputs["gparams"],
                             exp.sampling_key, counts, (d.train.T, d.train.C),
                             exp.config.sampling.batch_size, out, chunk_size=chunk_size,
                             transform=d.normalizer.inverse, extra=extra, meta=meta,
                             progress=not exp.quiet, place_fn=inputs["place_fn"])
  exp.log(f"generate: {method}: {manifest['num_samples']} samples in "
          f"{len(manifest['chunks'])} chunks ({time.perf_counter() - t0:.1f}s this call)")
  return manifest


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
    for f in cache_filters(exp, methods):
      _ = exp.cache_for(f)
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
             retrain: bool = False, methods: Sequence[str] | None = None,
             num_samples: int | None = None, chunk_size: int | None = None) -> Any:
  """Runs one mode of the `tardiff` command in `workdir` (holding its lock throughout);
  "generate" with `num_samples` streams each method to disk (`stream_method`)."""
  if num_samples is not None and mode != "generate":
    raise ValueError("num_samples is an option of mode 'generate'.")
  if chunk_size is not None and num_samples is None:
    raise ValueError("chunk_size is an option of a streamed generation (num_samples).")
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
    if mode == "cache_guidance":  # G of every class filter a guided method may use.
      for f in cache_filters(exp, exp.config.evaluation.methods):
        _ = exp.cache_for(f)
      return exp.cache_for(exp.config.guidance.fixed_filter)[0]
    if mode == "generate" and num_samples is not None:
      return {m: stream_method(exp, m, num_samples, chunk_size)
              for m in check_methods(methods or exp.config.evaluation.methods)}
    if mode == "generate":
      return generate_methods(exp, methods)
    return evaluate(exp)
