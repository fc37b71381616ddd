"""The data contract: a small immutable container for labelled multichannel series.

`x: float32[N, T, C]` (time-major per sample), `y: int32[N]`, `mask: bool[N, T, C]`
(True = observed). Without a mask, NaN in `x` marks a missing value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class DataError(ValueError):
  """Bad input data: the message names the file (when there is one), the array and the problem."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Labelled series in one split.

  Attributes:
    x: float32[N, T, C] values; entries where `mask` is False carry no information (often NaN in
      raw data, 0 in model-ready data).
    y: int32[N] class labels in [0, num_classes).
    mask: bool[N, T, C], True where observed. If None, derived as `isfinite(x)`.
    channel_names: C names (default "ch0", "ch1", ...).
    class_names: K names (default "0", "1", ... up to max(y)).
    name: a short name for reports.
  """
  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray | None = None
  channel_names: tuple[str, ...] | None = None
  class_names: tuple[str, ...] | None = None
  name: str = "dataset"

  def __post_init__(self):
    x = np.asarray(self.x)
    if x.dtype.kind not in "fiub":
      raise DataError(f"{self.name}: array 'x' has non-numeric dtype {x.dtype}.")
    if x.ndim != 3:
      raise DataError(f"{self.name}: array 'x' must have rank 3 [N, T, C]; got shape {x.shape}.")
    x = x.astype(np.float32, copy=False)
    if np.isinf(x).any():
      raise DataError(f"{self.name}: array 'x' contains +/-inf values (use NaN or the mask for "
                      "missing values).")
    y = _as_labels(self.y, self.name)
    if y.shape[0] != x.shape[0]:
      raise DataError(f"{self.name}: 'x' has {x.shape[0]} samples but 'y' has {y.shape[0]}.")
    finite = np.isfinite(x)
    if self.mask is None:
      mask = finite
    else:
      mask = np.asarray(self.mask)
      if mask.shape != x.shape:
        raise DataError(f"{self.name}: 'mask' shape {mask.shape} differs from 'x' shape {x.shape}.")
      if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iuf" or not np.isin(mask, (0, 1)).all():
          raise DataError(f"{self.name}: 'mask' must be boolean (or 0/1); got dtype {mask.dtype}.")
        mask = mask.astype(bool)
      mask = mask & finite  # A NaN is never an observation.
    channel_names = self.channel_names
    if channel_names is None:
      channel_names = tuple(f"ch{i}" for i in range(x.shape[2]))
    channel_names = tuple(str(c) for c in channel_names)
    if len(channel_names) != x.shape[2]:
      raise DataError(f"{self.name}: {len(channel_names)} channel names for C={x.shape[2]} "
                      "channels.")
    class_names = self.class_names
    if class_names is None:
      k = int(y.max()) + 1 if y.size else 2
      class_names = tuple(str(i) for i in range(max(k, 2)))
    class_names = tuple(str(c) for c in class_names)
    if y.size and int(y.max()) >= len(class_names):
      raise DataError(f"{self.name}: label {int(y.max())} out of range for {len(class_names)} "
                      f"classes {class_names}.")
    object.__setattr__(self, "x", x)
    object.__setattr__(self, "y", y)
    object.__setattr__(self, "mask", mask)
    object.__setattr__(self, "channel_names", channel_names)
    object.__setattr__(self, "class_names", class_names)
    object.__setattr__(self, "name", str(self.name))

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def T(self) -> int:  # noqa: N802 (the paper's symbol)
    return int(self.x.shape[1])

  @property
  def C(self) -> int:  # noqa: N802
    return int(self.x.shape[2])

  def __len__(self) -> int:
    return int(self.x.shape[0])

  def subset(self, idx: np.ndarray | Sequence[int]) -> Dataset:
    """The samples at integer indices (or a boolean selector) `idx`, same names."""
    idx = np.asarray(idx)
    return dataclasses.replace(self, x=self.x[idx], y=self.y[idx], mask=self.mask[idx])

  def class_counts(self) -> np.ndarray:
    """int64[K]: number of samples per class."""
    return np.bincount(self.y, minlength=self.num_classes)

  def observed_fraction(self) -> float:
    return float(self.mask.mean()) if self.mask.size else float("nan")


@dataclasses.dataclass(frozen=True)
class Splits:
  """Train / validation (= guidance) / test Datasets with the same T, C and class names."""
  train: Dataset
  val: Dataset
  test: Dataset

  def __post_init__(self):
    ref = self.train
    for split in ("val", "test"):
      ds = getattr(self, split)
      if (ds.T, ds.C) != (ref.T, ref.C):
        raise DataError(f"split '{split}' has T={ds.T}, C={ds.C} but 'train' has T={ref.T}, "
                        f"C={ref.C}.")

  def items(self):
    return (("train", self.train), ("val", self.val), ("test", self.test))


def _as_labels(y, name: str) -> np.ndarray:
  """Validates labels: rank 1 (or [N, 1]), no NaN, integer-valued, non-negative -> int32[N]."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise DataError(f"{name}: array 'y' must have rank 1 [N]; got shape {y.shape}.")
  if y.dtype == np.bool_:
    return y.astype(np.int32)
  if y.dtype.kind == "f":
    if np.isnan(y).any():
      raise DataError(f"{name}: array 'y' contains {int(np.isnan(y).sum())} NaN labels.")
    if not np.isfinite(y).all() or (y != np.round(y)).any():
      bad = y[~np.isfinite(y) | (y != np.round(y))][:3]
      raise DataError(f"{name}: array 'y' has non-integer labels, e.g. {bad.tolist()}.")
  elif y.dtype.kind not in "iu":
    raise DataError(f"{name}: array 'y' must hold integer class labels; got dtype {y.dtype}.")
  if y.size and y.min() < 0:
    raise DataError(f"{name}: array 'y' has negative labels (min {y.min()}); expected 0..K-1.")
  return y.astype(np.int32)


def check_series(x, y=None, *, what: str = "x", allow_nan: bool = False, min_n: int = 1,
                 num_classes: int | None = None):
  """The one validator of model-ready series: `x` float[N, T, C] with N >= `min_n` (finite
  unless `allow_nan`), and optional labels `y` int[N] in [0, num_classes) (non-negative when
  num_classes is None). Returns float32 x, or (x, int32 y) when `y` is given. Raises DataError
  naming `what` and the problem."""
  x = np.asarray(x)
  if x.dtype.kind not in "fiub":
    raise DataError(f"{what} must be numeric [N, T, C]; got dtype {x.dtype}.")
  if x.ndim != 3:
    raise DataError(f"{what} must have shape [N, T, C]; got {x.shape}.")
  if x.shape[0] < min_n:
    raise DataError(f"{what} needs at least {min_n} series; got {x.shape[0]}.")
  x = x.astype(np.float32, copy=False)
  bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
  if bad.any():
    raise DataError(f"{what} has {int(bad.sum())} non-finite values"
                    + ("" if allow_nan else " (fill missing values first; the data layer "
                       "fills them with 0 after normalisation)") + ".")
  if y is None:
    return x
  y = np.asarray(y)
  if y.shape != (x.shape[0],):
    raise DataError(f"labels of {what} must have shape [{x.shape[0]}]; got {y.shape}.")
  integral = y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(np.isfinite(y))
                                        and np.all(y == np.round(y)))
  if y.size and (not integral or y.min() < 0):
    raise DataError(f"labels of {what} must be non-negative integers; got {y.dtype} values "
                    f"{np.unique(y)[:5].tolist()}.")
  if num_classes is not None and y.size and y.max() >= num_classes:
    raise DataError(f"labels of {what} must be in [0, {num_classes}); got max {y.max()}.")
  return x, y.astype(np.int32)
