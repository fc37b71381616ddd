"""`Experiment`: one workdir and its typed config, with every stage's result computed on first
use and kept (in memory and in the workdir's artifact store), and `load_run` to open a finished
run's trained pieces from Python.

    with Experiment(config, "runs/simulator") as exp:   # takes the workdir's lock
      exp.denoiser            # trains, resumes or reloads
      exp.synthetic("tardiff")  # selects w on evaluation-val if needed, then samples
      report = evaluate(exp)  # tardiff_jax.experiment.evaluate

Every computation is keyed by the identities of its inputs (settings and data fingerprints), so
a rerun skips what is done, and a killed run resumes with the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax import parallel
from tardiff_jax.config.schema import ExperimentConfig, experiment_config
from tardiff_jax.data.loaders import save_dataset
from tardiff_jax.data.prepare import PreparedData, prepare_data
from tardiff_jax.evaluation import protocols
from tardiff_jax.experiment import gate, members, stages
from tardiff_jax.experiment.methods import (
    DIFFUSION_KEY,
    BaselineMethod,
    DiffusionMethod,
    check_methods,
    get_method,
)
from tardiff_jax.experiment.store import ArtifactKey, ArtifactStore, settings_digest
from tardiff_jax.experiment.workdir import Workdir
from tardiff_jax.influence.guidance import guidance_from_config, make_gparams
from tardiff_jax.sampling.generate import class_counts, generate
from tardiff_jax.sampling.sampler import make_sampler

log = stages.log


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
  """A method's synthetic set in the model's normalised space (`x` float32[N, T, C], `y`
  int32[N], class-sorted), the scale it was drawn at (None for unguided and baselines), the
  seconds it took and its artifact key. `view` is "drawn" (as the sampler returned it) or
  "published" (read back from synthetic/<method>.npz, i.e. through the original units, which
  is what the evaluation scores: the set users get)."""
  method: str
  x: np.ndarray
  y: np.ndarray
  scale: Any
  seconds: float
  key: ArtifactKey
  view: str = "drawn"
  class_filter: str | None = None  # Whose guidance-val rows G averages (guided sets only).

  @property
  def identity(self) -> str:
    return settings_digest({"synthetic": self.key.digest, "view": self.view})


class Experiment:
  """A run in `workdir` with `config` (a ConfigDict, mapping or ExperimentConfig).

  Writers take the workdir's lock (a second run on the same workdir stops with
  `WorkdirLockedError`); `readonly=True` opens a finished run without the lock and refuses to
  train or compute anything new. `retrain=True` discards checkpoints trained with other
  settings instead of stopping with `IncompatibleWorkdirError`.
  """

  def __init__(self, config: Any, workdir: str | os.PathLike, *, quiet: bool = False,
               retrain: bool = False, readonly: bool = False):
    self.config: ExperimentConfig = experiment_config(config)
    check_methods(self.config.evaluation.methods)
    self.workdir = Workdir(workdir)
    self.quiet, self.retrain, self.readonly = quiet, retrain, readonly
    if not readonly:
      self.workdir.acquire()
      tio.write_json(self.workdir.config_json, self.config.to_dict())
    self.store = ArtifactStore(self.workdir.root, readonly=readonly)
    self._samplers: dict[Any, Any] = {}
    self._synthetic: dict[tuple[str, Any, Any], SyntheticSet] = {}
    self._caches: dict[str, Any] = {}
    self._selections: dict[str, Any] = {}
    self._class_factors: dict[str, np.ndarray] = {}

  def close(self) -> None:
    self.workdir.release()

  def __enter__(self) -> Experiment:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def log(self, msg: str) -> None:
    if not self.quiet:
      log(msg)

  # ------------------------------------------------------------------ trained pieces
  @functools.cached_property
  def mesh(self):
    """The run's device mesh (`parallel.devices`), shared by every stage; None: one device."""
    mesh = parallel.run_mesh(self.config.parallel.devices)
    parallel.check_divisible("sampling.batch_size", self.config.sampling.batch_size, mesh)
    return mesh

  @functools.cached_property
  def data(self) -> PreparedData:
    t0 = time.perf_counter()
    data = prepare_data(self.config.data)
    self.data_seconds = time.perf_counter() - t0
    if not self.readonly:
      tio.write_json(self.workdir.path("data", "summary.json"), data.info)
      tio.write_json(self.workdir.path("data", "normalizer.json"), data.normalizer.to_dict())
    i = data.info
    self.log(f"data: {i['name']} train/val/test = {i['n_train']}/{i['n_val']}/{i['n_test']}, "
             f"T={i['T']}, C={i['C']}, prevalence(train)={i['prevalence_train']:.3f}")
    return data

  @functools.cached_property
  def denoiser(self) -> stages.Denoiser:
    return stages.train_denoiser(self.config, self.data, self.workdir, self.store,
                                 retrain=self.retrain, readonly=self.readonly, quiet=self.quiet,
                                 mesh=self.mesh)

  @functools.cached_property
  def guide(self) -> stages.TrainedGuide:
    return stages.train_guide(self.config, self.data, self.workdir, self.store,
                              retrain=self.retrain, readonly=self.readonly, quiet=self.quiet)

  @functools.cached_property
  def guide_quality(self):
    """The guide's guidance-val metrics and the gate's verdict (`gate.GuideQuality`); warns,
    or stops with guidance.gate = "error", when it has no guidance signal."""
    q = gate.assess_guide(self.config, self.data, self.guide, self.store, self.quiet,
                          mesh=self.mesh)
    guided = [m for m in self.config.evaluation.methods if get_method(m).guided]
    gate.check(q, self.config, guided)
    return q

  def cache_for(self, class_filter: str) -> tuple[Any, str]:
    """(G over the guidance-val rows of `class_filter`, its identity), built once."""
    if class_filter not in self._caches:
      self._caches[class_filter] = stages.guidance_cache(
          self.config, self.data, self.guide, self.store, self.quiet, self.mesh, class_filter)
    return self._caches[class_filter]

  @property
  def guidance_cache(self):
    """The cached guidance gradient G (`GuidanceCache`) over guidance-val that tardiff samples
    with (its class filter resolved: `class_filter`)."""
    return self.cache_for(self.class_filter("tardiff"))[0]

  def filter_candidates(self, method: str) -> tuple[str, ...]:
    """The class filters of G that `method`'s sweep tries: all and minority for tardiff with
    `guidance.class_filter = "auto"` when its w is chosen on evaluation-val (one guide, no
    class balance); otherwise the one filter (`guidance.fixed_filter`)."""
    g = self.config.guidance
    if (g.class_filter == "auto" and get_method(method).score == "influence"
        and self.selects_scale(method) and not g.uses_members and not g.class_balance):
      return ("all", "minority")
    return (g.fixed_filter,)

  def class_filter(self, method: str) -> str:
    """The class filter of `method`'s G: the config's, or the one chosen with w."""
    candidates = self.filter_candidates(method)
    return candidates[0] if len(candidates) == 1 else self.selection_for(method).class_filter

  @functools.cached_property
  def _fit(self):
    return stages.fit_sampler_stats(self.config, self.data, self.denoiser, self.store,
                                    self.quiet, self.mesh)

  @property
  def sampler_fit(self):
    """The sampler's fits to the denoiser (`SamplerFit`: gamma, x0 calibration)."""
    return self._fit[0]

  # ------------------------------------------------------------------ methods
  def scale(self, method: str) -> Any:
    """The w a guided method samples with: TarDiff's per-class scales, the method's fixed scale
    (`guidance.scale`, `guidance.<method>_scale`), or the one chosen on evaluation-val when that
    field is None (every guided method: the same procedure and grid)."""
    m = get_method(method)
    if not isinstance(m, DiffusionMethod) or not m.guided:
      return None
    g = self.config.guidance
    if m.scale_field == "scale" and g.class_scales:
      if len(g.class_scales) != self.data.num_classes:
        raise ValueError(f"guidance.class_scales has {len(g.class_scales)} entries for "
                         f"{self.data.num_classes} classes.")
      return tuple(g.class_scales)
    if self.selects_scale(method):
      return float(self.selection_for(method).selected)
    return float(getattr(g, m.scale_field))

  def selects_scale(self, method: str) -> bool:
    """Whether `method`'s w is chosen on evaluation-val (a guided method whose scale is unset)."""
    m = get_method(method)
    if not isinstance(m, DiffusionMethod) or not m.guided:
      return False
    g = self.config.guidance
    return getattr(g, m.scale_field) is None and not (m.scale_field == "scale" and g.class_scales)

  def selection_for(self, method: str):
    """`method`'s scale sweep on evaluation-val (`selection.ScaleSelection`), run once."""
    from tardiff_jax.experiment.selection import select_scale  # noqa: PLC0415 (import cycle)
    if method not in self._selections:
      self._selections[method] = select_scale(self, method)
    return self._selections[method]

  @property
  def selection(self):
    """TarDiff's scale sweep on evaluation-val (`selection.ScaleSelection`)."""
    return self.selection_for("tardiff")

  def sampler(self, method: str):
    """The jitted sampler of a diffusion method (one per guidance score; the scale travels in
    gparams, so no scale recompiles): `sample(params, gparams, key, y, shape)`."""
    m = get_method(method)
    if not isinstance(m, DiffusionMethod):
      raise ValueError(f"{method} is not a diffusion method.")
    if m.score not in self._samplers:
      guidance_fn = None
      if m.guided:
        _ = self.guide_quality  # The gate speaks before any guided sample is drawn.
        variant = None if m.score == "influence" else m.score
        guidance_fn = guidance_from_config(self.guide.classifier.loss_fn, self.config.guidance,
                                           variant)
      d, fit = self.denoiser, self.sampler_fit
      fn = make_sampler(d.apply_fn, d.schedule, self.config.sampling, d.num_classes,
                        guidance_fn=guidance_fn, gamma=fit.gamma, calibration=fit.calibration)
      self._samplers[m.score] = parallel.shard_sampler(fn, self.mesh)  # jit, batch on the mesh
    return self._samplers[m.score]

  def draw_inputs(self, method: str, scale: Any,
                  class_filter: str | None = None) -> dict[str, Any]:
    """`generate`'s params, gparams and place_fn for `method` at `scale`, on the run's mesh."""
    mesh = self.mesh
    return {"params": parallel.replicate(mesh, self.denoiser.params),
            "gparams": parallel.replicate(mesh, self.gparams(method, scale, class_filter)),
            "place_fn": None if mesh is None else functools.partial(parallel.shard_rows, mesh)}

  @functools.cached_property
  def guide_members(self) -> members.GuideMembers | None:
    """The stack of guides behind tardiff's score (`guidance.ensemble`, `guidance.trajectory`),
    or None when it is the guide alone."""
    if not self.config.guidance.uses_members:
      return None
    return members.guide_members(self.config, self.data, self.guide, self.store, self.quiet,
                                 self.mesh)

  def gparams(self, method: str, scale: Any, class_filter: str | None = None) -> Any:
    """The guidance hook's parameters for a guided method at `scale` with G over
    `class_filter`'s rows (default: the resolved one), None when unguided; with
    `guidance.class_balance` the scale becomes per class (`class_factors`)."""
    if not get_method(method).guided:
      return None
    if get_method(method).score == "influence" and self.guide_members is not None:
      gm = self.guide_members
      return make_gparams(gm.params, gm.G, scale, gm.weights)
    factors = self.class_factors(method)
    if factors is not None:
      scale = np.asarray(scale, np.float64) * factors
    cache = self.cache_for(class_filter or self.class_filter(method))[0]
    return make_gparams(self.guide.params, cache.G, scale)

  def class_factors(self, method: str) -> np.ndarray | None:
    """`guidance.class_balance`'s per-class factors of `method`'s scale (m / m_c over real
    training stays, `stages.class_balance`), or None when off."""
    m, g = get_method(method), self.config.guidance
    if not (g.class_balance and isinstance(m, DiffusionMethod) and m.guided
            and m.score != "batch"):
      return None
    variant = g.variant if m.score == "influence" else m.score
    if variant not in self._class_factors:
      self._class_factors[variant] = stages.class_balance(
          self.config, self.data, self.guide, self.cache_for(self.class_filter(method)),
          self.store, variant, self.quiet)
    return self._class_factors[variant]

  def train_counts(self) -> np.ndarray:
    return self.data.train.class_counts()

  def synthetic_settings(self, method: str, scale: Any,
                         class_filter: str | None = None) -> dict[str, Any]:
    """What a method's synthetic set at `scale` (G over `class_filter`'s rows, default the
    resolved filter) depends on (its artifact's settings)."""
    m = get_method(method)
    counts = class_counts(self.train_counts(), mode=self.config.sampling.counts)
    s: dict[str, Any] = {"method": method, "seed": self.config.seed, "counts": counts.tolist()}
    if isinstance(m, BaselineMethod):
      s["train"] = self.data.fingerprint("train")
      return s
    g = self.config.guidance
    s.update(denoiser=stages.denoiser_identity(self.denoiser), sampler_fit=self._fit[1],
             sampling=dataclasses.asdict(self.config.sampling))
    if m.guided:
      cache = self.cache_for(class_filter or self.class_filter(method))[1]
      s.update(scale=scale, guide=self.guide.identity, cache=cache,
               guidance={"score": g.variant if m.score == "influence" else m.score,
                         "evaluate_on": g.evaluate_on, "through_denoiser": g.through_denoiser,
                         "clip": g.clip, "normalize_grad": g.normalize_grad})
      if g.placement != "mean":  # Only when set: keeps older keys valid.
        s["guidance"]["placement"] = g.placement
      if self.class_factors(method) is not None:  # Only when on: keeps older keys valid.
        s["guidance"]["class_balance"] = True
      if m.score == "influence" and self.guide_members is not None:
        s["guidance"]["members"] = self.guide_members.identity
    return s

  @property
  def sampling_key(self) -> jax.Array:
    """The key of every diffusion method's samples (common random numbers across methods)."""
    return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), DIFFUSION_KEY)

  def sampled_method(self, method: str, scale: Any) -> str:
    """The method whose sampler draws `method` at `scale`: "unguided" for a guided method at
    w = 0 (it adds 0 * J to every step: the unguided samples bit for bit, same key)."""
    m = get_method(method)
    zero = m.guided and np.all(np.asarray(scale, np.float64) == 0.0)
    return "unguided" if zero else method

  def synthetic(self, method: str, scale: Any = None,
                class_filter: str | None = None) -> SyntheticSet:
    """The method's synthetic set (drawn once, then read from the store); `scale` and
    `class_filter` override the resolved w and class filter of G of a guided method (the
    scale sweep)."""
    m = get_method(method)
    if scale is None:
      scale = self.scale(method)
    if m.guided:
      class_filter = class_filter or self.class_filter(method)
    memo = (method, scale, class_filter)
    if memo in self._synthetic:
      return self._synthetic[memo]
    if self.sampled_method(method, scale) != method:  # w = 0: the unguided set, drawn once
      syn = dataclasses.replace(self.synthetic("unguided"), method=method, scale=scale,
                                class_filter=class_filter)
      self._synthetic[memo] = syn
      return syn
    key = self.store.key("synthetic", method,
                         self.synthetic_settings(method, scale, class_filter), "npz")
    arrays = self.store.read_arrays(key)
    if arrays is not None:
      syn = SyntheticSet(method, arrays["x"], arrays["y"], scale, self.store.seconds(key), key,
                         class_filter=class_filter)
    else:
      self.store.check_writable(key)
      t0 = time.perf_counter()
      counts = class_counts(self.train_counts(), mode=self.config.sampling.counts)
      if isinstance(m, BaselineMethod):
        x, y = m.make(self.data.train, counts, self.config.seed + stages.stream_seed(method))
      else:
        inputs = self.draw_inputs(method, scale, class_filter)
        x, y = generate(self.sampler(method), inputs["params"], inputs["gparams"],
                        self.sampling_key, counts,
                        (self.data.train.T, self.data.train.C), self.config.sampling.batch_size,
                        progress=not self.quiet, place_fn=inputs["place_fn"])
      seconds = time.perf_counter() - t0
      x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
      self.store.write_arrays(key, {"x": x, "y": y}, seconds=seconds)
      syn = SyntheticSet(method, x, y, scale, seconds, key, class_filter=class_filter)
      how = "" if scale is None else f" (w={scale}, G over {class_filter})"
      self.log(f"generate: {method}{how}: {len(y)} samples "
               f"in {seconds:.1f}s ({len(y) / max(seconds, 1e-9):.1f} samples/s)")
    self._synthetic[memo] = syn
    return syn

  def export_synthetic(self, syn: SyntheticSet) -> SyntheticSet:
    """Writes synthetic/<method>.npz in original units with channel and class names (loadable
    with `tardiff_jax.data.load_dataset`); returns the published view of the set (its values
    read back through the original units, normalised again)."""
    d = self.data
    extra = {"method": np.asarray(syn.method)}
    if syn.scale is not None:
      extra["scale"] = np.asarray(syn.scale, np.float32)
    if syn.class_filter is not None:
      extra["class_filter"] = np.asarray(syn.class_filter)
    x_units = d.normalizer.inverse(syn.x)
    if not self.readonly:
      save_dataset(self.workdir.synthetic(syn.method), x_units, syn.y,
                   channel_names=d.train.channel_names, class_names=d.train.class_names,
                   **extra)
    return dataclasses.replace(syn, x=d.normalizer.transform(x_units), view="published")

  # ------------------------------------------------------------------ protocols
  @property
  def protocol_seeds(self) -> list[int]:
    return [self.config.seed + 1000 + i for i in range(self.config.evaluation.num_seeds)]

  @property
  def epoch_size(self) -> int:
    """Minibatch positions per epoch of every protocol model: the largest protocol set (real
    train + max(alpha) x real train). Fixed by the config, so a setting's result does not depend
    on which other settings share its vmapped group (resumed runs reproduce it)."""
    n = len(self.data.train)
    return n + int(round(max(self.config.evaluation.alphas) * n))

  def downstream_set(self, syn: SyntheticSet, masks: bool | None = None) -> SyntheticSet:
    """The set as downstream models see it: with `evaluation.synthetic_masks` (or `masks`), a
    diffusion set takes real training stays' missingness (`protocols.impose_real_masks`)."""
    masks = self.config.evaluation.synthetic_masks if masks is None else masks
    if not masks or not isinstance(get_method(syn.method), DiffusionMethod):
      return syn
    d = self.data.train
    x = protocols.impose_real_masks(syn.x, syn.y, d.mask, d.y,
                                    self.config.seed + stages.stream_seed("masks"))
    return dataclasses.replace(syn, x=x, view=f"{syn.view}+masks")

  def mix(self, syn: SyntheticSet, alpha: float) -> tuple[np.ndarray, np.ndarray, str, int]:
    """TSRTR training set: real train + alpha |real train| synthetic rows (as downstream models
    see them, `downstream_set`) -> (x, y, identity, number of synthetic rows)."""
    syn = self.downstream_set(syn)
    d = self.data.train
    x, y, n = protocols.mix_real_synthetic(d.x, d.y, syn.x, syn.y, alpha, self.config.seed)
    ident = settings_digest({"real": self.data.fingerprint("train"), "synthetic": syn.identity,
                             "alpha": float(alpha), "seed": self.config.seed})
    return x, y, ident, n

  def protocol_group(self, fits: dict[str, tuple[np.ndarray, np.ndarray, str]], val: str,
                     test: str, label: str, also: tuple[str, ...] = ()
                     ) -> dict[str, dict[str, Any]]:
    """Fresh downstream models on each named training set (x, y, identity), one vmapped group
    (every set x every seed), early-stopped on split `val`, scored on split `test` (and on the
    splits in `also`); each setting's result is an artifact (`stages.protocol_group`)."""
    return stages.protocol_group(self.config, self.data, self.store, fits, val, test, label,
                                 seeds=self.protocol_seeds, epoch_size=self.epoch_size,
                                 also=also, quiet=self.quiet, mesh=self.mesh)


def load_run(workdir: str | os.PathLike, quiet: bool = True) -> Experiment:
  """Opens a finished run read-only from its config.json: `.data`, `.denoiser` (apply_fn,
  EMA params, schedule), `.guide` (classifier, params), `.guidance_cache`, `.sampler_fit`,
  `.sampler(method)`, `.synthetic(method)` all come from what the pipeline saved (nothing is
  trained; a missing piece raises)."""
  path = os.path.join(os.fspath(workdir), "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a tardiff workdir (run the "
                            "pipeline there first).")
  return Experiment(tio.read_json(path), workdir, quiet=quiet, readonly=True)
