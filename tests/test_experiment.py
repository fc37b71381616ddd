"""End to end: the tiny config through every stage into a temp workdir (CI-sized), and what a
workdir promises: reruns skip and reproduce, incompatible checkpoints stop the run, one run at a
time, damaged artifacts are named, a kill during evaluation loses nothing."""

import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version

import jax
import numpy as np
import pytest

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.data import load_dataset
from tardiff_jax.experiment import (
    CorruptArtifactError,
    Experiment,
    IncompatibleWorkdirError,
    WorkdirLockedError,
    load_run,
    run_mode,
)
from tardiff_jax.experiment.selection import choose_row
from tardiff_jax.sampling import load_stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL_TIME = {"timing", "seconds", "train_time_s", "time_s", "notes"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("tiny_run"))
  cfg = load_config("tiny")
  rep = run_mode("pipeline", cfg, wd, quiet=True)
  return wd, cfg, rep


def _differences(ref, new, path="", out=None):
  """Paths where `new` differs from `ref` (every key of ref; wall times aside)."""
  out = [] if out is None else out
  if isinstance(ref, dict):
    for k, v in ref.items():
      if k in WALL_TIME:
        continue
      if not isinstance(new, dict) or k not in new:
        out.append(f"{path}.{k} missing")
      else:
        _differences(v, new[k], f"{path}.{k}", out)
  elif isinstance(ref, list):
    if not isinstance(new, list) or len(ref) != len(new):
      out.append(f"{path}: {ref!r} vs {new!r}")
    else:
      for i, (a, b) in enumerate(zip(ref, new)):
        _differences(a, b, f"{path}[{i}]", out)
  elif ref != new and not (isinstance(ref, float) and math.isnan(ref) and math.isnan(new)):
    out.append(f"{path}: {ref!r} vs {new!r}")
  return out


def _strip(rep):
  return {k: v for k, v in rep.items() if k != "timing"}


def test_pipeline_writes_report_plots_and_synthetic(tiny_run):
  wd, cfg, rep = tiny_run
  with open(os.path.join(wd, "report.json")) as f:
    on_disk = json.load(f)
  for key in ("dataset", "methods", "tstr", "tsrtr", "fidelity", "privacy", "grad_norms",
              "timing", "fidelity_channels"):
    assert key in on_disk
  methods = list(cfg.evaluation.methods)
  assert on_disk["methods"] == ["real", *methods]
  for m in methods:
    assert set(on_disk["tsrtr"][m]) == {f"{a:.1f}" for a in cfg.evaluation.alphas}
    assert len(on_disk["tstr"][m]["seeds"]) == cfg.evaluation.num_seeds
  for k in ("train_diffusion_s", "train_classifier_s", "cache_guidance_s", "generate_s",
            "samples_per_s"):
    assert on_disk["timing"][k] > 0
  md = open(os.path.join(wd, "report.md")).read()
  assert "Per-class, per-channel statistics" in md and "| HR |" in md
  for m in methods:
    assert m in md
  plots = os.listdir(os.path.join(wd, "plots"))
  assert {"pca.png", "tsrtr.png", "grad_norms.png", "scale_sweep.png", "roc_pr.png"} <= set(plots)
  for p in plots:
    assert os.path.getsize(os.path.join(wd, "plots", p)) > 1000
  # Synthetic sets: original units (the simulator's heart rate is tens of bpm), class counts of
  # the training split, channel and class names; readable with the data loader.
  chan = on_disk["fidelity_channels"]
  assert chan["channels"][0] == "HR" and set(chan["classes"]) == {"survived", "died"}
  train_counts = None
  for m in methods:
    ds = load_dataset(os.path.join(wd, "synthetic", f"{m}.npz"))
    counts = ds.class_counts()
    train_counts = counts if train_counts is None else train_counts
    np.testing.assert_array_equal(counts, train_counts)
    assert 20 < float(np.median(ds.x[..., 0])) < 200, m
    assert ds.channel_names[0] == "HR" and ds.class_names == ("survived", "died")
  # Every guided method's w comes from the same evaluation-val sweep over the same grid.
  sweeps = on_disk["extras"]["scale_sweeps"]
  assert set(sweeps) == {"tardiff", "classifier", "batch"}
  assert on_disk["extras"]["scale_sweep"] == sweeps["tardiff"]
  grid = list(cfg.guidance.scale_grid)
  for m, sweep in sweeps.items():
    # TarDiff's sweep also chooses whose guidance-val rows G averages (class_filter "auto"):
    # the grid with G over all rows, then its nonzero w with G over the minority class.
    want = [("all", w) for w in grid] + ([("minority", w) for w in grid if w]
                                         if m == "tardiff" else [])
    assert [(r["class_filter"], r["scale"]) for r in sweep["rows"]] == want, m
    assert sweep["selected_scale"] == on_disk["extras"]["scales"][m]
    best = choose_row(sweep["rows"])
    assert (best["class_filter"], best["scale"]) == (
        sweep["selected_class_filter"], sweep["selected_scale"])
    assert on_disk["extras"]["class_filters"][m] == sweep["selected_class_filter"]
    assert f"scale_sweep{'' if m == 'tardiff' else '_' + m}.png" in plots
  assert "## Guidance scales" in md and "evaluation-val sweep" in md
  # Every artifact is in the manifest with its checksum.
  manifest = tio.read_json(os.path.join(wd, "manifest.json"))["artifacts"]
  kinds = {e["kind"] for e in manifest.values()}
  assert {"sampler_fit", "guidance_cache", "selection", "synthetic", "protocol",
          "fidelity"} <= kinds
  for rel, e in manifest.items():
    assert tio.file_sha256(os.path.join(wd, rel)) == e["sha256"], rel


def test_report_matches_the_stored_reference(tiny_run):
  """Every number of report.json equals the stored reference for the same config
  (tests/data/tiny_report_reference.json, its "about" says which change last rewrote it and
  why): results change only on purpose (`python tests/data/write_tiny_reference.py "why"`).
  Trained models are reproducible bit for bit only on one software stack and CPU family, so
  another stack skips with the reason."""
  ref = tio.read_json(os.path.join(ROOT, "tests", "data", "tiny_report_reference.json"))
  env = ref["environment"]
  here = {p: version(p) for p in env["packages"]}
  flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
  if here != env["packages"] or platform.machine() != env["machine"] or (
      ("avx512f" in flags) != env["avx512f"]):
    pytest.skip(f"reference numbers were written with {env}; this machine has {here}")
  wd, _, rep = tiny_run
  diffs = _differences(ref["report"], json.load(open(os.path.join(wd, "report.json"))))
  assert not diffs, diffs[:10]


def test_rerun_skips_completed_stages_and_reproduces_report(tiny_run):
  wd, cfg, rep = tiny_run
  manifest = os.path.join(wd, "manifest.json")
  before = tio.read_json(manifest)["artifacts"]
  mtimes = {p: os.path.getmtime(os.path.join(wd, p)) for p in before}
  rep2 = run_mode("pipeline", cfg, wd, quiet=True)
  after = tio.read_json(manifest)["artifacts"]
  assert after == before  # Nothing recomputed, nothing new.
  assert {p: os.path.getmtime(os.path.join(wd, p)) for p in after} == mtimes
  assert json.dumps(_strip(rep), sort_keys=True) == json.dumps(_strip(rep2), sort_keys=True)


def test_class_filter_is_chosen_with_w_and_never_sees_test(tiny_run, tmp_path):
  """TarDiff's sweep over (class filter of G, w), recomputed from scratch (its guided sets, its
  models, its choice) with the test split taken away, equals the run's; the chosen set is drawn
  with the chosen filter's G, and the two filters' G differ."""
  wd, cfg, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  report = tio.read_json(os.path.join(copy, "report.json"))
  stored = report["extras"]["scale_sweeps"]["tardiff"]
  for rel, e in tio.read_json(os.path.join(copy, "manifest.json"))["artifacts"].items():
    if e["kind"] in ("selection", "protocol") or (e["kind"], e["name"]) == ("synthetic",
                                                                            "tardiff"):
      os.remove(os.path.join(copy, rel))
  with Experiment(cfg, copy, quiet=True) as exp:
    exp.__dict__["data"] = dataclasses.replace(exp.data, test=None)  # Any use of test fails.
    sel = exp.selection
    assert exp.filter_candidates("tardiff") == ("all", "minority")
    assert exp.filter_candidates("classifier") == ("all",)
    assert exp.class_filter("tardiff") == sel.class_filter
    syn = exp.synthetic("tardiff")
    assert (syn.scale, syn.class_filter) == (sel.selected, sel.class_filter)
    g_all, g_min = exp.cache_for("all")[0], exp.cache_for("minority")[0]
    assert g_min.count < g_all.count and g_min.classes == (exp.data.target_class,)
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           exp.gparams("tardiff", 10.0, "minority")["G"], g_min.G)
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        np.array_equal, g_min.G, g_all.G)))
  got = sel.to_dict()
  assert {k: v for k, v in got.items() if k != "seconds"} == {
      k: v for k, v in stored.items() if k != "seconds"}
  published = load_dataset(os.path.join(wd, "synthetic", "tardiff.npz"))
  if stored["selected_scale"]:
    np.testing.assert_allclose(published.x, exp.data.normalizer.inverse(syn.x), rtol=1e-5,
                               atol=1e-4)


def test_sampler_fit_is_reused_and_follows_settings(tiny_run, tmp_path):
  wd, cfg, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  fits = lambda: {p: e for p, e in tio.read_json(os.path.join(copy, "manifest.json"))
                  ["artifacts"].items() if e["kind"] == "sampler_fit"}
  before = fits()
  assert len(before) == 1
  typed = experiment_config(cfg)
  with Experiment(typed, copy, quiet=True) as exp:
    fit = exp.sampler_fit  # The run's own settings: read back.
    assert fits() == before and fit.gamma is not None and fit.calibration is not None
    s = len(fit.gamma)
    assert fit.gamma.shape[:2] == (s, 2) and fit.calibration.slope.shape == fit.gamma.shape
  # Another cfg scale is another predictor: a new fit next to the old one.
  other = dataclasses.replace(typed, sampling=dataclasses.replace(typed.sampling, cfg_scale=2.0))
  with Experiment(other, copy, quiet=True) as exp:
    fit2 = exp.sampler_fit
  assert len(fits()) == 2 and not np.array_equal(fit2.calibration.slope, fit.calibration.slope)
  # Without calibration and analytic variance there is nothing to fit.
  plain = dataclasses.replace(typed, sampling=dataclasses.replace(
      typed.sampling, variance="ddim", calibrate_x0=False))
  with Experiment(plain, copy, quiet=True) as exp:
    assert exp.sampler_fit == (None, None)
  assert len(fits()) == 2


def test_incompatible_workdir_stops_naming_the_setting_or_retrains(tiny_run, tmp_path):
  wd, cfg, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  wider = load_config("tiny")
  wider.unet.base_channels = 16
  with Experiment(wider, copy, quiet=True) as exp, pytest.raises(
      IncompatibleWorkdirError, match=r"unet.base_channels \(checkpoint 8, config 16\)"):
    _ = exp.denoiser
  other_data = load_config("tiny")
  other_data.data.simulator.missing_rate = 0.2
  with Experiment(other_data, copy, quiet=True) as exp, pytest.raises(
      IncompatibleWorkdirError, match=r"data.simulator.missing_rate .*--retrain"):
    _ = exp.denoiser
  other_guide = load_config("tiny")
  other_guide.classifier.gru.hidden = 6
  with Experiment(other_guide, copy, quiet=True) as exp, pytest.raises(
      IncompatibleWorkdirError, match="classifier_config.gru_hidden"):
    _ = exp.guide
  # With retrain the stale guide is discarded and a guide of the new width trained.
  guide = run_mode("train_classifier", other_guide, copy, quiet=True, retrain=True)
  assert guide.params["gru_0"]["w_hh"].shape[-2] == 6
  with Experiment(other_guide, copy, quiet=True) as exp:
    assert exp.guide.identity == guide.identity  # Reloaded, not retrained.


def test_one_run_per_workdir(tiny_run):
  wd, cfg, _ = tiny_run
  with Experiment(cfg, wd, quiet=True):
    with pytest.raises(WorkdirLockedError, match=f"{re.escape(wd)} is in use .*pid {os.getpid()}"):
      Experiment(cfg, wd, quiet=True)
  Experiment(cfg, wd, quiet=True).close()  # Released on close.


def test_damaged_artifact_is_named_and_recomputed_once_deleted(tiny_run, tmp_path):
  wd, cfg, rep = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  manifest = tio.read_json(os.path.join(copy, "manifest.json"))["artifacts"]
  victim = next(p for p, e in manifest.items() if e["name"] == "trtr")
  path = os.path.join(copy, victim)
  with open(path, "r+") as f:
    f.seek(10)
    f.write("7")
  with pytest.raises(CorruptArtifactError, match=re.escape(path)):
    run_mode("evaluate", cfg, copy, quiet=True)
  os.remove(path)
  rep2 = run_mode("evaluate", cfg, copy, quiet=True)
  assert not _differences(_strip(rep), rep2)


def test_kill_during_evaluation_then_rerun_gives_the_same_report(tiny_run, tmp_path):
  """`kill -9` while the evaluation stage trains its protocol models, then a rerun: the report
  equals the uninterrupted run's."""
  wd, cfg, rep = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  mpath = os.path.join(copy, "manifest.json")
  manifest = tio.read_json(mpath)
  for rel in [p for p, e in manifest["artifacts"].items() if e["kind"] in ("protocol",
                                                                           "fidelity")]:
    os.remove(os.path.join(copy, rel))
    del manifest["artifacts"][rel]
  tio.write_json(mpath, manifest)
  for name in ("report.json", "report.md"):
    os.remove(os.path.join(copy, name))
  cmd = [sys.executable, "-m", "tardiff_jax.main", f"--config={ROOT}/configs/tiny.py",
         f"--workdir={copy}", "--mode=evaluate"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TARDIFF_QUIET="1"))
  deadline = time.time() + 240
  done = lambda: sum(e["kind"] == "protocol"
                     for e in tio.read_json(mpath)["artifacts"].values())
  while done() == 0 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert 0 < done() < sum(e["kind"] == "protocol"
                          for e in tio.read_json(os.path.join(wd, "manifest.json"))
                          ["artifacts"].values())
  assert not os.path.exists(os.path.join(copy, "report.json"))
  rep2 = run_mode("evaluate", cfg, copy, quiet=True)
  assert not _differences(_strip(rep), rep2)


def test_load_run_and_the_readme_snippet(tiny_run):
  """The README's Python API block runs as written against a finished workdir."""
  wd, cfg, _ = tiny_run
  readme = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
  assert "runs/simulator" in block
  ns = {}
  exec(compile(block.replace("runs/simulator", wd), "README.md", "exec"), ns)  # noqa: S102
  run = load_run(wd)
  assert run.readonly and run.denoiser.step == cfg.train_diffusion.num_steps
  assert ns["x"].shape[1:] == (24, 7) and np.isfinite(ns["x"]).all()
  with pytest.raises(FileNotFoundError, match="not a tardiff workdir"):
    load_run(os.path.join(wd, "plots"))
  # Read-only: a piece the workdir lacks is refused before any work is spent on it.
  other = experiment_config(cfg)
  other = dataclasses.replace(other, sampling=dataclasses.replace(other.sampling, cfg_scale=3.0))
  ro = Experiment(other, wd, readonly=True)
  t0 = time.perf_counter()
  with pytest.raises(PermissionError, match="read-only"):
    _ = ro.sampler_fit
  assert time.perf_counter() - t0 < 30


def test_synthetic_masks_give_diffusion_sets_real_missingness(tiny_run):
  """`evaluation.synthetic_masks`: downstream models see diffusion samples with the gaps of real
  training stays of their class (filled like real ones); baselines and the default are as
  drawn."""
  wd, cfg, _ = tiny_run
  run = load_run(wd)
  syn = run.synthetic("unguided")
  assert run.downstream_set(syn) is syn  # Off by default.
  seen = run.downstream_set(syn, masks=True)
  assert seen.identity != syn.identity and seen.view.endswith("+masks")
  gaps = seen.x == 0.0
  real_rate = 1.0 - run.data.train.mask.mean()
  assert abs(gaps.mean() - real_rate) < 0.05 and not (syn.x == 0.0).any()
  np.testing.assert_array_equal(seen.x[~gaps], syn.x[~gaps])
  base = run.synthetic("oversample")
  assert run.downstream_set(base, masks=True) is base
  # The stored sweeps were scored on unmasked samples: with masks on, w is chosen anew (here a
  # read-only run must refuse to compute it rather than reuse the unmasked choice).
  masked = experiment_config(cfg)
  masked = dataclasses.replace(masked, evaluation=dataclasses.replace(masked.evaluation,
                                                                        synthetic_masks=True))
  assert Experiment(experiment_config(cfg), wd, readonly=True).selection_for("tardiff")
  with pytest.raises(PermissionError, match="read-only"):
    Experiment(masked, wd, readonly=True).selection_for("tardiff")


def test_streamed_generation_equals_the_stored_set(tiny_run, tmp_path):
  """--mode=generate --num_samples=N with N = the training count: the chunks (original units)
  are the run's synthetic/<method>.npz sample for sample; baselines and other modes refuse."""
  wd, cfg, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  stored = load_dataset(os.path.join(copy, "synthetic", "tardiff.npz"))
  batch = experiment_config(cfg).sampling.batch_size
  man = run_mode("generate", cfg, copy, quiet=True, methods=["tardiff"],
                 num_samples=len(stored.y), chunk_size=batch)["tardiff"]
  out = os.path.join(copy, "synthetic", f"tardiff_n{len(stored.y)}")
  assert len(man["chunks"]) == math.ceil(len(stored.y) / batch) > 1
  assert man["meta"]["method"] == "tardiff"
  x, y = load_stream(out)
  np.testing.assert_array_equal(y, stored.y)
  np.testing.assert_allclose(x, stored.x, rtol=1e-6, atol=1e-6)
  with np.load(os.path.join(out, "chunk_000000.npz")) as first:
    assert tuple(first["channel_names"]) == tuple(stored.channel_names)
  with pytest.raises(ValueError, match="baseline"):
    run_mode("generate", cfg, copy, quiet=True, methods=["oversample"], num_samples=10)
  with pytest.raises(ValueError, match="mode 'generate'"):
    run_mode("evaluate", cfg, copy, quiet=True, num_samples=10)
  with pytest.raises(ValueError, match="chunk_size"):
    run_mode("generate", cfg, copy, quiet=True, chunk_size=64)


def test_cli_help_modes_and_errors(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run(["tardiff", *a], capture_output=True, text=True, env=env,
                                  cwd=ROOT, timeout=300)
  out = run("--help")  # absl prints the main program's flags (and exits 1, its convention).
  for flag in ("--config", "--workdir", "--mode", "--retrain", "--methods", "--print_config",
               "--distributed", "--coordinator_address", "--num_processes", "--process_id"):
    assert flag in out.stdout + out.stderr, flag
  bad = run(f"--config={ROOT}/configs/tiny.py", f"--workdir={tmp_path}", "--num_processes=2")
  assert bad.returncode != 0 and "need --distributed" in bad.stderr
  out = run(f"--config={ROOT}/configs/tiny.py", "--print_config")
  assert out.returncode == 0 and "guidance.scale = None  # tardiff's w" in out.stdout
  assert len(out.stdout.splitlines()) > 60
  data = [f"--config={ROOT}/configs/tiny.py", f"--workdir={tmp_path}", "--mode=data",
          "--config.data.simulator.num_stays=300"]
  out = run(*data)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / "data" / "summary.json"))
  assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 300
  assert json.load(open(tmp_path / "config.json"))["data"]["simulator"]["num_stays"] == 300
  bad = run(*data[:2], "--mode=nonsense")
  assert bad.returncode != 0 and "nonsense" in bad.stderr
  bad = run(*data[:3], "--config.data.simulator.num_stais=3")
  assert bad.returncode != 0 and "num_stais" in bad.stderr and "Traceback" not in bad.stderr


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
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5


def test_univariate_odd_length_three_class_file_runs_end_to_end(tmp_path):
  """Every input the data contract accepts runs the whole pipeline: here one channel, an odd
  number of steps, three classes and missing values, from a user's file (split 80/10/10)."""
  rng = np.random.default_rng(0)
  n, t = 240, 15
  y = rng.choice(3, size=n, p=[0.55, 0.3, 0.15])
  level = np.array([0.0, 1.0, -1.5])[y]
  x = 60.0 + 5.0 * (level[:, None] + np.cumsum(rng.normal(0, 0.3, (n, t)), axis=1))
  x[rng.random(x.shape) < 0.1] = np.nan
  path = tmp_path / "univariate.npz"
  np.savez(path, x=x[..., None].astype(np.float32), y=y)
  cfg = load_config("tiny")
  cfg.data.source, cfg.data.path = "file", str(path)
  cfg.train_diffusion.num_steps = 10
  cfg.sampling.num_steps = 3
  cfg.evaluation.num_seeds = 1
  cfg.evaluation.alphas = (1.0,)
  cfg.evaluation.fidelity_steps = 10
  wd = str(tmp_path / "run")
  rep = run_mode("pipeline", cfg, wd, quiet=True)
  ds = rep["dataset"]
  assert (ds["T"], ds["C"]) == (15, 1) and (ds["n_train"], ds["n_val"], ds["n_test"]) == (
      192, 24, 24)
  assert rep["extras"]["target_class"] == 2  # The rarest class; metrics are one-vs-rest.
  for m in rep["methods"][1:]:
    syn = load_dataset(os.path.join(wd, "synthetic", f"{m}.npz"))
    assert syn.x.shape[1:] == (15, 1) and syn.num_classes == 3
    assert np.isfinite(rep["fidelity"][m]["predictive"])  # The channel predicts itself.
  for m in rep["methods"]:
    assert 0.0 <= rep["tstr"][m]["auroc"] <= 1.0
