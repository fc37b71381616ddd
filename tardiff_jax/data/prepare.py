"""The data stage: load (simulator or file), check the labels, split, fit the normaliser on
train, normalise every split.

Files are split 80/10/10 (`data.val_fraction`, `data.test_fraction`) unless they are pre-split;
the simulator draws as many stays as it likes and uses its own fractions
(`data.simulator.*`). Labels are checked here, not deep inside a later stage: classes must be
0..K-1 with every class in the training split, and the class of interest (`target_class`: class
1 of a binary task, the rarest training class otherwise) must appear in validation and test.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from sklearn import metrics as skm

from tardiff_jax.config.fields import option
from tardiff_jax.data.dataset import DataError, Dataset, Splits
from tardiff_jax.data.loaders import load_dataset
from tardiff_jax.data.normalizers import KINDS, Normalizer, make_normalizer, normalize_dataset
from tardiff_jax.data.simulator import simulate_icu
from tardiff_jax.data.splits import split_guidance, stratified_split_indices

SOURCES = ("simulator", "file")
LABELS = ("mortality", "long_stay")


def _check_fractions(val: float, test: float, where: str) -> None:
  if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
    raise ValueError(f"{where}val_fraction={val} and {where}test_fraction={test} must be in "
                     "(0, 1) with a sum below 1.")


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """The embedded ICU simulator (`simulate_icu`) and its own split sizes."""
  # The simulator is free: the default draws 10,000 stays and keeps the training split at 1,000
  # (where the learning curve in benchmarks/results/ still rises, and the evaluation's ~100
  # protocol models fit a 20-minute CPU budget), with large validation and test splits so that
  # method differences are not lost in evaluation noise.
  num_stays: int = option(10000, "Stays drawn before splitting.")
  seed: int = option(0, "Simulator seed (independent of the model seed).")
  label: str = option("mortality", "'mortality' or 'long_stay' (ICU stay > 3 days).")
  missing_rate: float = option(0.15, "Fraction of unobserved values (masked).")
  prevalence: float = option(0.08, "Target mortality rate (MIMIC-III: 1,680 / 20,920).")
  val_fraction: float = option(0.2, "Validation (= guidance set) fraction of the stays.")
  test_fraction: float = option(0.7, "Test fraction; touched once, for the final numbers.")

  def __post_init__(self):
    if self.label not in LABELS:
      raise ValueError(f"data.simulator.label={self.label!r}; expected one of {LABELS}.")
    if self.num_stays < 30:
      raise ValueError(f"data.simulator.num_stays={self.num_stays} is too small to split "
                       "(need >= 30).")
    if not 0.0 <= self.missing_rate <= 0.9:
      raise ValueError(f"data.simulator.missing_rate={self.missing_rate} must be in [0, 0.9].")
    if not 0.0 < self.prevalence < 1.0:
      raise ValueError(f"data.simulator.prevalence={self.prevalence} must be in (0, 1).")
    _check_fractions(self.val_fraction, self.test_fraction, "data.simulator.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the series come from and how they are split and normalised."""
  source: str = option("simulator", "'simulator' or 'file' (then set data.path).")
  path: str = option("", ".npz (x, y[, mask] or pre-split x_train/...) or a reference pickle.")
  allow_pickle: bool = option(False, "Pickles run code when loaded: opt in only for trusted "
                                     "files.")
  split_seed: int = option(0, "Seed of the stratified train/val/test split.")
  val_fraction: float = option(0.1, "Files: validation (= guidance set) fraction (80/10/10).")
  test_fraction: float = option(0.1, "Files: test fraction; touched once, for the final numbers.")
  guide_val_fraction: float = option(0.5, "Part of validation that builds G; the rest "
                                          "(evaluation-val) picks the guidance scale.")
  normalizer: str = option("zscore", "'zscore', 'minmax' or 'pit' (centered PIT); fitted on "
                                     "train.")
  simulator: SimulatorConfig = option(SimulatorConfig(), "The embedded ICU simulator.")

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data.source={self.source!r}; expected one of {SOURCES}.")
    if self.source == "file" and not self.path:
      raise ValueError("data.source='file' needs data.path (a .npz or, opt-in, a pickle).")
    if self.normalizer not in KINDS:
      raise ValueError(f"data.normalizer={self.normalizer!r}; expected one of {KINDS}.")
    _check_fractions(self.val_fraction, self.test_fraction, "data.")
    if not 0.0 < self.guide_val_fraction < 1.0:
      raise ValueError(f"data.guide_val_fraction={self.guide_val_fraction} must be in (0, 1).")


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
  """Model-ready splits (x normalised float32, missing filled with 0, mask kept) and the raw ones.

  `raw` holds the original-unit Splits; `train/val/test` and `guide_val/eval_val` (the two
  halves of val) are normalised with `normalizer`, fitted on `raw.train` only. `info` is the
  JSON summary (sizes, T, C, names, prevalence, target class, oracle on the simulator).
  """
  raw: Splits
  train: Dataset
  val: Dataset
  test: Dataset
  guide_val: Dataset
  eval_val: Dataset
  normalizer: Normalizer
  info: dict

  @property
  def num_classes(self) -> int:
    return self.train.num_classes

  @property
  def target_class(self) -> int:
    """The class of interest: metrics (AUROC, AUPRC, minority F1) are one-vs-rest for it."""
    return int(self.info["target_class"])

  def fingerprint(self, *splits: str) -> str:
    """sha256 of the named normalised splits' x, y and mask (e.g. what a model trained on)."""
    h = hashlib.sha256()
    for name in splits:
      ds = getattr(self, name)
      for a in (ds.x, ds.y, ds.mask):
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def target_class(counts: np.ndarray) -> int:
  """Class 1 of a binary task; otherwise the rarest class (ties: the larger label)."""
  counts = np.asarray(counts)
  if counts.size == 2:
    return 1
  return int(np.lexsort((-np.arange(counts.size), counts))[0])


def check_labels(splits: Splits, where: str) -> int:
  """Checks the class structure of the splits; returns the target class.

  Labels must be 0..K-1 (K = the class names) with every class in train (a class-conditional
  generator needs examples of each), and the target class in validation and test (its metrics
  are undefined otherwise).
  """
  k = splits.train.num_classes
  counts = splits.train.class_counts()
  missing = np.flatnonzero(counts == 0)
  if missing.size:
    raise DataError(f"{where}: class {int(missing[0])} ({splits.train.class_names[missing[0]]!r}) "
                    "has no training examples; labels must be 0..K-1 with every class in the "
                    "training split.")
  target = target_class(counts)
  for name, ds in splits.items():
    if ds.num_classes != k:
      raise DataError(f"{where}: split '{name}' has {ds.num_classes} classes, train has {k}.")
    if name != "train" and not np.any(ds.y == target):
      raise DataError(f"{where}: split '{name}' has no example of the target class {target} "
                      f"({ds.class_names[target]!r}); its AUROC/AUPRC would be undefined.")
  return target


def prepare_data(cfg: DataConfig) -> PreparedData:
  """Loads, checks, splits, fits the normaliser on train and normalises every split."""
  oracle_scores = None
  if cfg.source == "simulator":
    s = cfg.simulator
    sim = simulate_icu(s.num_stays, seed=s.seed, missing_rate=s.missing_rate,
                       prevalence=s.prevalence)
    if s.label == "mortality":
      loaded, oracle_scores = sim.dataset, sim.latent_risk
    else:
      loaded, oracle_scores = sim.long_stay_dataset(), sim.long_stay_risk
    fractions, where = (s.val_fraction, s.test_fraction), "simulator"
  else:
    loaded = load_dataset(cfg.path, allow_pickle=cfg.allow_pickle)
    fractions, where = (cfg.val_fraction, cfg.test_fraction), cfg.path
  if isinstance(loaded, Splits):
    raw = loaded
  else:
    tr, va, te = stratified_split_indices(loaded.y, cfg.split_seed, *fractions)
    raw = Splits(train=loaded.subset(tr), val=loaded.subset(va), test=loaded.subset(te))
    if oracle_scores is not None:
      oracle_scores = oracle_scores[te]  # Scored on the test split only.
  for split, ds in raw.items():
    if len(ds) == 0:
      raise DataError(f"{where}: split '{split}' is empty.")
  target = check_labels(raw, where)
  raw_guide, raw_eval = split_guidance(raw.val, cfg.split_seed, cfg.guide_val_fraction)
  normalizer = make_normalizer(cfg.normalizer).fit(raw.train)
  norm = lambda ds: normalize_dataset(ds, normalizer)  # noqa: E731
  counts = raw.train.class_counts()
  info = {
      "name": raw.train.name,
      "label": cfg.simulator.label if cfg.source == "simulator" else "y",
      "n_train": len(raw.train), "n_val": len(raw.val), "n_test": len(raw.test),
      "n_guide_val": len(raw_guide), "n_eval_val": len(raw_eval),
      "T": raw.train.T, "C": raw.train.C,
      "channel_names": list(raw.train.channel_names), "class_names": list(raw.train.class_names),
      # Fraction of the target class: class 1 of a binary task, the rarest class otherwise.
      "prevalence_train": float(counts[target] / counts.sum()),
      "target_class": target,
      "class_counts_train": counts.tolist(),
      "observed_fraction_train": raw.train.observed_fraction(),
      "normalizer": cfg.normalizer,
  }
  if oracle_scores is not None:
    info["oracle_auroc"] = float(skm.roc_auc_score(raw.test.y, oracle_scores))
    info["oracle_auprc"] = float(skm.average_precision_score(raw.test.y, oracle_scores))
  return PreparedData(raw=raw, train=norm(raw.train), val=norm(raw.val), test=norm(raw.test),
                      guide_val=norm(raw_guide), eval_val=norm(raw_eval), normalizer=normalizer,
                      info=info)
