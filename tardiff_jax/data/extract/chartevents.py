"""Streams a MIMIC CHARTEVENTS table (III or IV) onto the grid of a cohort's stays.

Per block of rows: keep the wanted item ids (a lookup table), drop rows flagged ERROR = 1
(MIMIC-III; MIMIC-IV has no such column) and rows without a stay, a time or a numeric value, keep
the cohort's stays (binary search in the sorted stay ids), apply each item's range filter and unit
conversion (`items.ItemTable`), and add what falls inside the stay's window to the running
per-cell sums. Memory is the block plus the accumulator (`grid.GridAccumulator`), whatever the
table's size.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tardiff_jax.data.extract.cohort import Cohort
from tardiff_jax.data.extract.grid import Grid, GridAccumulator
from tardiff_jax.data.extract.items import ItemTable
from tardiff_jax.data.extract.tables import DEFAULT_BLOCK_BYTES, INT_NULL, Column, TableScan


@dataclasses.dataclass(frozen=True)
class ChartColumns:
  """Names of the CHARTEVENTS columns used (upper case in MIMIC-III, lower case in MIMIC-IV)."""
  stay: str
  item: str
  time: str
  value: str
  error: str | None = None  # MIMIC-III's ERROR flag (optional there: some exports drop it).

  def columns(self) -> list[Column]:
    cols = [Column(self.stay, "int"), Column(self.item, "int"), Column(self.time, "time"),
            Column(self.value, "float")]
    if self.error:
      cols.append(Column(self.error, "int", required=False))
    return cols


@dataclasses.dataclass(frozen=True)
class ScanStats:
  """What a scan read and kept (for the summary)."""
  rows_read: int
  rows_selected: int  # Rows past the first filter: a wanted item id (MIMIC), a cohort stay (eICU).
  rows_out_of_range: int  # Values of cohort stays dropped by the range filters.
  observations: int  # Values that landed in a grid cell.
  seconds: float
  batches: int

  @property
  def rows_per_s(self) -> float:
    return self.rows_read / self.seconds if self.seconds > 0 else float("nan")


def scan_chartevents(path: str, cols: ChartColumns, cohort: Cohort, items: ItemTable, grid: Grid,
                     block_bytes: int = DEFAULT_BLOCK_BYTES, progress: bool = False,
                     ) -> tuple[GridAccumulator, ScanStats]:
  """Accumulates the cohort's charted vitals from `path` onto `grid` (see module docstring)."""
  acc = GridAccumulator(len(cohort), grid, len(items.channels), cohort.length)
  scan = TableScan(path, cols.columns(), block_bytes=block_bytes, progress=progress)
  wanted = out_of_range = 0
  stay_ids = cohort.stay_id
  for b in scan:
    channel = items.channel_of(b[cols.item])
    keep = channel >= 0
    if cols.error:
      keep &= b[cols.error] != 1
    keep &= (b[cols.stay] != INT_NULL) & (b[cols.time] != INT_NULL)
    keep &= np.isfinite(b[cols.value])
    idx = np.flatnonzero(keep)
    wanted += int(np.count_nonzero(channel >= 0))
    if idx.size == 0:
      continue
    stay = b[cols.stay][idx]
    pos = np.minimum(np.searchsorted(stay_ids, stay), stay_ids.size - 1)
    mine = stay_ids[pos] == stay
    idx, pos = idx[mine], pos[mine]
    value, ok = items.convert(b[cols.item][idx], b[cols.value][idx])
    out_of_range += int(np.count_nonzero(~ok))
    idx, pos, value = idx[ok], pos[ok], value[ok]
    acc.add(pos, b[cols.time][idx] - cohort.start[pos], channel[idx], value)
  stats = ScanStats(rows_read=scan.rows, rows_selected=wanted, rows_out_of_range=out_of_range,
                    observations=acc.added, seconds=scan.seconds, batches=scan.batches)
  return acc, stats
