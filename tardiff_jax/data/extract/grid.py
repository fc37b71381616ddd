"""A fixed time grid from ICU admission: per-cell means of the observations, padding, mask.

Cell t of a stay covers [t * step, (t + 1) * step) seconds after ICU admission. An observation
counts when it falls in [0, min(steps * step, stay length)): before admission or after ICU
discharge it belongs to no cell of this stay. A cell's value is the mean of its observations; a
cell with none is NaN with mask False, and so is every cell that starts at or after discharge
(a stay shorter than the window is padded). Filling the gaps is left to the data layer
(`tardiff_jax.data.normalizers`), which knows the training split.

Memory: one float32 sum and one uint16 count per cell, 6 bytes x stays x steps x channels
(MIMIC-III, 24 x 7 cells: 1 MB per 1,000 stays; eICU, 288 x 3: 5.2 MB per 1,000 stays). A
count overflows only past 65,535 observations in one cell (one every 55 ms for an hour).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
  """`steps` cells of `step_seconds` each, starting at ICU admission."""
  steps: int
  step_seconds: int

  @property
  def window_seconds(self) -> int:
    return self.steps * self.step_seconds

  @property
  def step_minutes(self) -> float:
    return self.step_seconds / 60.0


HOURLY_24H = Grid(steps=24, step_seconds=3600)  # MIMIC-III / MIMIC-IV: 24 hourly means.
FIVE_MIN_24H = Grid(steps=288, step_seconds=300)  # eICU: 288 five-minute means.


class GridAccumulator:
  """Running per-cell sums and counts for `num_stays` stays; bounded by the cohort, not the rows."""

  def __init__(self, num_stays: int, grid: Grid, num_channels: int, stay_seconds: np.ndarray):
    """`stay_seconds[i]`: ICU length of stay i in seconds (observations at or after it drop)."""
    self.grid, self.num_channels = grid, int(num_channels)
    self.num_stays = int(num_stays)
    stay_seconds = np.asarray(stay_seconds, np.int64)
    if stay_seconds.shape != (self.num_stays,):
      raise ValueError(f"stay_seconds has shape {stay_seconds.shape}, expected ({num_stays},).")
    self.limit = np.minimum(stay_seconds, grid.window_seconds)
    shape = (self.num_stays, grid.steps, self.num_channels)
    self.sums = np.zeros(shape, np.float32)
    self.counts = np.zeros(shape, np.uint16)
    self.added = 0  # Observations accumulated.

  def add(self, stay: np.ndarray, seconds: np.ndarray, channel: np.ndarray,
          value: np.ndarray) -> int:
    """Adds observations (stay index, seconds since admission, channel index, value) that fall
    inside their stay's window; returns how many were inside."""
    stay = np.asarray(stay, np.int64)
    seconds = np.asarray(seconds, np.int64)
    inside = (seconds >= 0) & (seconds < self.limit[stay])
    if not inside.all():
      stay, seconds = stay[inside], seconds[inside]
      channel, value = np.asarray(channel)[inside], np.asarray(value)[inside]
    step = seconds // self.grid.step_seconds
    flat = (stay * self.grid.steps + step) * self.num_channels + np.asarray(channel, np.int64)
    np.add.at(self.sums.reshape(-1), flat, np.asarray(value, np.float32))
    np.add.at(self.counts.reshape(-1), flat, np.uint16(1))
    self.added += int(flat.size)
    return int(flat.size)

  def steps_in_stay(self) -> np.ndarray:
    """int32[N]: cells that start before ICU discharge (the rest is padding)."""
    return (-(-self.limit // self.grid.step_seconds)).astype(np.int32)

  def finish(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(x float32[N, T, C] cell means with NaN where unobserved, mask bool[N, T, C]).

    Reuses the sum buffer for x and frees the counts: the accumulator is spent afterwards. Works
    in chunks of stays so that no full-size temporary is made (an eICU cohort's x is ~0.5 GB).
    """
    mask = self.counts > 0
    x = self.sums
    for i in range(0, self.num_stays, chunk):
      xs, ms = x[i:i + chunk], mask[i:i + chunk]
      np.divide(xs, self.counts[i:i + chunk], out=xs, where=ms)
      np.copyto(xs, np.float32(np.nan), where=~ms)
    self.counts = self.sums = None
    return x, mask


def compact(a: np.ndarray, keep: np.ndarray, chunk: int = 4096) -> np.ndarray:
  """`a[keep]` without a second full-size array: moves the kept rows to the front, in order, and
  returns that prefix (a view)."""
  idx = np.flatnonzero(keep)
  for i in range(0, idx.size, chunk):
    part = idx[i:i + chunk]
    a[i:i + part.size] = a[part]  # Sources idx[j] >= j are never overwritten before use.
  return a[:idx.size]
