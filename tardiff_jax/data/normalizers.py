"""Per-channel normalisers, fitted on the training split's observed values only.

- `zscore`: (x - mean) / std.
- `minmax`: affine map of [min, max] onto [-1, 1].
- `pit`: the reference code's centered probability integral transform: the per-channel
  empirical CDF (stored as `num_quantiles` quantile knots) mapped to [-1, 1]; inverted by linear
  interpolation of the same knots. Values outside the training range clip to +/-1.

Missing values (mask False or NaN) are filled with 0 in normalised space: the train mean
(zscore), the midpoint of the train range (minmax), the train median (pit). `inverse` maps
arrays in normalised space back to original units (float32).
"""

from __future__ import annotations

import numpy as np

from tardiff_jax.data.dataset import DataError, Dataset

KINDS = ("zscore", "minmax", "pit")


def interpolate_missing(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Fills unobserved entries of `x[..., T, C]` by linear interpolation along time.

  Each series (one stay, one channel) is interpolated between its nearest observed neighbours;
  before its first / after its last observation it holds that observation; a series with no
  observation becomes 0 (the normalised fill). Observed entries are returned unchanged.
  """
  x, mask = np.asarray(x), np.asarray(mask, bool)
  if x.ndim < 2 or mask.shape != x.shape:
    raise ValueError(f"x [..., T, C] and mask must have one shape, got {x.shape}, {mask.shape}.")
  mask = mask & np.isfinite(x)
  t = x.shape[-2]
  idx = np.arange(t).reshape((t, 1))
  prev = np.maximum.accumulate(np.where(mask, idx, -1), axis=-2)
  nxt = np.flip(np.minimum.accumulate(np.flip(np.where(mask, idx, t), axis=-2), axis=-2), axis=-2)
  xv = np.where(mask, x, 0.0).astype(np.float64)
  xp = np.take_along_axis(xv, np.clip(prev, 0, t - 1), axis=-2)
  xn = np.take_along_axis(xv, np.clip(nxt, 0, t - 1), axis=-2)
  has_p, has_n = prev >= 0, nxt < t
  w = (idx - prev) / np.maximum(nxt - prev, 1)
  filled = np.where(has_p & has_n, xp + (xn - xp) * w,
                    np.where(has_p, xp, np.where(has_n, xn, 0.0)))
  return np.where(mask, x, filled).astype(x.dtype)


class Normalizer:
  """Base class: `fit(ds) -> self`, `transform(x, mask=None)`, `inverse(x)`, `to_dict()`."""
  kind = ""

  def __init__(self):
    self.channel_names: tuple[str, ...] | None = None

  @property
  def fitted(self) -> bool:
    return self.channel_names is not None

  def fit(self, ds: Dataset) -> Normalizer:
    """Fits per-channel statistics on the observed values of `ds` (the training split)."""
    self.channel_names = ds.channel_names
    values = []
    for c in range(ds.C):
      v = ds.x[..., c][ds.mask[..., c]].astype(np.float64)
      if v.size == 0:
        raise DataError(f"{ds.name}: channel {ds.channel_names[c]!r} has no observed values to "
                        "fit the normaliser on.")
      values.append(v)
    self._fit(values)
    return self

  def transform(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float32[..., C] in normalised space; missing (mask False / NaN) entries filled with 0."""
    self._check(x)
    x = np.asarray(x, dtype=np.float64)
    observed = np.isfinite(x) if mask is None else (np.asarray(mask, bool) & np.isfinite(x))
    z = self._forward(np.where(observed, x, 0.0))
    return np.where(observed, z, 0.0).astype(np.float32)

  def inverse(self, z: np.ndarray) -> np.ndarray:
    """float32[..., C] in original units from normalised values."""
    self._check(z)
    return self._backward(np.asarray(z, dtype=np.float64)).astype(np.float32)

  def to_dict(self) -> dict:
    """JSON-safe state (saved with a run); `normalizer_from_dict` restores it."""
    if not self.fitted:
      raise ValueError(f"{self.kind} normaliser is not fitted.")
    return {"kind": self.kind, "channel_names": list(self.channel_names), **self._state()}

  def _check(self, x) -> None:
    if not self.fitted:
      raise ValueError(f"{self.kind} normaliser is not fitted; call fit(train) first.")
    if np.shape(x)[-1] != len(self.channel_names):
      raise DataError(f"normaliser fitted on {len(self.channel_names)} channels, got an array "
                      f"with {np.shape(x)[-1]} channels (shape {np.shape(x)}).")

  # Subclasses implement these on float64 arrays with channels last.
  def _fit(self, values: list[np.ndarray]) -> None:
    raise NotImplementedError

  def _forward(self, x: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def _backward(self, z: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def _state(self) -> dict:
    raise NotImplementedError

  def _load(self, d: dict) -> None:
    raise NotImplementedError


class ZScore(Normalizer):
  """(x - mean) / std per channel; a constant channel gets std 1."""
  kind = "zscore"

  def _fit(self, values):
    self.mean = np.array([v.mean() for v in values])
    std = np.array([v.std() for v in values])
    self.std = np.where(std > 1e-8, std, 1.0)

  def _forward(self, x):
    return (x - self.mean) / self.std

  def _backward(self, z):
    return z * self.std + self.mean

  def _state(self):
    return {"mean": self.mean.tolist(), "std": self.std.tolist()}

  def _load(self, d):
    self.mean, self.std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)


class MinMax(Normalizer):
  """Maps the train [min, max] of each channel onto [-1, 1] (not clipped outside)."""
  kind = "minmax"

  def _fit(self, values):
    self.lo = np.array([v.min() for v in values])
    hi = np.array([v.max() for v in values])
    self.scale = np.where(hi - self.lo > 1e-8, hi - self.lo, 1.0)

  def _forward(self, x):
    return 2.0 * (x - self.lo) / self.scale - 1.0

  def _backward(self, z):
    return (z + 1.0) / 2.0 * self.scale + self.lo

  def _state(self):
    return {"lo": self.lo.tolist(), "scale": self.scale.tolist()}

  def _load(self, d):
    self.lo, self.scale = np.asarray(d["lo"], np.float64), np.asarray(d["scale"], np.float64)


class CenteredPIT(Normalizer):
  """Centered PIT: u = F_c(x) from per-channel quantile knots, z = 2u - 1 in [-1, 1].

  Tied knots (discrete-valued channels) are merged with their mean level, so both directions
  use the same strictly increasing piecewise-linear map (exact inverse inside the train range).
  """
  kind = "pit"

  def __init__(self, num_quantiles: int = 1001):
    super().__init__()
    if num_quantiles < 2:
      raise ValueError(f"num_quantiles={num_quantiles} must be >= 2.")
    self.num_quantiles = int(num_quantiles)

  def _fit(self, values):
    levels = np.linspace(0.0, 1.0, self.num_quantiles)
    self.knots, self.levels = [], []
    for v in values:
      q = np.quantile(v, levels)
      uq, inv = np.unique(q, return_inverse=True)
      lv = np.bincount(inv, weights=levels) / np.bincount(inv)
      if uq.size == 1:  # Constant channel: map it to 0.
        uq, lv = np.array([uq[0] - 0.5, uq[0] + 0.5]), np.array([0.0, 1.0])
      self.knots.append(uq)
      self.levels.append(lv)

  def _forward(self, x):
    out = np.empty_like(x)
    for c, (k, lv) in enumerate(zip(self.knots, self.levels)):
      out[..., c] = 2.0 * np.interp(x[..., c], k, lv) - 1.0
    return out

  def _backward(self, z):
    out = np.empty_like(z)
    for c, (k, lv) in enumerate(zip(self.knots, self.levels)):
      out[..., c] = np.interp((z[..., c] + 1.0) / 2.0, lv, k)
    return out

  def _state(self):
    return {"num_quantiles": self.num_quantiles, "knots": [k.tolist() for k in self.knots],
            "levels": [lv.tolist() for lv in self.levels]}

  def _load(self, d):
    self.num_quantiles = int(d["num_quantiles"])
    self.knots = [np.asarray(k, np.float64) for k in d["knots"]]
    self.levels = [np.asarray(lv, np.float64) for lv in d["levels"]]


_CLASSES = {"zscore": ZScore, "minmax": MinMax, "pit": CenteredPIT}


def make_normalizer(kind: str, **kwargs) -> Normalizer:
  """An unfitted normaliser of `kind` in {"zscore", "minmax", "pit"}."""
  if kind not in _CLASSES:
    raise ValueError(f"Unknown normalizer {kind!r}; expected one of {KINDS}.")
  return _CLASSES[kind](**kwargs)


def normalizer_from_dict(d: dict) -> Normalizer:
  """Restores a fitted normaliser from `Normalizer.to_dict()` output."""
  kind = d.get("kind")
  if kind not in _CLASSES:
    raise ValueError(f"Unknown normalizer kind {kind!r} in saved state; expected one of {KINDS}.")
  n = _CLASSES[kind]()
  n._load(d)  # noqa: SLF001
  n.channel_names = tuple(d["channel_names"])
  return n


def normalize_dataset(ds: Dataset, normalizer: Normalizer) -> Dataset:
  """Model-ready copy of `ds`: x normalised float32 with missing entries 0, mask kept."""
  return Dataset(x=normalizer.transform(ds.x, ds.mask), y=ds.y, mask=ds.mask,
                 channel_names=ds.channel_names, class_names=ds.class_names, name=ds.name)
