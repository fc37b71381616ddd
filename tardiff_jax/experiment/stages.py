"""The trained pieces of a run, each a function of typed inputs returning a typed result.

- `train_denoiser`: the class-conditional U-Net (orbax checkpoints, exact resume) -> `Denoiser`
  with its schedule and settings read back from the checkpoint;
- `train_guide`: the guidance classifier and its per-class gradient norms -> `TrainedGuide`;
- `guidance_cache`: G over guidance-val -> `GuidanceCache`;
- `fit_sampler_stats`: the sampler's fits to the denoiser (gamma, x0 calibration) ->
  `SamplerFit`, saved beside the denoiser checkpoint;
- `protocol_group`: fresh downstream models on named training sets, one vmapped group.

A checkpoint trained with other settings than the config asks for stops the run with
`IncompatibleWorkdirError` naming the settings (or is discarded and trained again with
`retrain=True`). Everything else is an artifact of the store, keyed by the identities of its
inputs, so a changed setting computes a new artifact instead of reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
import zlib
from typing import Any

import jax
import numpy as np

from tardiff_jax.config.convert import to_dict
from tardiff_jax.config.schema import ExperimentConfig
from tardiff_jax.data.prepare import PreparedData
from tardiff_jax.evaluation.downstream import evaluate_fresh_group
from tardiff_jax.evaluation.grad_norms import grad_norm_stats
from tardiff_jax.experiment.store import ArtifactStore, settings_digest
from tardiff_jax.experiment.workdir import Workdir
from tardiff_jax.influence.cache import GuidanceCache, build_guidance_cache, load_cache, save_cache
from tardiff_jax.influence.guidance import class_balance_factors
from tardiff_jax.models.classifier import Classifier, ClassifierConfig, make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.sampling.fitting import SamplerFit, fit_sampler, needs_fit
from tardiff_jax.sampling.plan import sampling_plan
from tardiff_jax.training.checkpoints import DESCRIPTIVE, CheckpointStore, meta_mismatch
from tardiff_jax.training.classifier_trainer import classifier_meta, train_classifier
from tardiff_jax.training.diffusion_trainer import (
    RUN_ONLY,
    Denoiser,
    checkpoint_meta,
    checkpoint_mismatch,
    denoiser_inputs,
    load_diffusion,
    train_diffusion,
)

STATS_DRAWS = 2  # Noise draws per training stay for the sampler's gamma and x0 calibration.
# The split the guidance classifier early-stops on: guidance-val only. Evaluation-val, which picks
# the guidance scales, must not shape the guide (tests/test_selection.py poisons it to check).
GUIDE_STOP_SPLIT = "guide_val"


def log(msg: str) -> None:
  print(f"[tardiff] {msg}", file=sys.stderr, flush=True)


def stream_seed(name: str) -> int:
  """A stable integer per named random stream (folded into the master seed's key)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


class IncompatibleWorkdirError(ValueError):
  """A checkpoint in the workdir was trained with other settings than the config asks for."""


def _explain(saved: dict[str, Any], wanted: dict[str, Any], fields: list[str],
             cfg: ExperimentConfig, saved_data: dict[str, Any] | None) -> str:
  """'unet.base_channels (checkpoint 32, config 48), ...' with data fields named."""
  def get(d, path):
    for part in path.split("."):
      d = d.get(part) if isinstance(d, dict) else None
    return d
  parts = []
  for f in fields:
    if f.startswith("data."):  # A fingerprint: name the data settings that changed.
      now = to_dict(cfg.data)
      changed = meta_mismatch(saved_data, now) if saved_data else []
      parts.append(", ".join(f"data.{p}" for p in changed) + " (the training data differ)"
                   if changed else "the training data (same data settings, other content)")
    else:
      parts.append(f"{f} (checkpoint {get(saved, f)!r}, config {get(wanted, f)!r})")
  return "; ".join(dict.fromkeys(parts))


def _check_checkpoint(directory: str, wanted: dict[str, Any], mismatch, cfg: ExperimentConfig,
                      what: str, retrain: bool) -> None:
  """Stops (or, with retrain, discards the checkpoint) when `directory` holds a model trained
  with other settings than `wanted`."""
  with CheckpointStore(directory) as store:
    if store.latest_step() is None:
      return
    saved = store.restore_meta()
  differ = mismatch(saved, wanted)
  if not differ:
    return
  why = _explain(saved, wanted, differ, cfg, saved.get("data_config"))
  if retrain:
    log(f"{what}: discarding {directory}, trained with other settings: {why}.")
    shutil.rmtree(directory)
    return
  raise IncompatibleWorkdirError(
      f"{directory} holds a {what} trained with other settings than this config: {why}. Use a "
      "fresh --workdir, or pass --retrain to discard it and train again.")


# ---------------------------------------------------------------------- the denoiser


def _denoiser_meta(cfg: ExperimentConfig, data: PreparedData) -> dict[str, Any]:
  extra = {"data": {"train": data.fingerprint("train")}, "data_config": to_dict(cfg.data),
           "normalizer": data.normalizer.to_dict()}
  unet = dataclasses.replace(cfg.unet, num_classes=data.num_classes)
  return checkpoint_meta(unet, cfg.diffusion, cfg.train_diffusion, data.train.T, data.train.C,
                         data.num_classes, cfg.seed, extra)


def denoiser_identity(denoiser: Denoiser) -> str:
  """Digest of everything that shaped a denoiser (its checkpoint meta, data fingerprint
  included): the key its downstream artifacts are filed under."""
  meta = {k: v for k, v in denoiser.meta.items() if k not in DESCRIPTIVE}
  meta["train_diffusion"] = {k: v for k, v in meta["train_diffusion"].items()
                             if k not in RUN_ONLY}
  return settings_digest(meta)


def train_denoiser(cfg: ExperimentConfig, data: PreparedData, workdir: Workdir,
                   store: ArtifactStore, *, retrain: bool = False, readonly: bool = False,
                   quiet: bool = False, mesh=None) -> Denoiser:
  """Trains, resumes or reloads the denoiser of `workdir` on the training split (data-parallel
  over `mesh`'s devices, when given)."""
  wanted = _denoiser_meta(cfg, data)
  if readonly:
    denoiser = load_diffusion(workdir.denoiser_dir)
    differ = checkpoint_mismatch(denoiser.meta, wanted)
    if differ or denoiser.step < cfg.train_diffusion.num_steps:
      raise IncompatibleWorkdirError(f"{workdir.denoiser_dir} is not the finished denoiser of "
                                     f"this config ({', '.join(differ) or 'training unfinished'}).")
    return denoiser
  _check_checkpoint(workdir.denoiser_dir, wanted, checkpoint_mismatch, cfg, "denoiser", retrain)
  d = data.train
  denoiser = train_diffusion(
      d.x, d.y, d.mask, workdir.denoiser_dir, unet=cfg.unet, diffusion=cfg.diffusion,
      train=cfg.train_diffusion, num_classes=data.num_classes, seed=cfg.seed,
      extra_meta={k: wanted[k] for k in ("data", "data_config", "normalizer")},
      metrics_path=workdir.metrics, quiet=quiet, mesh=mesh)
  if denoiser.trained_steps > 0:
    store.write_json(store.key("timing", "train_diffusion", denoiser_identity(denoiser)),
                     {"step": denoiser.step, "trained_steps": denoiser.trained_steps},
                     seconds=denoiser.train_time_s)
  return denoiser


# ---------------------------------------------------------------------- the guide


@dataclasses.dataclass(frozen=True)
class TrainedGuide:
  """The guidance classifier: its pure functions, parameters, training history, the per-class
  gradient-norm table (paper Table 3) and its identity (digest of its checkpoint meta)."""
  classifier: Classifier
  params: Any
  history: dict[str, Any]
  grad_norms: dict[str, dict[str, float]]
  identity: str


def classifier_spec(cfg: ExperimentConfig, data: PreparedData,
                    model: str | None = None) -> ClassifierConfig:
  """The network of family `model` (default: the guide's) for this data; TimesNet periods from
  the training split's spectrum unless the config fixes them."""
  model = model or cfg.classifier.model
  periods = None
  if model == "timesnet" and not cfg.classifier.timesnet.periods:
    periods = timesnet_periods(data.train.x, cfg.classifier.timesnet.top_k)
  return cfg.classifier.spec(data.num_classes, data.train.T, data.train.C, model=model,
                             periods=periods)


def train_guide(cfg: ExperimentConfig, data: PreparedData, workdir: Workdir,
                store: ArtifactStore, *, retrain: bool = False, readonly: bool = False,
                quiet: bool = False) -> TrainedGuide:
  """Trains (or reloads) the guidance classifier on train, early-stopping on guidance-val."""
  classifier = make_classifier(classifier_spec(cfg, data))
  extra = {"data": {"train": data.fingerprint("train"),
                    "val": data.fingerprint(GUIDE_STOP_SPLIT)},
           "data_config": to_dict(cfg.data), "target_class": data.target_class}
  wanted = classifier_meta(classifier, cfg.train_classifier, cfg.seed, extra)
  mismatch = meta_mismatch
  identity = settings_digest({k: v for k, v in wanted.items() if k not in DESCRIPTIVE})
  if readonly:
    with CheckpointStore(workdir.guide_dir) as ckpt:
      if ckpt.latest_step() is None or mismatch(ckpt.restore_meta(), wanted):
        raise IncompatibleWorkdirError(f"{workdir.guide_dir} holds no guidance classifier of "
                                       "this config; run the pipeline first.")
  else:
    _check_checkpoint(workdir.guide_dir, wanted, mismatch, cfg, "guidance classifier", retrain)
  t0 = time.perf_counter()
  d, stop = data, getattr(data, GUIDE_STOP_SPLIT)
  params, history = train_classifier(
      classifier, d.train.x, d.train.y, stop.x, stop.y, cfg.train_classifier, seed=cfg.seed,
      checkpoint_dir=workdir.guide_dir, metrics_path=workdir.metrics, target=data.target_class,
      extra_meta=extra, quiet=quiet)
  if not history.get("restored"):
    store.write_json(store.key("timing", "train_classifier", identity),
                     {"best_epoch": history.get("best_epoch"),
                      "val_auprc": history.get("best_val_auprc")},
                     seconds=time.perf_counter() - t0)
  key = store.key("grad_norms", "grad_norms",
                  {"guide": identity, "batch_size": cfg.guidance.cache_batch_size})
  norms = store.read_json(key)
  if norms is None:
    store.check_writable(key)
    t0 = time.perf_counter()
    norms = grad_norm_stats(classifier.loss_fn, params, d.train.x, d.train.y,
                            batch_size=cfg.guidance.cache_batch_size)
    store.write_json(key, norms, seconds=time.perf_counter() - t0)
  return TrainedGuide(classifier, params, history, norms, identity)


# ---------------------------------------------------------------------- the guidance cache


def cache_key_settings(cfg: ExperimentConfig, data: PreparedData, guide: TrainedGuide,
                       class_filter: str | None = None) -> dict[str, Any]:
  g = cfg.guidance
  return {"guide": guide.identity, "guide_val": data.fingerprint("guide_val"),
          "class_filter": class_filter or g.fixed_filter, "normalize": g.normalize_cache,
          "batch_size": g.cache_batch_size}


def guidance_cache(cfg: ExperimentConfig, data: PreparedData, guide: TrainedGuide,
                   store: ArtifactStore, quiet: bool = False, mesh=None,
                   class_filter: str | None = None) -> tuple[GuidanceCache, str]:
  """G = mean gradient of the guide's loss over guidance-val (the other half of validation picks
  the guidance scale), over the rows of `class_filter` (default: `guidance.fixed_filter`);
  returns (cache, its identity)."""
  class_filter = class_filter or cfg.guidance.fixed_filter
  settings = cache_key_settings(cfg, data, guide, class_filter)
  key = store.key("guidance_cache", "cache", settings, ext="npz")
  identity = key.digest
  path = store.verified_path(key)
  if path is not None:
    return load_cache(path, guide.params)[0], identity
  store.check_writable(key)
  g = cfg.guidance
  gv = data.guide_val
  cache = build_guidance_cache(guide.classifier.loss_fn, guide.params, gv.x, gv.y,
                               batch_size=g.cache_batch_size, class_filter=class_filter,
                               normalize=g.normalize_cache, mesh=mesh)
  store.write_with(key, lambda p: save_cache(p, cache, meta={"guide": guide.identity,
                                                             "guidance_split": "guide_val"}),
                   seconds=cache.build_seconds)
  if not quiet:
    log(f"cache_guidance: G over {cache.count} guidance samples ({class_filter}) in "
        f"{cache.build_seconds:.2f}s, |G| = {cache.norm:.4g}")
  return cache, identity


def class_balance(cfg: ExperimentConfig, data: PreparedData, guide: TrainedGuide,
                  cache: tuple[GuidanceCache, str], store: ArtifactStore, variant: str,
                  quiet: bool = False) -> np.ndarray:
  """`guidance.class_balance`'s per-class factors m / m_c of a score `variant`'s scale over real
  training stays (`influence.guidance.class_balance_factors`; an artifact of the guide and its
  cache, given as (cache, its identity))."""
  key = store.key("class_balance", f"class_balance_{variant}",
                  {"guide": guide.identity, "cache": cache[1], "variant": variant,
                   "train": data.fingerprint("train")})
  stored = store.read_json(key)
  if stored is None:
    store.check_writable(key)
    t0 = time.perf_counter()
    f = class_balance_factors(guide.classifier.loss_fn, guide.params, cache[0].G, data.train.x,
                              data.train.y, data.num_classes, variant,
                              cfg.guidance.cache_batch_size)
    stored = {"factors": f.tolist()}
    store.write_json(key, stored, seconds=time.perf_counter() - t0)
    if not quiet:
      log(f"class_balance: {variant}: per-class scale factors {np.round(f, 3).tolist()}")
  return np.asarray(stored["factors"], np.float64)


# ---------------------------------------------------------------------- sampler fits


def fit_sampler_stats(cfg: ExperimentConfig, data: PreparedData, denoiser: Denoiser,
                      store: ArtifactStore, quiet: bool = False,
                      mesh=None) -> tuple[SamplerFit, str]:
  """What the config's sampler needs from the denoiser (gamma and/or the x0 calibration),
  fitted on the training split filled as in training; returns (fit, its identity)."""
  scfg = cfg.sampling
  settings = {"denoiser": denoiser_identity(denoiser), "draws": STATS_DRAWS,
              "timesteps": [int(t) for t in sampling_plan(denoiser.schedule, scfg).t],
              "cfg_scale": scfg.cfg_scale, "gamma": scfg.variance == "analytic",
              "calibrate_x0": bool(scfg.calibrate_x0), "seed": cfg.seed,
              "batch_size": scfg.batch_size}
  if not needs_fit(scfg):
    return SamplerFit(None, None), settings_digest(settings)
  key = store.key("sampler_fit", "sampler_fit", settings, ext="npz")
  arrays = store.read_arrays(key)
  if arrays is not None:
    return SamplerFit.from_arrays(arrays), key.digest
  store.check_writable(key)
  d = data.train
  x = denoiser_inputs(d.x, d.mask, denoiser.train.fill)
  t0 = time.perf_counter()
  rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), stream_seed("denoiser_stats"))
  fit = fit_sampler(denoiser.apply_fn, denoiser.params, denoiser.schedule, scfg, x, d.y, rng,
                    data.num_classes, batch_size=scfg.batch_size, draws=STATS_DRAWS, mesh=mesh)
  seconds = time.perf_counter() - t0
  store.write_arrays(key, {**fit.to_arrays(),
                           "layout": np.asarray("[step, class, channel, DCT frequency]")},
                     seconds=seconds)
  if not quiet:
    log(f"sampling: fitted the sampler to the denoiser over {len(d)} training stays x "
        f"{STATS_DRAWS} draws in {seconds:.1f}s")
  return fit, key.digest


# ---------------------------------------------------------------------- protocol models


def protocol_group(cfg: ExperimentConfig, data: PreparedData, store: ArtifactStore,
                   fits: dict[str, tuple[np.ndarray, np.ndarray, str]], val: str, test: str,
                   label: str, *, seeds: list[int], epoch_size: int, also: tuple[str, ...] = (),
                   quiet: bool = False, mesh=None) -> dict[str, dict[str, Any]]:
  """Fresh downstream models on each named training set (x, y, identity), trained as one
  vmapped group (every set x every seed), early-stopped on split `val` and scored on split
  `test`; each setting's result is an artifact. A group whose results are all stored is read
  back; otherwise the whole group trains again (a member's result does not depend on its
  group), so an interrupted evaluation resumes with the same numbers. `also` names more splits
  the same models are scored on (result["also"][split]: AUROC, AUPRC, log-loss; see
  `evaluate_fresh_group`)."""
  spec = classifier_spec(cfg, data, cfg.evaluation.downstream)
  common = {"val": data.fingerprint(val), "test": data.fingerprint(test),
            "model": spec.to_dict(), "train": dataclasses.asdict(cfg.train_classifier),
            "seeds": seeds, "epoch_size": epoch_size, "target": data.target_class}
  if also:
    common["also"] = {s: data.fingerprint(s) for s in also}
  keys = {n: store.key("protocol", n, {**common, "fit": ident})
          for n, (_, _, ident) in fits.items()}
  stored = {n: store.read_json(k) for n, k in keys.items()}
  if all(v is not None for v in stored.values()):
    return stored
  store.check_writable(next(iter(keys.values())))
  vs, ts = getattr(data, val), getattr(data, test)
  t0 = time.perf_counter()
  results = evaluate_fresh_group([(x, y) for x, y, _ in fits.values()], vs.x, vs.y, ts.x, ts.y,
                                 spec, cfg.train_classifier, seeds, target=data.target_class,
                                 epoch_size=epoch_size,
                                 also_score={s: (getattr(data, s).x, getattr(data, s).y)
                                             for s in also},
                                 name=label, quiet=quiet, mesh=mesh)
  seconds = time.perf_counter() - t0
  out = {}
  for name, res in zip(fits, results):
    res["seconds"] = seconds / len(fits)  # The group's wall time, shared out.
    res["group"] = label
    store.write_json(keys[name], res, seconds=res["seconds"])
    if not quiet:
      log(f"evaluate: {name}: AUROC {res['auroc']:.3f} AUPRC {res['auprc']:.3f} "
          f"F1 {res['minority_f1']:.3f} (group of {res.get('group_size', '?')} models, "
          f"{res['seconds']:.1f}s)")
    out[name] = res
  return out
