"""Non-diffusion baselines: random oversampling and simple augmentation of real samples.

Both take the real training data `x: float[N, T, C]`, `y: int[N]` and a requested number of
samples per class, and return `(x_syn: float32[n, T, C], y_syn: int32[n])` with exactly those
per-class counts, grouped by class in ascending class order (downstream training shuffles).

Units: both work in original or normalised units. `random_oversample` copies rows. `augment`
standardises each channel with the mean/std of the supplied real data, perturbs, and maps back,
so it is affine-equivariant per channel (augmenting `a * x + b`, a > 0, gives
`a * augment(x) + b` for the same seed); `jitter` and the warp strengths are therefore in units
of each channel's std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.interpolate import CubicSpline

from tardiff_jax.data.dataset import check_series

CountsLike = Mapping[int, int] | Sequence[int]


def _counts(n_per_class: CountsLike) -> dict[int, int]:
  """`{class: count}` from a mapping or a sequence indexed by class; validates counts."""
  if isinstance(n_per_class, Mapping):
    counts = {int(k): int(v) for k, v in n_per_class.items()}
  else:
    counts = {i: int(v) for i, v in enumerate(n_per_class)}
  for k, v in counts.items():
    if v < 0:
      raise ValueError(f"n_per_class[{k}] = {v}: counts must be >= 0.")
  if sum(counts.values()) == 0:
    raise ValueError("n_per_class requests no samples at all.")
  return dict(sorted(counts.items()))


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return check_series(x, y, what="real x", allow_nan=True)


def _class_indices(y: np.ndarray, k: int, n: int) -> np.ndarray:
  idx = np.flatnonzero(y == k)
  if n > 0 and idx.size == 0:
    raise ValueError(f"Requested {n} samples of class {k}, but the real data has none.")
  return idx


def random_oversample(x: np.ndarray, y: np.ndarray, n_per_class: CountsLike,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws real samples of each requested class with replacement.

  Args:
    x: float[N, T, C] real samples (any units; NaN passes through unchanged).
    y: int[N] labels.
    n_per_class: `{class: count}` or a sequence of counts indexed by class.
    seed: numpy seed.
  Returns:
    (x_syn float32[n, T, C], y_syn int32[n]), n = sum of counts, grouped by class.
  """
  x, y = _check_xy(x, y)
  counts = _counts(n_per_class)
  rng = np.random.default_rng(seed)
  xs, ys = [], []
  for k, n in counts.items():
    idx = _class_indices(y, k, n)
    if n == 0:
      continue
    pick = rng.choice(idx, size=n, replace=True)
    xs.append(x[pick])
    ys.append(np.full(n, k, np.int32))
  return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _smooth_curves(rng: np.random.Generator, n: int, t: int, c: int, sigma: float,
                   knots: int) -> np.ndarray:
  """Smooth random curves around 1: cubic spline through `knots` N(1, sigma) values. [n, T, c]."""
  grid = np.linspace(0.0, t - 1.0, knots)
  values = rng.normal(1.0, sigma, size=(n, knots, c))
  return CubicSpline(grid, values, axis=1)(np.arange(t, dtype=np.float64))


def _time_warp(z: np.ndarray, rng: np.random.Generator, sigma: float, knots: int) -> np.ndarray:
  """Monotone resampling: local speed = smooth curve (clipped > 0), positions = its cumsum.

  One warp per sample, shared by its channels (keeps cross-channel timing). z: [n, T, C].
  """
  n, t, _ = z.shape
  if t < 2 or sigma == 0.0:
    return z
  speed = np.clip(_smooth_curves(rng, n, t, 1, sigma, knots)[..., 0], 0.1, None)  # [n, T]
  pos = np.concatenate([np.zeros((n, 1)), np.cumsum(speed[:, 1:], axis=1)], axis=1)
  pos = pos / pos[:, -1:] * (t - 1.0)  # monotone map of [0, T-1] onto itself, ends fixed
  i0 = np.clip(np.floor(pos).astype(np.int64), 0, t - 2)
  frac = (pos - i0)[..., None]
  a = np.take_along_axis(z, i0[..., None], axis=1)
  b = np.take_along_axis(z, i0[..., None] + 1, axis=1)
  return a * (1.0 - frac) + b * frac


def augment(x: np.ndarray, y: np.ndarray, n_per_class: CountsLike, seed: int,
            jitter: float = 0.03, magnitude_warp: float = 0.1, time_warp: float = 0.1,
            mask: np.ndarray | None = None, knots: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Jitter + magnitude warping + time warping of real samples of each requested class.

  For each requested sample: draw a real sample of that class (with replacement), standardise
  per channel (mean/std of all supplied real data), time-warp it by monotone resampling, multiply
  by a smooth random curve N(1, magnitude_warp) per channel, add N(0, jitter^2) noise, and undo
  the standardisation. Missing values (mask False, or NaN when no mask) are filled with the
  channel mean first, so the output is complete, like the diffusion samples.

  Args:
    x: float[N, T, C] real samples; y: int[N] labels.
    n_per_class: `{class: count}` or a sequence of counts indexed by class.
    seed: numpy seed.
    jitter, magnitude_warp, time_warp: strengths in channel-std units (>= 0).
    mask: optional bool[N, T, C], True = observed.
    knots: spline knots of the warping curves (>= 2).
  Returns:
    (x_syn float32[n, T, C], y_syn int32[n]), grouped by class.
  """
  x, y = _check_xy(x, y)
  for name, v in (("jitter", jitter), ("magnitude_warp", magnitude_warp),
                  ("time_warp", time_warp)):
    if not np.isfinite(v) or v < 0:
      raise ValueError(f"{name} must be a finite number >= 0; got {v}.")
  if knots < 2:
    raise ValueError(f"knots must be >= 2; got {knots}.")
  counts = _counts(n_per_class)
  x = x.astype(np.float64)
  observed = np.isfinite(x)
  if mask is not None:
    mask = np.asarray(mask, bool)
    if mask.shape != x.shape:
      raise ValueError(f"mask shape {mask.shape} differs from x shape {x.shape}.")
    observed &= mask
  xo = np.where(observed, x, np.nan)
  with np.errstate(invalid="ignore"):
    mu = np.nanmean(xo, axis=(0, 1))
    sd = np.nanstd(xo, axis=(0, 1))
  if not np.all(np.isfinite(mu)):
    raise ValueError("augment: a channel has no observed value.")
  sd = np.where(sd > 0, sd, 1.0)
  z = np.where(observed, (x - mu) / sd, 0.0)

  rng = np.random.default_rng(seed)
  _, t, c = x.shape
  xs, ys = [], []
  for k, n in counts.items():
    idx = _class_indices(y, k, n)
    if n == 0:
      continue
    zk = z[rng.choice(idx, size=n, replace=True)]
    zk = _time_warp(zk, rng, time_warp, knots)
    if magnitude_warp > 0:
      zk = zk * _smooth_curves(rng, n, t, c, magnitude_warp, knots)
    if jitter > 0:
      zk = zk + rng.normal(0.0, jitter, size=zk.shape)
    xs.append(zk * sd + mu)
    ys.append(np.full(n, k, np.int32))
  return np.concatenate(xs).astype(np.float32), np.concatenate(ys)
