"""The selected ICU stays, their labels and the record of every selection rule applied.

The source modules (mimic3, mimic4, eicu) build a `Cohort` from their stay tables with the helpers
here, one rule at a time through `Flow`, so the summary can say how many stays each rule removed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tardiff_jax.data.dataset import DataError

LONG_STAY_DAYS = 3.0  # The second label: ICU length of stay longer than 3 days.
ADULT_YEARS = 18.0  # Adults: age at ICU admission >= 18 years.


@dataclasses.dataclass(frozen=True)
class Cohort:
  """N selected stays, sorted by stay id.

  stay_id: int64[N]. start: int64[N] ICU admission in the source's clock (seconds since 1970 for
  MIMIC, 0 for eICU whose times are offsets from unit admission). length: int64[N] ICU length of
  stay in seconds. y_mortality, y_long_stay: int32[N] labels (1 = died in hospital / ICU stay
  > 3 days). flow: (rule, stays left) in the order applied.
  """
  stay_id: np.ndarray
  start: np.ndarray
  length: np.ndarray
  y_mortality: np.ndarray
  y_long_stay: np.ndarray
  flow: tuple[tuple[str, int], ...] = ()

  def __post_init__(self):
    n = len(self.stay_id)
    for f in ("start", "length", "y_mortality", "y_long_stay"):
      if len(getattr(self, f)) != n:
        raise ValueError(f"Cohort.{f} has {len(getattr(self, f))} entries for {n} stays.")
    if n > 1 and not (np.diff(self.stay_id) > 0).all():
      raise ValueError("Cohort.stay_id must be sorted and unique.")

  def __len__(self) -> int:
    return len(self.stay_id)

  def subset(self, keep: np.ndarray, rule: str) -> Cohort:
    """The stays where `keep` is True, with `rule` appended to the flow."""
    keep = np.asarray(keep, bool)
    return Cohort(self.stay_id[keep], self.start[keep], self.length[keep], self.y_mortality[keep],
                  self.y_long_stay[keep], self.flow + ((rule, int(keep.sum())),))


class Flow:
  """Applies selection rules to a table of stays (a dict of equal-length arrays), recording each."""

  def __init__(self, stays: dict[str, np.ndarray], first_rule: str):
    self.stays = stays
    self.steps: list[tuple[str, int]] = [(first_rule, self.count)]

  @property
  def count(self) -> int:
    return len(next(iter(self.stays.values())))

  def keep(self, mask: np.ndarray, rule: str) -> None:
    mask = np.asarray(mask, bool)
    self.stays = {k: v[mask] for k, v in self.stays.items()}
    self.steps.append((rule, self.count))

  def cohort(self, stay_id, start, length, y_mortality, y_long_stay, source: str) -> Cohort:
    """Builds the Cohort (sorted by stay id); stops if no stay is left."""
    if self.count == 0:
      rules = "; ".join(f"{r}: {n:,}" for r, n in self.steps)
      raise DataError(f"{source}: no ICU stay is left after the cohort rules ({rules}).")
    order = np.argsort(stay_id, kind="stable")
    stay_id = np.asarray(stay_id, np.int64)[order]
    if (np.diff(stay_id) == 0).any():
      dup = int(stay_id[1:][np.diff(stay_id) == 0][0])
      raise DataError(f"{source}: stay id {dup} appears more than once in the stay table.")
    return Cohort(stay_id, np.asarray(start, np.int64)[order], np.asarray(length, np.int64)[order],
                  np.asarray(y_mortality, np.int32)[order],
                  np.asarray(y_long_stay, np.int32)[order], tuple(self.steps))


def first_per_group(group: np.ndarray, *order_keys: np.ndarray) -> np.ndarray:
  """bool mask: the first row of each group by `order_keys` (lexicographic, first key first)."""
  group = np.asarray(group)
  if group.size == 0:
    return np.zeros(0, bool)
  order = np.lexsort(tuple(np.asarray(k) for k in reversed(order_keys)) + (group,))
  g = group[order]
  first = np.ones(g.size, bool)
  first[1:] = g[1:] != g[:-1]
  out = np.zeros(group.size, bool)
  out[order[first]] = True
  return out


def lookup(query: np.ndarray, keys: np.ndarray, values: np.ndarray, missing) -> np.ndarray:
  """values[keys == q] for each q in `query` (first match), `missing` where a key is absent."""
  keys = np.asarray(keys)
  order = np.argsort(keys, kind="stable")
  sorted_keys = keys[order]
  pos = np.searchsorted(sorted_keys, query)
  pos_c = np.minimum(pos, max(sorted_keys.size - 1, 0))
  found = (pos < sorted_keys.size) & (sorted_keys[pos_c] == query) if keys.size else \
      np.zeros(np.shape(query), bool)
  values = np.asarray(values)
  out = np.full(np.shape(query), missing, dtype=np.result_type(values, np.asarray(missing)))
  if keys.size:
    out[found] = values[order[pos_c[found]]]
  return out


def years_between(earlier_s: np.ndarray, later_s: np.ndarray) -> np.ndarray:
  """Years from `earlier_s` to `later_s` (seconds since 1970), in 365.2425-day years."""
  return (np.asarray(later_s, np.float64) - np.asarray(earlier_s, np.float64)) / (365.2425 * 86400)


def calendar_year(seconds: np.ndarray) -> np.ndarray:
  """int64 calendar year of timestamps given as seconds since 1970."""
  return np.asarray(seconds, "datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
