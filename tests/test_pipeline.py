"""End to end: the tiny config through every stage into a temp workdir (CI-sized)."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tardiff_jax import pipeline
from tardiff_jax.config_file import load_config
from tardiff_jax.sampling import SamplerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("tiny_run"))
  cfg = load_config("tiny")
  rep = pipeline.run_mode("pipeline", cfg, wd, quiet=True)
  return wd, cfg, rep


def _finite(obj):
  if isinstance(obj, dict):
    return all(_finite(v) for v in obj.values())
  if isinstance(obj, list):
    return all(_finite(v) for v in obj)
  if isinstance(obj, float):
    return math.isfinite(obj)
  return True


def test_pipeline_writes_report_plots_and_synthetic(tiny_run):
  wd, cfg, rep = tiny_run
  with open(os.path.join(wd, "report.json")) as f:
    on_disk = json.load(f)
  for key in ("dataset", "methods", "tstr", "tsrtr", "fidelity", "privacy", "grad_norms",
              "timing"):
    assert key in on_disk
  assert _finite(on_disk)
  methods = list(cfg.evaluation.methods)
  assert on_disk["methods"] == ["real", *methods]
  for m in methods:
    assert set(on_disk["tsrtr"][m]) == {f"{a:.1f}" for a in cfg.evaluation.alphas}
    assert len(on_disk["tstr"][m]["seeds"]) == cfg.evaluation.num_seeds
  for k in ("train_diffusion_s", "train_classifier_s", "cache_guidance_s", "generate_s",
            "samples_per_s"):
    assert on_disk["timing"][k] > 0
  md = open(os.path.join(wd, "report.md")).read()
  for m in methods:
    assert m in md
  plots = os.listdir(os.path.join(wd, "plots"))
  assert {"pca.png", "tsrtr.png", "grad_norms.png", "scale_sweep.png"} <= set(plots)
  for p in plots:
    assert os.path.getsize(os.path.join(wd, "plots", p)) > 1000
  # Synthetic sets: original units (the simulator's heart rate is tens of bpm), class counts
  # matching the training split.
  train_counts = None
  for m in methods:
    with np.load(os.path.join(wd, "synthetic", f"{m}.npz"), allow_pickle=False) as z:
      x, y = z["x"], z["y"]
    counts = np.bincount(y, minlength=2)
    train_counts = counts if train_counts is None else train_counts
    np.testing.assert_array_equal(counts, train_counts)
    assert 20 < float(np.median(x[..., 0])) < 200, m
  # The sampler's statistics of the trained denoiser (default: calibrated x0, analytic variance).
  stats = json.load(open(os.path.join(wd, "checkpoints", "denoiser_stats.json")))
  assert stats["settings"]["calibrate_x0"] and stats["settings"]["gamma"]
  slope, gamma = np.asarray(stats["slope"]), np.asarray(stats["gamma"])
  assert slope.shape == gamma.shape == np.asarray(stats["intercept"]).shape
  assert slope.shape[:2] == (len(stats["settings"]["timesteps"]), 2) and np.all(np.isfinite(slope))
  sweep = json.load(open(os.path.join(wd, "guidance", "scale_sweep.json")))
  assert [r["scale"] for r in sweep["rows"]] == list(cfg.guidance.scale_grid)
  assert sweep["selected_scale"] in list(cfg.guidance.scale_grid)


def test_rerun_skips_completed_stages_and_reproduces_report(tiny_run):
  wd, cfg, rep = tiny_run
  eval_dir = os.path.join(wd, "eval")
  before = {f: os.path.getmtime(os.path.join(eval_dir, f)) for f in os.listdir(eval_dir)}
  syn_before = os.path.getmtime(os.path.join(wd, "synthetic", "tardiff.npz"))
  rep2 = pipeline.run_mode("pipeline", cfg, wd, quiet=True)
  after = {f: os.path.getmtime(os.path.join(eval_dir, f)) for f in os.listdir(eval_dir)}
  assert before == after  # Nothing re-evaluated.
  assert os.path.getmtime(os.path.join(wd, "synthetic", "tardiff.npz")) == syn_before
  strip = lambda r: {k: v for k, v in r.items() if k not in ("timing",)}
  assert json.dumps(strip(rep), sort_keys=True) == json.dumps(strip(rep2), sort_keys=True)


def test_denoiser_stats_cache_reuses_and_follows_settings(tiny_run, tmp_path):
  wd, cfg, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  stats_path = os.path.join(copy, "checkpoints", "denoiser_stats.json")
  run = pipeline.Run(cfg, copy, quiet=True)
  scfg = SamplerConfig.from_config(cfg.sampling)
  before = os.path.getmtime(stats_path)
  gamma, cal = pipeline.denoiser_stats(run, scfg)  # the pipeline's own settings: a cache hit
  assert os.path.getmtime(stats_path) == before
  on_disk = json.load(open(stats_path))
  np.testing.assert_array_equal(gamma, np.asarray(on_disk["gamma"], np.float32))
  np.testing.assert_array_equal(cal.slope, np.asarray(on_disk["slope"], np.float32))
  # Another cfg scale is another predictor: recomputed, and recorded as such.
  g2, cal2 = pipeline.denoiser_stats(run, dataclasses.replace(scfg, cfg_scale=2.0))
  assert json.load(open(stats_path))["settings"]["cfg_scale"] == 2.0
  assert g2.shape == gamma.shape and not np.array_equal(cal2.slope, cal.slope)
  # Without calibration and analytic variance there is nothing to estimate.
  plain = dataclasses.replace(scfg, variance="ddim", calibrate_x0=False)
  assert pipeline.denoiser_stats(run, plain) == (None, None)


def test_cli_data_mode_and_bad_mode(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "tardiff_jax.main", f"--config={ROOT}/configs/tiny.py",
         f"--workdir={tmp_path}", "--mode=data", "--config.data.num_stays=300"]
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / "data" / "summary.json"))
  assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 300
  assert json.load(open(tmp_path / "config.json"))["data"]["num_stays"] == 300
  bad = subprocess.run(cmd[:-2] + ["--mode=nonsense"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
  assert bad.returncode != 0 and "nonsense" in bad.stderr


def test_quickstart_notebook_executes(tiny_run):
  """CI executes notebooks/quickstart.ipynb (in the tiny run's workdir, so stages are reused)."""
  import nbclient
  import nbformat

  wd, _, _ = tiny_run
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  os.environ["TARDIFF_WORKDIR"] = wd
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}
                            ).execute()
  finally:
    os.environ.pop("TARDIFF_WORKDIR", None)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
