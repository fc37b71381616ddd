"""The extraction result: the data contract's arrays, a summary, and writing both atomically.

The `.npz` holds `x` float32[N, T, C] (NaN where missing), `mask` bool[N, T, C] (True = observed),
`y` int32[N] (the chosen label), `y_mortality` and `y_long_stay` int32[N] (both labels),
`stay_id` int64[N], `stay_steps` int32[N] (cells before ICU discharge; the rest is padding),
`channel_names` and `class_names` (unicode), so `tardiff_jax.data.load_dataset` reads it as is.
`<out>.summary.json` holds the summary printed at the end of a run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.data.dataset import DataError
from tardiff_jax.data.extract.chartevents import ScanStats
from tardiff_jax.data.extract.cohort import Cohort
from tardiff_jax.data.extract.grid import Grid, GridAccumulator, compact

LABELS = ("mortality", "long_stay")
CLASS_NAMES = {"mortality": ("survived", "died"), "long_stay": ("short", "long")}
NO_DATA_RULE = "at least one vital sign in the window"


@dataclasses.dataclass(frozen=True)
class Extraction:
  """Series and labels of a cohort (stays with no observation in the window already dropped)."""
  source: str
  x: np.ndarray
  mask: np.ndarray
  stay_steps: np.ndarray
  cohort: Cohort
  channel_names: tuple[str, ...]
  channel_units: tuple[str, ...]
  grid: Grid
  stats: ScanStats
  tables: dict[str, str]  # Table name -> file read.

  def arrays(self, label: str = "mortality") -> dict[str, np.ndarray]:
    """The `.npz` arrays with `y` = the `label` column."""
    if label not in LABELS:
      raise ValueError(f"label={label!r}; expected one of {LABELS}.")
    c = self.cohort
    return {"x": self.x, "mask": self.mask, "y": getattr(c, f"y_{label}"),
            "y_mortality": c.y_mortality, "y_long_stay": c.y_long_stay, "stay_id": c.stay_id,
            "stay_steps": self.stay_steps,
            "channel_names": np.array(self.channel_names, dtype=np.str_),
            "class_names": np.array(CLASS_NAMES[label], dtype=np.str_)}

  def summary(self, label: str = "mortality") -> dict[str, Any]:
    """Counts, label prevalences, missingness per channel and reading speed."""
    n, t, _ = self.x.shape
    cells = max(int(np.minimum(self.stay_steps, t).sum()), 1)  # Cells before discharge.
    observed = self.mask.sum(axis=(0, 1))  # Cells after discharge are never observed.
    s = self.stats
    return {
        "source": self.source, "tables": self.tables, "label": label, "stays": n,
        "T": t, "C": len(self.channel_names), "step_minutes": self.grid.step_minutes,
        "channel_names": list(self.channel_names), "channel_units": list(self.channel_units),
        "prevalence_mortality": float(self.cohort.y_mortality.mean()),
        "prevalence_long_stay": float(self.cohort.y_long_stay.mean()),
        "positives_mortality": int(self.cohort.y_mortality.sum()),
        "positives_long_stay": int(self.cohort.y_long_stay.sum()),
        "cohort_flow": [{"rule": r, "stays": k} for r, k in self.cohort.flow],
        # Share of cells without an observation, counting cells before ICU discharge only.
        "missing_per_channel": {name: 1.0 - float(o) / cells
                                for name, o in zip(self.channel_names, observed)},
        "padded_fraction": 1.0 - cells / max(n * t, 1),
        "rows_read": s.rows_read, "rows_selected": s.rows_selected,
        "rows_out_of_range": s.rows_out_of_range, "observations": s.observations,
        "read_seconds": round(s.seconds, 3), "rows_per_s": s.rows_per_s,
    }


def assemble(source: str, cohort: Cohort, acc: GridAccumulator, stats: ScanStats,
             channel_names, channel_units, tables: dict[str, str]) -> Extraction:
  """Finishes the accumulator and drops stays with no observation at all in their window."""
  steps = acc.steps_in_stay()
  x, mask = acc.finish()
  has_data = mask.any(axis=(1, 2))
  cohort = cohort.subset(has_data, NO_DATA_RULE)
  if len(cohort) == 0:
    raise DataError(f"{source}: no stay of the cohort has a vital sign in its window (read "
                    f"{stats.rows_read:,} rows of {tables}); check the item ids and the files.")
  if not has_data.all():
    x, mask, steps = compact(x, has_data), compact(mask, has_data), steps[has_data]
  return Extraction(source, x, mask, steps, cohort, tuple(channel_names), tuple(channel_units),
                    acc.grid, stats, dict(tables))


def write_extraction(ext: Extraction, out: str | os.PathLike,
                     label: str = "mortality") -> dict[str, Any]:
  """Writes `out` (.npz) and `<out>.summary.json` atomically; returns the summary."""
  out = os.fspath(out)
  arrays = ext.arrays(label)
  # Streamed into tio.atomic_open rather than tio.write_npz, which builds the archive in memory
  # first: an eICU cohort's archive is several hundred MB.
  with tio.atomic_open(out, "wb") as f:
    np.savez(f, **arrays)
  summary = ext.summary(label)
  summary["out"] = out
  tio.write_json(summary_path(out), summary)
  return summary


def summary_path(out: str | os.PathLike) -> str:
  return os.fspath(out) + ".summary.json"


def format_summary(s: dict[str, Any]) -> str:
  """A few human-readable lines of a summary."""
  lines = [f"{s['source']}: {s['stays']:,} stays x {s['T']} steps of {s['step_minutes']:g} min x "
           f"{s['C']} channels; y = {s['label']}",
           f"  mortality {s['prevalence_mortality']:.1%} ({s['positives_mortality']:,}), "
           f"ICU stay > 3 days {s['prevalence_long_stay']:.1%} ({s['positives_long_stay']:,})",
           "  cohort: " + " -> ".join(f"{f['rule']}: {f['stays']:,}" for f in s["cohort_flow"]),
           "  missing (cells before discharge): " + ", ".join(
               f"{k} {v:.1%}" for k, v in s["missing_per_channel"].items())
           + f"; padding {s['padded_fraction']:.1%} of all cells",
           f"  read {s['rows_read']:,} rows in {s['read_seconds']:.1f} s "
           f"({s['rows_per_s']:,.0f} rows/s); {s['observations']:,} observations kept, "
           f"{s['rows_out_of_range']:,} out of range"]
  if "out" in s:
    lines.append(f"  wrote {s['out']} and {summary_path(s['out'])}")
  return "\n".join(lines)
