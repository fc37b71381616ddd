"""The data stage: load (simulator or file), split, fit the normaliser on train, normalise."""

from __future__ import annotations

import dataclasses
from typing import Any

from tardiff_jax.data.dataset import DataError, Dataset, Splits
from tardiff_jax.data.loaders import load_dataset
from tardiff_jax.data.normalizers import KINDS, Normalizer, make_normalizer, normalize_dataset
from tardiff_jax.data.simulator import auroc, average_precision, simulate_icu
from tardiff_jax.data.splits import split_guidance, stratified_split_indices

SOURCES = ("simulator", "file")
LABELS = ("mortality", "long_stay")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Typed view of the `data` config section (see configs/default.py for each field)."""
  source: str = "simulator"
  path: str = ""
  allow_pickle: bool = False
  num_stays: int = 4000
  sim_seed: int = 0
  label: str = "mortality"
  missing_rate: float = 0.15
  prevalence: float = 0.08
  split_seed: int = 0
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  guide_val_fraction: float = 0.5
  normalizer: str = "zscore"

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data.source={self.source!r}; expected one of {SOURCES}.")
    if self.source == "file" and not self.path:
      raise ValueError("data.source='file' needs data.path (a .npz or, opt-in, a pickle).")
    if self.label not in LABELS:
      raise ValueError(f"data.label={self.label!r}; expected one of {LABELS}.")
    if self.normalizer not in KINDS:
      raise ValueError(f"data.normalizer={self.normalizer!r}; expected one of {KINDS}.")
    if self.source == "simulator" and self.num_stays < 30:
      raise ValueError(f"data.num_stays={self.num_stays} is too small to split (need >= 30).")
    if not 0.0 <= self.missing_rate <= 0.9:
      raise ValueError(f"data.missing_rate={self.missing_rate} must be in [0, 0.9].")
    if not 0.0 < self.prevalence < 1.0:
      raise ValueError(f"data.prevalence={self.prevalence} must be in (0, 1).")
    if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1):
      raise ValueError(f"data.val_fraction={self.val_fraction} and data.test_fraction="
                       f"{self.test_fraction} must be in (0, 1) with a sum below 1.")
    if not 0.0 < self.guide_val_fraction < 1.0:
      raise ValueError(f"data.guide_val_fraction={self.guide_val_fraction} must be in (0, 1).")

  @classmethod
  def from_config(cls, section: Any) -> DataConfig:
    """Builds from a config section (ConfigDict or mapping); unknown keys are an error."""
    d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown data config fields {unknown}; known: {sorted(names)}.")
    return cls(**d)


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
  """Model-ready splits (x normalised float32, missing filled with 0, mask kept) and the raw ones.

  `raw` holds the original-unit Splits; `train/val/test` and `guide_val/eval_val` (the two
  halves of val) are normalised with `normalizer`, fitted on `raw.train` only.
  """
  raw: Splits
  train: Dataset
  val: Dataset
  test: Dataset
  guide_val: Dataset
  eval_val: Dataset
  normalizer: Normalizer
  info: dict


def prepare_data(cfg: DataConfig) -> PreparedData:
  """Loads, splits, fits the normaliser on train and normalises every split."""
  oracle_scores = None
  if cfg.source == "simulator":
    sim = simulate_icu(cfg.num_stays, seed=cfg.sim_seed, missing_rate=cfg.missing_rate,
                       prevalence=cfg.prevalence)
    if cfg.label == "mortality":
      full, oracle_scores = sim.dataset, sim.latent_risk
    else:
      full, oracle_scores = sim.long_stay_dataset(), sim.long_stay_risk
    loaded = full
  else:
    loaded = load_dataset(cfg.path, allow_pickle=cfg.allow_pickle)
  if isinstance(loaded, Splits):
    raw = loaded
  else:
    tr, va, te = stratified_split_indices(loaded.y, cfg.split_seed, cfg.val_fraction,
                                          cfg.test_fraction)
    raw = Splits(train=loaded.subset(tr), val=loaded.subset(va), test=loaded.subset(te))
    if oracle_scores is not None:
      oracle_scores = oracle_scores[te]  # Scored on the test split only.
  for split, ds in raw.items():
    if len(ds) == 0:
      raise DataError(f"{ds.name}: split '{split}' is empty.")
  raw_guide, raw_eval = split_guidance(raw.val, cfg.split_seed, cfg.guide_val_fraction)
  normalizer = make_normalizer(cfg.normalizer).fit(raw.train)
  norm = lambda ds: normalize_dataset(ds, normalizer)  # noqa: E731
  counts = raw.train.class_counts()
  info = {
      "name": raw.train.name, "label": cfg.label if cfg.source == "simulator" else "y",
      "n_train": len(raw.train), "n_val": len(raw.val), "n_test": len(raw.test),
      "n_guide_val": len(raw_guide), "n_eval_val": len(raw_eval),
      "T": raw.train.T, "C": raw.train.C,
      "channel_names": list(raw.train.channel_names), "class_names": list(raw.train.class_names),
      # Binary: fraction of class 1; multi-class: fraction of the rarest class.
      "prevalence_train": float(counts[1] / counts.sum() if counts.size == 2
                                else counts.min() / counts.sum()),
      "class_counts_train": counts.tolist(),
      "observed_fraction_train": raw.train.observed_fraction(),
      "normalizer": cfg.normalizer,
  }
  if oracle_scores is not None:
    info["oracle_auroc"] = auroc(raw.test.y, oracle_scores)
    info["oracle_auprc"] = average_precision(raw.test.y, oracle_scores)
  return PreparedData(raw=raw, train=norm(raw.train), val=norm(raw.val), test=norm(raw.test),
                      guide_val=norm(raw_guide), eval_val=norm(raw_eval), normalizer=normalizer,
                      info=info)
