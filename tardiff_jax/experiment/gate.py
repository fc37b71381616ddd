"""Does the guide classifier have anything to say? A quality gate before guidance is trusted.

Influence guidance is only as good as the classifier it differentiates: a guide that predicts a
constant gives every sample the same tiny influence, and "TarDiff" is then unguided sampling
under another name. After the guide trains, its AUROC, AUPRC and loss on guidance-val (the split
G is built on; the target class one-vs-rest) are measured with percentile bootstrap intervals,
next to its per-class gradient-norm spread.

The rule: the guide has a guidance signal when (1) the lower end of its 95% AUROC interval is
above 0.5 (AUROC has a fixed chance level, unlike AUPRC, and its interval widens on a small
guidance set), and (2) its AUROC beats that of every one of `guidance.gate_permutations` guides
trained exactly like it (same init, minibatches and early stopping) on permuted training labels:
a permutation test at level 1 / (K + 1). The second part matters on clinical series: a network
that never saw a real label still ranks cases by how abnormal their vitals are, and early
stopping on validation picks its luckiest epoch (on the simulator such guides reach guidance-val
AUROC 0.40-0.78), so "better than 0.5" alone would pass guides that learned nothing from the
labels. Without a signal the run warns loudly and marks the guided methods and the verdict
(`guidance.gate = "warn"`), or stops (`"error"`). The test split is never read.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import numpy as np
from sklearn import metrics as skm

from tardiff_jax.config.schema import ExperimentConfig
from tardiff_jax.data.prepare import PreparedData
from tardiff_jax.evaluation.metrics import bootstrap_intervals
from tardiff_jax.experiment import stages
from tardiff_jax.experiment.store import ArtifactStore
from tardiff_jax.training.classifier_trainer import predict_proba, train_classifier_seeds

RESAMPLES = 1000
LEVEL = 0.95
RULE = ("the lower end of the guide's 95% bootstrap AUROC interval on guidance-val is above 0.5 "
        "and its AUROC beats every guide trained the same way on permuted training labels")


class NoGuidanceSignalError(RuntimeError):
  """The guide classifier has no guidance signal and `guidance.gate = "error"`."""


@dataclasses.dataclass(frozen=True)
class GuideQuality:
  """The guide's guidance-val metrics ({"auroc", "auprc", "loss"}: {"value", "lo", "hi"}), the
  split's size and target-class count, the per-class gradient norms, the guidance-val AUROCs of
  the permuted-label guides, and the gate's verdict."""
  metrics: dict[str, dict[str, float]]
  n: int
  positives: int
  target_class: int
  grad_norms: dict[str, dict[str, float]]
  permuted_auroc: list[float]
  signal: bool

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "rule": RULE, "resamples": RESAMPLES, "level": LEVEL}


def _losses(classifier, params, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> np.ndarray:
  fn = jax.jit(jax.vmap(classifier.loss_fn, in_axes=(None, 0, 0)))
  return np.concatenate([np.asarray(fn(params, x[i:i + batch], y[i:i + batch]))
                         for i in range(0, len(y), batch)]).astype(np.float64)


def permuted_guides_auroc(cfg: ExperimentConfig, data: PreparedData, guide,
                          quiet: bool = True, mesh=None) -> list[float]:
  """Guidance-val AUROCs of `guidance.gate_permutations` guides trained like `guide` (same
  seed, so the same init and minibatches; one vmapped group, split over `mesh`'s devices) on
  permuted training labels."""
  k = cfg.guidance.gate_permutations
  if not k:
    return []
  rng = np.random.default_rng([cfg.seed, stages.stream_seed("gate")])
  labels = [rng.permutation(data.train.y) for _ in range(k)]
  stop, gv, target = getattr(data, stages.GUIDE_STOP_SPLIT), data.guide_val, data.target_class
  params, _ = train_classifier_seeds(
      guide.classifier, data.train.x, data.train.y, stop.x, stop.y, cfg.train_classifier,
      [cfg.seed] * k, labels=labels, target=target, name="guide_gate", quiet=quiet, mesh=mesh)
  p = predict_proba(guide.classifier, params, gv.x, stacked=True, target=target)
  return [float(skm.roc_auc_score(gv.y == target, pi)) for pi in p]


def assess_guide(cfg: ExperimentConfig, data: PreparedData, guide, store: ArtifactStore,
                 quiet: bool = True, permuted: list[float] | None = None,
                 mesh=None) -> GuideQuality:
  """The guide's quality on guidance-val (an artifact of the guide). `permuted` gives the
  label-free reference's AUROCs when already known (else `permuted_guides_auroc` trains it)."""
  gv, target = data.guide_val, data.target_class
  key = store.key("guide_quality", "guide_quality",
                  {"guide": guide.identity, "guide_val": data.fingerprint("guide_val"),
                   "resamples": RESAMPLES, "level": LEVEL, "seed": cfg.seed,
                   "permutations": cfg.guidance.gate_permutations,
                   "reference": None if permuted is None else list(permuted)})
  stored = store.read_json(key)
  if stored is None:
    store.check_writable(key)
    t0 = time.perf_counter()
    p = predict_proba(guide.classifier, guide.params, gv.x, target=target)
    losses = _losses(guide.classifier, guide.params, gv.x, gv.y)
    y = (gv.y == target).astype(np.int32)
    metrics = bootstrap_intervals(y, p, losses, RESAMPLES, LEVEL, seed=cfg.seed)
    null = (permuted_guides_auroc(cfg, data, guide, quiet, mesh) if permuted is None
            else [float(a) for a in permuted])
    names = data.train.class_names
    norms = {names[int(c)]: {**v, "cv": float(v["std"] / max(v["mean"], 1e-12))}
             for c, v in guide.grad_norms.items()}
    signal = metrics["auroc"]["lo"] > 0.5 and all(metrics["auroc"]["value"] > a for a in null)
    stored = GuideQuality(metrics, int(len(y)), int(y.sum()), target, norms, null,
                          bool(signal)).to_dict()
    store.write_json(key, stored, seconds=time.perf_counter() - t0)
  fields = {f.name for f in dataclasses.fields(GuideQuality)}
  return GuideQuality(**{k: v for k, v in stored.items() if k in fields})


def suggestions(cfg: ExperimentConfig) -> list[str]:
  """Overrides a user can try for a guide without signal (each a field of the config)."""
  tc, c = cfg.train_classifier, cfg.classifier
  out = [f"--config.train_classifier.max_epochs={max(2 * tc.max_epochs, 30)} (train longer)",
         f"--config.train_classifier.patience={max(2 * tc.patience, 5)} (stop less early)"]
  if not tc.class_weighting:
    out.append("--config.train_classifier.class_weighting=True (weight the rare class up)")
  other = "timesnet" if c.model == "gru" else "gru"
  out.append(f"--config.classifier.model={other} (the other guide architecture)")
  if c.model == "gru":
    out.append(f"--config.classifier.gru.hidden={max(c.gru.hidden // 4, 4)} (a smaller GRU for "
               "a small training set)")
  else:
    out.append(f"--config.classifier.timesnet.d_model={max(c.timesnet.d_model // 2, 2)} (a "
               "smaller TimesNet)")
  out.append("--config.data.guide_val_fraction=0.7 (a larger guidance set, a tighter interval)")
  return out


def describe(q: GuideQuality) -> str:
  """What the guide shows on guidance-val, and why it falls short (if it does)."""
  a = q.metrics["auroc"]
  text = (f"guidance-val AUROC {a['value']:.3f} (95% interval [{a['lo']:.3f}, {a['hi']:.3f}], "
          f"{q.n} cases, {q.positives} of the target class)")
  if q.permuted_auroc:
    text += (f"; guides trained on permuted labels reach up to {max(q.permuted_auroc):.3f} "
             f"({len(q.permuted_auroc)} permutations)")
  return text


def check(q: GuideQuality, cfg: ExperimentConfig, guided_methods: list[str]) -> None:
  """Warns loudly on stderr (or, with guidance.gate = "error", raises) when the guide has no
  signal and guided methods are asked for. Not silenced by quiet runs."""
  if q.signal or not guided_methods:
    return
  msg = (f"The guide classifier shows no guidance signal: {describe(q)}. It must beat chance "
         "(0.5) beyond resampling noise and every label-free guide. Guided methods "
         f"({', '.join(guided_methods)}) follow a guide that learned nothing usable from the "
         "labels; the report marks them and does not compare them. Try:\n  "
         + "\n  ".join(suggestions(cfg)))
  if cfg.guidance.gate == "error":
    raise NoGuidanceSignalError(msg + "\n(guidance.gate='error'; 'warn' carries on and marks "
                                "the guided methods instead.)")
  bar = "!" * 78
  print(f"[tardiff] {bar}\n[tardiff] WARNING: {msg}\n[tardiff] {bar}", file=sys.stderr,
        flush=True)
