"""The stages of a TarDiff run and the `pipeline` that chains them (SPECS 3).

Each stage reads what earlier stages left in `workdir` and skips work that is already complete:
training resumes from its last orbax checkpoint, the guidance cache, synthetic sets and every
protocol result are files written atomically and reused when their recorded settings match.
A killed pipeline therefore restarts where it stopped and, with the same seeds, ends with the
same report (timings aside).

Workdir layout:
  config.json                      the config of the last invocation
  data/summary.json, normalizer.json
  checkpoints/diffusion/, checkpoints/classifier/   orbax
  checkpoints/denoiser_stats.json  the denoiser's gamma (sampling.variance="analytic") and x0
                                   calibration (sampling.calibrate_x0), fitted on train
  guidance/cache.npz, grad_norms.json, scale_sweep.json
  synthetic/<method>.npz (+ .json)  x in original units, y
  eval/*.json                      one file per protocol setting (resumable evaluation)
  stages/<stage>.json              wall time of each completed stage
  metrics.jsonl, report.json, report.md, plots/*.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.data import DataConfig, PreparedData, prepare_data
from tardiff_jax.diffusion import DiffusionConfig
from tardiff_jax.evaluation import baselines, fidelity, plots, privacy, protocols, report
from tardiff_jax.evaluation.downstream import evaluate_fresh_group
from tardiff_jax.evaluation.grad_norms import grad_norm_stats
from tardiff_jax.influence import (
  GuidanceConfig,
  build_guidance_cache,
  guidance_from_config,
  influence,
  load_cache,
  make_gparams,
  save_cache,
)
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.sampling import (
    SamplerConfig,
    X0Calibration,
    class_counts,
    estimate_calibration,
    estimate_gamma,
    generate,
    make_sampler,
    sampling_plan,
)
from tardiff_jax.training.classifier_trainer import TrainClassifierConfig, train_classifier
from tardiff_jax.training.diffusion_trainer import (
    denoiser_inputs,
    load_diffusion,
    train_diffusion,
)

STAGES = ("data", "train_diffusion", "train_classifier", "cache_guidance", "select_scale",
          "generate", "evaluate")
DIFFUSION_METHODS = ("unguided", "tardiff", "classifier", "batch")
BASELINE_METHODS = ("oversample", "augment")
ALL_METHODS = DIFFUSION_METHODS + BASELINE_METHODS
SPECS_TIMESNET = (32, 64, 2, 6)  # SPECS 5: d_model, d_ff, e_layers, num_kernels.


def log(msg: str) -> None:
  print(f"[tardiff] {msg}", file=sys.stderr, flush=True)


def _method_seed(method: str) -> int:
  """A stable per-method integer for keys. Guided methods share the unguided key (common random
  numbers), so w = 0 reproduces the unguided set exactly and differences come from guidance."""
  if method in DIFFUSION_METHODS:
    return 1
  return zlib.crc32(method.encode()) & 0x7FFFFFFF


class Run:
  """One workdir and its config; loads data and models lazily and once."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, quiet: bool = False):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.quiet = quiet
    os.makedirs(self.workdir, exist_ok=True)
    self._data: PreparedData | None = None
    self._diffusion = None
    self._classifier = None
    self._cache = None
    self._samplers: dict[str, Any] = {}

  # ------------------------------------------------------------------ paths and bookkeeping
  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def stage_record(self, stage: str) -> dict[str, Any] | None:
    p = self.path("stages", f"{stage}.json")
    return tio.read_json(p) if os.path.exists(p) else None

  def record_stage(self, stage: str, seconds: float, **extra: Any) -> None:
    tio.write_json(self.path("stages", f"{stage}.json"), {"seconds": seconds, **extra})

  @property
  def seed(self) -> int:
    return int(self.config.seed)

  # ------------------------------------------------------------------ data
  @property
  def data(self) -> PreparedData:
    if self._data is None:
      self._data = prepare_data(DataConfig.from_config(self.config.data))
    return self._data

  @property
  def num_classes(self) -> int:
    return self.data.train.num_classes

  @property
  def shape_tc(self) -> tuple[int, int]:
    return self.data.train.T, self.data.train.C

  def train_counts(self) -> np.ndarray:
    return np.bincount(self.data.train.y, minlength=self.num_classes)

  # ------------------------------------------------------------------ models
  def classifier_config(self, model: str | None = None, x_fit: np.ndarray | None = None
                        ) -> ClassifierConfig:
    section = self.config.classifier
    if model is not None and model != section.model:
      section = ml_collections.ConfigDict(section.to_dict())
      section.model = model
    x_fit = self.data.train.x if x_fit is None else x_fit
    periods = None
    if section.model == "timesnet":
      periods = timesnet_periods(x_fit, int(section.timesnet.top_k))
    T, C = self.shape_tc
    return ClassifierConfig.from_config(section, self.num_classes, T, C, periods=periods)

  @property
  def train_classifier_config(self) -> TrainClassifierConfig:
    return TrainClassifierConfig.from_config(self.config.train_classifier)

  @property
  def guidance_config(self) -> GuidanceConfig:
    return GuidanceConfig.from_config(self.config.guidance)


# ====================================================================== stages


def stage_data(run: Run) -> PreparedData:
  """Loads, splits and normalises the data; writes the summary and the normaliser."""
  t0 = time.perf_counter()
  data = run.data
  tio.write_json(run.path("data", "summary.json"), data.info)
  tio.write_json(run.path("data", "normalizer.json"), data.normalizer.to_dict())
  run.record_stage("data", time.perf_counter() - t0)
  log(f"data: {data.info['name']} train/val/test = {data.info['n_train']}/{data.info['n_val']}/"
      f"{data.info['n_test']}, T={data.info['T']}, C={data.info['C']}, "
      f"prevalence(train)={data.info['prevalence_train']:.3f}")
  return data


def stage_train_diffusion(run: Run):
  """Trains (or resumes, or reloads) the class-conditional denoiser."""
  if run._diffusion is not None:
    return run._diffusion
  t0 = time.perf_counter()
  d = run.data.train
  result = train_diffusion(run.config, d.x, d.y, d.mask, run.workdir,
                           num_classes=run.num_classes, normalizer=run.data.normalizer.to_dict(),
                           seed=run.seed, quiet=run.quiet)
  seconds = time.perf_counter() - t0
  if run.stage_record("train_diffusion") is None or result.trained_steps > 0:
    run.record_stage("train_diffusion", seconds, step=result.step)
  run._diffusion = (result.apply_fn, result.ema_params)
  return run._diffusion


def load_trained_diffusion(run: Run):
  """The trained denoiser `(apply_fn, ema_params)`, training it first if needed."""
  if run._diffusion is None:
    ckpt = run.path("checkpoints", "diffusion")
    try:
      _, apply_fn, ema_params, meta = load_diffusion(ckpt)
      steps = int(meta.get("train_diffusion", {}).get("num_steps", -1))
      if steps != int(run.config.train_diffusion.num_steps):
        raise FileNotFoundError
      run._diffusion = (apply_fn, ema_params)
    except FileNotFoundError:
      return stage_train_diffusion(run)
  return run._diffusion


def stage_train_classifier(run: Run):
  """Trains the guidance classifier (early stopping on validation) and its grad-norm table."""
  if run._classifier is not None:
    return run._classifier
  t0 = time.perf_counter()
  classifier = make_classifier(run.classifier_config())
  d = run.data
  params, history = train_classifier(classifier, d.train.x, d.train.y, d.val.x, d.val.y,
                                     run.train_classifier_config, seed=run.seed,
                                     workdir=run.workdir, quiet=run.quiet)
  gn_path = run.path("guidance", "grad_norms.json")
  if not os.path.exists(gn_path):
    stats = grad_norm_stats(classifier.loss_fn, params, d.train.x, d.train.y,
                            batch_size=int(run.config.guidance.cache_batch_size))
    tio.write_json(gn_path, stats)
  if not history.get("restored") or run.stage_record("train_classifier") is None:
    run.record_stage("train_classifier", time.perf_counter() - t0,
                     best_epoch=history.get("best_epoch"),
                     val_auprc=history.get("best_val_auprc"))
  run._classifier = (classifier, params)
  return run._classifier


def stage_cache_guidance(run: Run):
  """G = mean gradient of the guidance classifier's loss over guidance-val (SPECS 4)."""
  if run._cache is not None:
    return run._cache
  classifier, params = stage_train_classifier(run)
  g = run.guidance_config
  path = run.path("guidance", "cache.npz")
  want = {"class_filter": g.class_filter, "normalized": bool(g.normalize_cache),
          "count": int(_filter_count(run.data.guide_val.y, g.class_filter))}
  if os.path.exists(path):
    cache, _ = load_cache(path, params)
    have = {"class_filter": cache.class_filter, "normalized": cache.normalized,
            "count": cache.count}
    if have == want:
      run._cache = cache
      return cache
    log(f"cache_guidance: cached G has {have}, config wants {want}; rebuilding.")
  t0 = time.perf_counter()
  gv = run.data.guide_val
  cache = build_guidance_cache(classifier.loss_fn, params, gv.x, gv.y,
                               batch_size=g.cache_batch_size, class_filter=g.class_filter,
                               normalize=g.normalize_cache)
  save_cache(path, cache, meta={"classifier_checkpoint": run.path("checkpoints", "classifier"),
                                "guidance_split": "guide_val", "n": int(len(gv))})
  run.record_stage("cache_guidance", time.perf_counter() - t0, count=cache.count,
                   build_seconds=cache.build_seconds, norm=cache.norm)
  log(f"cache_guidance: G over {cache.count} guidance samples ({g.class_filter}) in "
      f"{cache.build_seconds:.2f}s, |G| = {cache.norm:.4g}")
  run._cache = cache
  return cache


def _filter_count(y: np.ndarray, class_filter: str) -> int:
  from tardiff_jax.influence import select_rows
  return int(select_rows(np.asarray(y), class_filter).size)


# ---------------------------------------------------------------------- generation


def _guidance_for(run: Run, method: str) -> GuidanceConfig | None:
  g = run.guidance_config
  if method == "unguided":
    return None
  if method == "tardiff":
    return dataclasses.replace(g, method="tardiff")
  if method in ("classifier", "batch"):
    return dataclasses.replace(g, method=method, class_scales=())
  raise ValueError(f"Unknown diffusion method {method!r}; expected one of {DIFFUSION_METHODS}.")


def method_scale(run: Run, method: str) -> float:
  """The guidance scale a method samples with: tardiff uses the selected w (or guidance.scale);
  classifier/batch guidance use their own config fields."""
  if method == "tardiff":
    sweep = run.path("guidance", "scale_sweep.json")
    if run.guidance_config.select_scale and os.path.exists(sweep):
      return float(tio.read_json(sweep)["selected_scale"])
    return float(run.config.guidance.scale)
  if method == "classifier":
    return float(run.config.evaluation.classifier_scale)
  if method == "batch":
    return float(run.config.evaluation.batch_scale)
  return 0.0


STATS_DRAWS = 2  # Noise draws per training stay for the sampler's gamma and x0 calibration.


def denoiser_stats(run: Run, scfg: SamplerConfig) -> tuple[np.ndarray | None, Any]:
  """What the sampler of `scfg` needs from the trained denoiser, estimated on the training split
  (filled as in training): `(gamma, calibration)`, gamma [S, K, C, T] for
  sampling.variance="analytic" (else None; `estimate_gamma`, of the calibrated predictor when
  calibrating) and `X0Calibration` for sampling.calibrate_x0 (else None;
  `estimate_calibration`). Cached in checkpoints/denoiser_stats.json, reused while the plan, the
  cfg scale, the draws, the seed and the data, diffusion, U-Net and training settings match."""
  want_gamma, want_cal = scfg.variance == "analytic", bool(scfg.calibrate_x0)
  if not (want_gamma or want_cal):
    return None, None
  schedule = DiffusionConfig.from_config(run.config.diffusion).make_schedule()
  fill = str(run.config.train_diffusion.get("fill", "zero"))
  model = {k: run.config[k].to_dict() for k in ("data", "diffusion", "unet", "train_diffusion")}
  want = {"timesteps": [int(t) for t in sampling_plan(schedule, scfg).t], "draws": STATS_DRAWS,
          "cfg_scale": float(scfg.cfg_scale), "gamma": want_gamma, "calibrate_x0": want_cal,
          "seed": run.seed, "model": json.loads(json.dumps(model, default=list))}
  path = run.path("checkpoints", "denoiser_stats.json")
  if os.path.exists(path):
    rec = tio.read_json(path)
    if rec.get("settings") == want:
      arr = lambda k: None if rec.get(k) is None else np.asarray(rec[k], np.float32)
      cal = X0Calibration(arr("slope"), arr("intercept")) if want_cal else None
      return arr("gamma"), cal
  apply_fn, ema_params = load_trained_diffusion(run)
  d = run.data.train
  x = denoiser_inputs(d.x, d.mask, fill)
  t0 = time.perf_counter()
  key = jax.random.fold_in(jax.random.PRNGKey(run.seed), _method_seed("denoiser_stats"))
  kw = dict(batch_size=int(run.config.sampling.batch_size), draws=STATS_DRAWS)
  cal = (estimate_calibration(apply_fn, ema_params, schedule, scfg, x, d.y, key,
                              run.num_classes, **kw) if want_cal else None)
  gamma = (estimate_gamma(apply_fn, ema_params, schedule, scfg, x, d.y, key, run.num_classes,
                          calibration=cal, **kw) if want_gamma else None)
  tolist = lambda a: None if a is None else a.tolist()
  tio.write_json(path, {"settings": want, "seconds": time.perf_counter() - t0,
                        "layout": "[step, class, channel, DCT frequency]",
                        "gamma": tolist(gamma), "slope": tolist(cal and cal.slope),
                        "intercept": tolist(cal and cal.intercept)})
  what = " and ".join(n for n, w in (("x0 calibration", want_cal),
                                     ("analytic-variance gamma", want_gamma)) if w)
  log(f"sampling: {what} over {len(d)} training stays x {STATS_DRAWS} draws "
      f"in {time.perf_counter() - t0:.1f}s")
  return gamma, cal


def _sampler(run: Run, method: str):
  """One jitted sampler per guidance kind; the scale travels in gparams (no recompiles)."""
  key = "unguided" if method == "unguided" else method
  if key not in run._samplers:
    apply_fn, _ = load_trained_diffusion(run)
    schedule = DiffusionConfig.from_config(run.config.diffusion).make_schedule()
    scfg = SamplerConfig.from_config(run.config.sampling)
    gcfg = _guidance_for(run, method)
    guidance_fn = None
    if gcfg is not None:
      classifier, _ = stage_train_classifier(run)
      guidance_fn = guidance_from_config(classifier.loss_fn, gcfg)
    gamma, calibration = denoiser_stats(run, scfg)
    fn = make_sampler(apply_fn, schedule, scfg, run.num_classes, guidance_fn=guidance_fn,
                      gamma=gamma, calibration=calibration)
    run._samplers[key] = jax.jit(fn, static_argnames="shape")
  return run._samplers[key]


def sample_method(run: Run, method: str, scale: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, float]:
  """Draws a synthetic set (normalised units) for a diffusion method; returns (x, y, seconds)."""
  apply_fn, ema_params = load_trained_diffusion(run)
  del apply_fn
  gparams = None
  if method != "unguided":
    classifier, params = stage_train_classifier(run)
    cache = stage_cache_guidance(run)
    w = method_scale(run, method) if scale is None else float(scale)
    g = run.guidance_config
    if method == "tardiff" and g.class_scales and scale is None:
      w = g.scale_array(run.num_classes)
    gparams = make_gparams(params, cache.G, w)
  counts = class_counts(run.train_counts(), mode=str(run.config.sampling.counts))
  fn = _sampler(run, method)
  key = jax.random.fold_in(jax.random.PRNGKey(run.seed), _method_seed(method))
  t0 = time.perf_counter()
  x, y = generate(fn, ema_params, gparams, key, counts, run.shape_tc,
                  int(run.config.sampling.batch_size), progress=not run.quiet)
  return x, y, time.perf_counter() - t0


def baseline_method(run: Run, method: str) -> tuple[np.ndarray, np.ndarray, float]:
  """Random oversampling / augmentation of real train, at the sampling counts."""
  t0 = time.perf_counter()
  counts = class_counts(run.train_counts(), mode=str(run.config.sampling.counts))
  tr = run.data.train
  seed = run.seed + _method_seed(method)
  if method == "oversample":
    x, y = baselines.random_oversample(tr.x, tr.y, counts, seed)
  elif method == "augment":
    x, y = baselines.augment(tr.x, tr.y, counts, seed, mask=tr.mask)
  else:
    raise ValueError(f"Unknown baseline {method!r}; expected one of {BASELINE_METHODS}.")
  return x, y, time.perf_counter() - t0


def synthetic_path(run: Run, method: str) -> str:
  return run.path("synthetic", f"{method}.npz")


def _synthetic_settings(run: Run, method: str) -> dict[str, Any]:
  s = {"method": method, "seed": run.seed, "counts": str(run.config.sampling.counts),
       "sampling": run.config.sampling.to_dict(),
       "train_diffusion_steps": int(run.config.train_diffusion.num_steps)}
  if method in ("tardiff", "classifier", "batch"):
    s["scale"] = method_scale(run, method)
    s["guidance"] = {k: v for k, v in run.config.guidance.to_dict().items()
                     if k not in ("scale", "scale_grid", "select_scale")}
  return json.loads(json.dumps(s, default=list))


def write_method(run: Run, method: str, x_norm: np.ndarray, y: np.ndarray, seconds: float) -> None:
  """synthetic/<method>.npz (original units) + .json (settings, time, samples/s)."""
  tio.write_npz(synthetic_path(run, method),
                x=run.data.normalizer.inverse(x_norm).astype(np.float32), y=y.astype(np.int32))
  tio.write_json(run.path("synthetic", f"{method}.json"),
                 {"settings": _synthetic_settings(run, method), "n": int(len(y)),
                  "class_counts": np.bincount(y, minlength=run.num_classes).tolist(),
                  "seconds": seconds, "samples_per_s": len(y) / max(seconds, 1e-9)})


def load_method(run: Run, method: str) -> tuple[np.ndarray, np.ndarray] | None:
  """A stored synthetic set in normalised units, if its recorded settings still match."""
  p, meta_p = synthetic_path(run, method), run.path("synthetic", f"{method}.json")
  if not (os.path.exists(p) and os.path.exists(meta_p)):
    return None
  if tio.read_json(meta_p).get("settings") != _synthetic_settings(run, method):
    return None
  with np.load(p, allow_pickle=False) as z:
    x, y = z["x"], z["y"]
  return run.data.normalizer.transform(x), y.astype(np.int32)


def produce_method(run: Run, method: str, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Returns the method's synthetic set, generating and writing it unless already stored."""
  if not force:
    stored = load_method(run, method)
    if stored is not None:
      return stored
  if method in DIFFUSION_METHODS:
    x, y, seconds = sample_method(run, method)
  else:
    x, y, seconds = baseline_method(run, method)
  write_method(run, method, x, y, seconds)
  log(f"generate: {method}: {len(y)} samples in {seconds:.1f}s "
      f"({len(y) / max(seconds, 1e-9):.1f} samples/s)")
  return x, y


def evaluation_methods(run: Run) -> tuple[str, ...]:
  methods = tuple(str(m) for m in run.config.evaluation.methods)
  bad = sorted(set(methods) - set(ALL_METHODS))
  if bad:
    raise ValueError(f"evaluation.methods has unknown methods {bad}; known: {ALL_METHODS}.")
  return methods


def stage_generate(run: Run, methods: tuple[str, ...] | None = None, force: bool = False) -> None:
  """Writes synthetic/<method>.npz for every evaluated method (or `methods`)."""
  t0 = time.perf_counter()
  methods = evaluation_methods(run) if methods is None else methods
  for m in methods:
    produce_method(run, m, force=force)
  diffusion = [m for m in methods if m in DIFFUSION_METHODS]
  seconds = sum(tio.read_json(run.path("synthetic", f"{m}.json"))["seconds"] for m in diffusion)
  n = sum(tio.read_json(run.path("synthetic", f"{m}.json"))["n"] for m in diffusion)
  run.record_stage("generate", time.perf_counter() - t0, sampling_seconds=seconds,
                   samples=n, samples_per_s=n / max(seconds, 1e-9))


# ---------------------------------------------------------------------- protocols


def _eval_path(run: Run, name: str) -> str:
  return run.path("eval", f"{name}.json")


def _log_eval(name: str, out: dict[str, Any]) -> None:
  log(f"evaluate: {name}: AUROC {out['auroc']:.3f} AUPRC {out['auprc']:.3f} "
      f"F1 {out['minority_f1']:.3f} (group of {out.get('group_size', '?')} models, "
      f"{out['seconds']:.1f}s)")


def epoch_size(run: Run) -> int:
  """Minibatch positions per epoch of every protocol model: the largest protocol set
  (real train + max(alpha) x real train). Fixed by the config, so a setting's result does not
  depend on which other settings share its vmapped group (resumed runs reproduce it)."""
  alphas = protocols.check_alphas(run.config.evaluation.alphas)
  n = len(run.data.train)
  return n + int(round(max(alphas) * n))


def _cached_group(run: Run, fits: dict[str, tuple[np.ndarray, np.ndarray]], val, test,
                  label: str) -> dict[str, dict[str, Any]]:
  """Protocol settings trained as one vmapped group (every set x every seed) and cached per
  setting in eval/<name>.json. A group whose files are all present is read back; otherwise the
  whole group is trained again (its members never depend on the group's composition, see
  `epoch_size`), so an interrupted evaluation resumes with the same numbers."""
  if all(os.path.exists(_eval_path(run, n)) for n in fits):
    return {n: tio.read_json(_eval_path(run, n)) for n in fits}
  ecfg = run.config.evaluation
  cls_cfg = run.classifier_config(model=str(ecfg.downstream))
  seeds = [run.seed + 1000 + i for i in range(int(ecfg.num_seeds))]
  t0 = time.perf_counter()
  results = evaluate_fresh_group(list(fits.values()), val[0], val[1], test[0], test[1], cls_cfg,
                                 run.train_classifier_config, seeds, epoch_size=epoch_size(run),
                                 name=label, quiet=run.quiet)
  seconds = time.perf_counter() - t0
  out = {}
  for name, res in zip(fits, results):
    res["seconds"] = seconds / len(fits)  # The group's wall time, shared out.
    res["group"] = label
    tio.write_json(_eval_path(run, name), res)
    _log_eval(name, res)
    out[name] = res
  return out


def _sweep_paths(run: Run, w: float) -> tuple[str, str]:
  base = run.path("guidance", "sweep", f"w{w:g}")
  return base + ".npz", base + ".json"


def _sweep_settings(run: Run, w: float) -> dict[str, Any]:
  s = _synthetic_settings(run, "unguided")
  s.update(method="tardiff", scale=float(w),
           guidance={k: v for k, v in run.config.guidance.to_dict().items()
                     if k not in ("scale", "scale_grid", "select_scale")})
  return json.loads(json.dumps(s, default=list))


def _save_sweep_set(run: Run, w: float, x: np.ndarray, y: np.ndarray, seconds: float) -> None:
  """A sweep point's samples (normalised units), so a restarted sweep does not redraw them."""
  npz, meta = _sweep_paths(run, w)
  tio.write_npz(npz, x=x.astype(np.float32), y=y.astype(np.int32))
  tio.write_json(meta, {"settings": _sweep_settings(run, w), "seconds": seconds})


def _load_sweep_set(run: Run, w: float) -> tuple[np.ndarray, np.ndarray, float] | None:
  npz, meta = _sweep_paths(run, w)
  if not (os.path.exists(npz) and os.path.exists(meta)):
    return None
  m = tio.read_json(meta)
  if m.get("settings") != _sweep_settings(run, w):
    return None
  with np.load(npz, allow_pickle=False) as z:
    return z["x"], z["y"], float(m["seconds"])


def stage_select_scale(run: Run) -> float:
  """Paper 4.6: sweep w on the grid, TSRTR (alpha = 1) on guidance-val / evaluation-val.

  The fresh model early-stops on guidance-val and is scored on evaluation-val; w maximises
  evaluation-val AUPRC. The test split is never read. Also records each w's mean influence of
  the generated samples on the guidance set (it should rise with w, paper Fig. 3).
  """
  g = run.guidance_config
  sweep_path = run.path("guidance", "scale_sweep.json")
  if not g.select_scale:
    return float(g.scale)
  grid = tuple(float(w) for w in g.scale_grid)
  if os.path.exists(sweep_path):
    stored = tio.read_json(sweep_path)
    if stored.get("grid") == list(grid):
      return float(stored["selected_scale"])
  t0 = time.perf_counter()
  classifier, params = stage_train_classifier(run)
  cache = stage_cache_guidance(run)
  d = run.data
  score_fn = jax.jit(lambda p, G, x, y: influence(classifier.loss_fn, p, G, x, y,
                                                  g.variant if g.variant != "batch" else "dot"))
  drawn, fits, infl = {}, {}, {}
  for w in grid:
    stored = _load_sweep_set(run, w)
    x, y, seconds = stored if stored is not None else sample_method(run, "tardiff", scale=w)
    if stored is None:
      _save_sweep_set(run, w, x, y, seconds)
    drawn[w] = (x, y, seconds)
    infl[w] = np.concatenate([np.asarray(score_fn(params, cache.G, jnp.asarray(x[i:i + 512]),
                                                  jnp.asarray(y[i:i + 512])))
                              for i in range(0, len(y), 512)])
    xm, ym, _ = protocols.mix_real_synthetic(d.train.x, d.train.y, x, y, 1.0, run.seed)
    fits[f"sweep_w{w:g}"] = (xm, ym)
  # The fresh TSRTR models early-stop on guidance-val and are scored on evaluation-val.
  res_all = _cached_group(run, fits, (d.guide_val.x, d.guide_val.y),
                          (d.eval_val.x, d.eval_val.y), "select_scale")
  rows = []
  for w in grid:
    res, (_, y, _) = res_all[f"sweep_w{w:g}"], drawn[w]
    rows.append({"scale": w, "auroc": res["auroc"], "auprc": res["auprc"],
                 "minority_f1": res["minority_f1"], "std": res.get("std", {}),
                 "mean_influence": float(np.mean(infl[w])),
                 "mean_influence_by_class": {str(c): float(np.mean(infl[w][y == c]))
                                             for c in np.unique(y)}})
    log(f"select_scale: w={w:g} eval-val AUPRC {res['auprc']:.3f} AUROC {res['auroc']:.3f} "
        f"mean influence {np.mean(infl[w]):.4g}")
  best = max(rows, key=lambda r: (r["auprc"], -abs(r["scale"])))
  tio.write_json(sweep_path, {"grid": list(grid), "rows": rows,
                              "selected_scale": best["scale"],
                              "criterion": "evaluation-val AUPRC, TSRTR alpha=1.0",
                              "seconds": time.perf_counter() - t0})
  run.record_stage("select_scale", time.perf_counter() - t0)
  log(f"select_scale: selected w = {best['scale']:g}")
  # The selected w's samples are the tardiff set (same key, same scale): write them once here.
  write_method(run, "tardiff", *drawn[best["scale"]])
  return float(best["scale"])


def stage_evaluate(run: Run) -> dict[str, Any]:
  """TSTR / TSRTR / TRTR, fidelity, privacy, plots and the report (the test split is read here
  and nowhere else)."""
  t_start = time.perf_counter()
  d = run.data
  ecfg = run.config.evaluation
  methods = evaluation_methods(run)
  alphas = protocols.check_alphas(ecfg.alphas)
  syn = {m: produce_method(run, m) for m in methods}
  val, test = d.val, d.test

  for m in methods:
    if np.unique(syn[m][1]).size < 2:
      raise ValueError(f"Synthetic set {m} has one class only; TSTR needs both classes "
                       f"(sampling.counts={run.config.sampling.counts!r}).")
  vt = ((val.x, val.y), (test.x, test.y))
  tstr = {"real": _cached_group(run, {"trtr": (d.train.x, d.train.y)}, *vt, "trtr")["trtr"]}
  tsrtr: dict[str, dict[str, Any]] = {}
  fid: dict[str, Any] = {}
  priv: dict[str, Any] = {}
  notes = []
  for m in methods:
    # TSTR and every TSRTR ratio of a method: one vmapped group of (1 + ratios) x seeds models.
    x, y = syn[m]
    fits = {f"tstr_{m}": (x, y)}
    n_syn = {}
    for a in alphas:
      xm, ym, n_syn[a] = protocols.mix_real_synthetic(d.train.x, d.train.y, x, y, a, run.seed)
      fits[f"tsrtr_{m}_{protocols.alpha_key(a)}"] = (xm, ym)
    res = _cached_group(run, fits, *vt, f"protocols_{m}")
    tstr[m] = res[f"tstr_{m}"]
    tsrtr[m] = {}
    for a in alphas:
      key = protocols.alpha_key(a)
      tsrtr[m][key] = dict(res[f"tsrtr_{m}_{key}"], n_synthetic=int(n_syn[a]))

  fcfg = run.config.evaluation
  for m in methods:
    x, _ = syn[m]
    p = run.path("eval", f"fidelity_{m}.json")
    if os.path.exists(p):
      entry = tio.read_json(p)
    else:
      disc = fidelity.discriminative_score(d.train.x, x, seed=run.seed,
                                           repeats=int(fcfg.fidelity_repeats),
                                           steps=int(fcfg.fidelity_steps))
      pred = fidelity.predictive_score(x, test.x, seed=run.seed,
                                       steps=int(fcfg.fidelity_steps) // 2)
      mir = privacy.membership_inference_auroc(d.train.x, test.x, x)
      entry = {"discriminative": disc, "predictive": pred, "mir": float(mir)}
      tio.write_json(p, entry)
    fid[m] = {"discriminative": entry["discriminative"], "predictive": entry["predictive"]}
    priv[m] = {"mir": entry["mir"]}
  p = run.path("eval", "fidelity_real.json")
  if not os.path.exists(p):
    tio.write_json(p, {"predictive": fidelity.predictive_score(
        d.train.x, test.x, seed=run.seed, steps=int(fcfg.fidelity_steps) // 2)})
  fid["real"] = {"predictive": tio.read_json(p)["predictive"]}

  grad_norms = tio.read_json(run.path("guidance", "grad_norms.json")) if os.path.exists(
      run.path("guidance", "grad_norms.json")) else {}
  grad_norms = {d.train.class_names[int(k)] if int(k) < len(d.train.class_names) else k: v
                for k, v in grad_norms.items()}

  # Plots (original units for traces).
  plot_paths = _make_plots(run, syn, tsrtr, tstr, grad_norms)

  timing = _timing(run)
  timing["evaluate_s"] = time.perf_counter() - t_start
  sweep_p = run.path("guidance", "scale_sweep.json")
  extras: dict[str, Any] = {"oracle": {k: d.info[k] for k in ("oracle_auroc", "oracle_auprc")
                                       if k in d.info},
                            "seeds": int(ecfg.num_seeds), "downstream": str(ecfg.downstream),
                            "scales": {m: method_scale(run, m) for m in methods
                                       if m in ("tardiff", "classifier", "batch")}}
  if os.path.exists(sweep_p):
    extras["scale_sweep"] = tio.read_json(sweep_p)
  dropped = sorted(set(ALL_METHODS) - set(methods))
  if dropped:
    notes.append(f"Methods not run in this config: {', '.join(dropped)}.")
  if tuple(alphas) != (0.2, 0.4, 0.6, 0.8, 1.0):
    notes.append(f"TSRTR ratios trimmed to {list(alphas)} (paper: 0.2..1.0).")
  if int(ecfg.num_seeds) < 3:
    notes.append(f"{int(ecfg.num_seeds)} seeds per setting (issue asks for >= 3).")
  tn = run.config.classifier.timesnet
  sizes = (int(tn.d_model), int(tn.d_ff), int(tn.e_layers), int(tn.num_kernels))
  if str(ecfg.downstream) == "timesnet" and sizes != SPECS_TIMESNET:
    notes.append("Downstream TimesNet is smaller than SPECS 5 (d_model, d_ff, e_layers, "
                 f"num_kernels = {sizes}, SPECS {SPECS_TIMESNET}) to fit the CPU budget; "
                 "`configs/default.py:paper` uses the SPECS sizes.")
  if int(fcfg.fidelity_repeats) < 5:
    notes.append(f"Discriminative score over {int(fcfg.fidelity_repeats)} repeats (SPECS 6: 5).")
  notes.append(f"Every protocol model runs epochs of {epoch_size(run)} minibatch positions "
               "(the largest TSRTR set); smaller sets (TSTR, low alpha) cycle through their "
               "rows within an epoch. Early stopping on validation AUPRC, patience "
               f"{int(run.config.train_classifier.patience)}, at most "
               f"{int(run.config.train_classifier.max_epochs)} epochs.")
  extras["notes"] = notes
  rep = report.build_report(
      dataset_info=_dataset_info(d), methods=["real", *methods], tstr=tstr, tsrtr=tsrtr,
      fidelity=fid, privacy=priv, grad_norms=grad_norms, timing=timing, extras=extras)
  report.write_report(run.workdir, rep, plots=plot_paths)
  run.record_stage("evaluate", time.perf_counter() - t_start)
  log(f"evaluate: wrote {run.path('report.json')} and report.md")
  return rep


def _dataset_info(d: PreparedData) -> dict[str, Any]:
  keys = ("name", "n_train", "n_val", "n_test", "T", "C", "prevalence_train", "oracle_auroc",
          "oracle_auprc", "label", "n_guide_val", "n_eval_val")
  return {k: d.info[k] for k in keys if k in d.info}


def _timing(run: Run) -> dict[str, float]:
  def sec(stage):
    r = run.stage_record(stage)
    return float(r["seconds"]) if r else 0.0
  gen = run.stage_record("generate") or {}
  return {"data_s": sec("data"), "train_diffusion_s": sec("train_diffusion"),
          "train_classifier_s": sec("train_classifier"),
          "cache_guidance_s": sec("cache_guidance"), "select_scale_s": sec("select_scale"),
          "generate_s": sec("generate"), "samples_per_s": float(gen.get("samples_per_s", 0.0))}


def _make_plots(run: Run, syn, tsrtr, tstr, grad_norms) -> dict[str, str]:
  d = run.data
  out = {}
  inv = d.normalizer.inverse
  first = next((m for m in ("tardiff", "unguided") if m in syn), next(iter(syn)))
  xs, ys = syn[first]
  rel = os.path.join("plots", f"traces_{first}.png")
  plots.plot_traces(run.path(rel), inv(d.train.x), d.train.y, inv(xs), ys,
                    d.train.channel_names, d.train.class_names, n=3, seed=run.seed)
  out[f"Real vs {first} traces"] = rel
  rel = os.path.join("plots", "pca.png")
  plots.plot_pca(run.path(rel), d.train.x, {m: v[0] for m, v in syn.items()}, seed=run.seed)
  out["PCA of real vs synthetic"] = rel
  rel = os.path.join("plots", "tsrtr.png")
  plots.plot_tsrtr(run.path(rel), tsrtr, reference=tstr["real"])
  out["TSRTR over alpha"] = rel
  sweep_p = run.path("guidance", "scale_sweep.json")
  if os.path.exists(sweep_p):
    sw = tio.read_json(sweep_p)
    rel = os.path.join("plots", "scale_sweep.png")
    plots.plot_scale_sweep(run.path(rel), sw["rows"], selected=sw["selected_scale"])
    out["Guidance-scale sweep (evaluation-val)"] = rel
  if grad_norms:
    rel = os.path.join("plots", "grad_norms.png")
    plots.plot_grad_norms(run.path(rel), grad_norms)
    out["Gradient norm by class"] = rel
  return out


# ====================================================================== entry


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str,
             quiet: bool = False) -> Any:
  """Runs one mode of the CLI (SPECS 3) in `workdir`."""
  run = Run(config, workdir, quiet=quiet)
  tio.write_text(run.path("config.json"), config.to_json_best_effort(indent=2) + "\n")
  if mode == "pipeline":
    return run_pipeline(run)
  stage_data(run)
  if mode == "data":
    return run.data
  if mode == "train_diffusion":
    return stage_train_diffusion(run)
  if mode == "train_classifier":
    return stage_train_classifier(run)
  if mode == "cache_guidance":
    return stage_cache_guidance(run)
  if mode == "generate":
    method = str(config.guidance.method)
    method = "unguided" if method == "none" else method
    if method == "tardiff" and run.guidance_config.select_scale:
      stage_select_scale(run)
    x, y = produce_method(run, method, force=True)
    return x, y
  if mode == "evaluate":
    return stage_evaluate(run)
  raise ValueError(f"Unknown mode {mode!r}.")


def run_pipeline(run: Run) -> dict[str, Any]:
  """Every stage in order; each skips what is already complete in the workdir."""
  t0 = time.perf_counter()
  stage_data(run)
  log("stage train_diffusion")
  stage_train_diffusion(run)
  log("stage train_classifier")
  stage_train_classifier(run)
  methods = evaluation_methods(run)
  if any(m in methods for m in ("tardiff", "classifier", "batch")):
    log("stage cache_guidance")
    stage_cache_guidance(run)
  if "tardiff" in methods:
    log("stage select_scale")
    stage_select_scale(run)
  log("stage generate")
  stage_generate(run)
  log("stage evaluate")
  rep = stage_evaluate(run)
  log(f"pipeline finished in {time.perf_counter() - t0:.1f}s: {run.path('report.md')}")
  return rep
