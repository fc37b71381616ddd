"""eICU-CRD v2.0 (Pollard et al. 2018) -> 288 five-minute means of 3 vital signs per ICU stay.

Tables (the official CSVs, `.csv` or `.csv.gz`, lower-case columns) in `raw_dir`: patient and
vitalPeriodic. eICU times are minutes from unit admission (`observationoffset`,
`unitdischargeoffset`), so every stay's window starts at offset 0.

Cohort rules, in this order (the summary reports the stays left after each):
  1. Unit stays in patient.
  2. The patient's first ICU stay: per uniquepid, the first by (hospitaldischargeyear,
     patienthealthsystemstayid, unitvisitnumber, patientunitstayid). eICU dates are removed and
     hospital stays carry only their discharge year, so across hospital stays of one year the
     order is by id; within a hospital stay, unitvisitnumber orders the unit stays.
  3. Adults: `age` (a string: "0".."89", "> 89" for older patients, "" when unknown) >= 18, with
     "> 89" counted as 90; unknown ages are dropped.
  4. Unit discharge known: unitdischargeoffset present.
  5. Hospital outcome known: hospitaldischargestatus "Alive" or "Expired" (any case).
  6. At least one vital sign in the window (after streaming vitalPeriodic).
Labels: hospital mortality = hospitaldischargestatus == "Expired"; long stay =
unitdischargeoffset > 3 days (4,320 minutes).

Series: vitalPeriodic columns heartrate, respiration and sao2 (5-minute medians from the monitor;
`items.EICU_COLUMNS`) on the grid `grid.FIVE_MIN_24H`: observations in [0, min(1440,
unitdischargeoffset)) minutes, cell = observationoffset // 5, cell means, NaN and mask False where
nothing was recorded or after unit discharge. Range filters as for MIMIC (`items`).
"""

from __future__ import annotations

import os
import re

import numpy as np

from tardiff_jax.data.extract.chartevents import ScanStats
from tardiff_jax.data.extract.cohort import (
    ADULT_YEARS,
    LONG_STAY_DAYS,
    Cohort,
    Flow,
    first_per_group,
)
from tardiff_jax.data.extract.grid import FIVE_MIN_24H, GridAccumulator
from tardiff_jax.data.extract.items import EICU_CHANNELS, EICU_COLUMNS, EICU_UNITS, in_range
from tardiff_jax.data.extract.output import Extraction, assemble
from tardiff_jax.data.extract.tables import (
    DEFAULT_BLOCK_BYTES,
    INT_NULL,
    Column,
    TableScan,
    find_table,
    read_table,
)

PATIENT = (Column("patientunitstayid", "int"), Column("patienthealthsystemstayid", "int"),
           Column("uniquepid", "str"), Column("age", "str"), Column("hospitaldischargeyear", "int"),
           Column("unitvisitnumber", "int"), Column("hospitaldischargestatus", "str"),
           Column("unitdischargeoffset", "int"))
VITALS = (Column("patientunitstayid", "int"), Column("observationoffset", "int"),
          *(Column(name, "float") for name in EICU_COLUMNS))
_AGE = re.compile(r"^\s*(>\s*)?(\d+)\s*$")


def parse_age(age: np.ndarray) -> np.ndarray:
  """float64 years from eICU's age strings: "67" -> 67, "> 89" -> 90, "" or other -> NaN."""
  out = np.full(len(age), np.nan)
  for i, a in enumerate(age):
    m = _AGE.match(str(a))
    if m:
      out[i] = float(m.group(2)) + (1.0 if m.group(1) else 0.0)
  return out


def extract_eicu(raw_dir: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 progress: bool = False) -> Extraction:
  """Builds the eICU cohort and its 5-minute vitals (see the module docstring for the rules)."""
  paths = {name: find_table(raw_dir, name) for name in ("patient", "vitalPeriodic")}
  pat = read_table(paths["patient"], PATIENT)

  flow = Flow(pat, "unit stays (patient)")
  s = flow.stays
  year = np.where(s["hospitaldischargeyear"] == INT_NULL, np.iinfo(np.int64).max,
                  s["hospitaldischargeyear"])
  flow.keep(first_per_group(s["uniquepid"].astype(str), year, s["patienthealthsystemstayid"],
                            s["unitvisitnumber"], s["patientunitstayid"]),
            "first ICU stay of the patient (uniquepid)")
  s = flow.stays
  flow.keep(parse_age(s["age"]) >= ADULT_YEARS, f"adult (age >= {ADULT_YEARS:g}, '> 89' = 90)")
  s = flow.stays
  flow.keep(s["unitdischargeoffset"] != INT_NULL, "unit discharge known (unitdischargeoffset)")
  s = flow.stays
  status = np.char.lower(np.char.strip(s["hospitaldischargestatus"].astype(str)))
  flow.keep(np.isin(status, ("alive", "expired")), "hospital outcome known (Alive / Expired)")
  s = flow.stays
  status = np.char.lower(np.char.strip(s["hospitaldischargestatus"].astype(str)))
  minutes = s["unitdischargeoffset"]
  cohort = flow.cohort(s["patientunitstayid"], np.zeros(flow.count, np.int64), minutes * 60,
                       status == "expired", minutes > LONG_STAY_DAYS * 24 * 60,
                       source=f"eICU in {raw_dir}")
  acc, stats = scan_vital_periodic(paths["vitalPeriodic"], cohort, block_bytes, progress)
  return assemble("eicu", cohort, acc, stats, EICU_CHANNELS, EICU_UNITS, paths)


def scan_vital_periodic(path: str, cohort: Cohort, block_bytes: int = DEFAULT_BLOCK_BYTES,
                        progress: bool = False) -> tuple[GridAccumulator, ScanStats]:
  """Streams vitalPeriodic onto the 5-minute grid of the cohort's stays."""
  acc = GridAccumulator(len(cohort), FIVE_MIN_24H, len(EICU_CHANNELS), cohort.length)
  scan = TableScan(path, VITALS, block_bytes=block_bytes, progress=progress)
  selected = out_of_range = 0
  stay_ids = cohort.stay_id
  for b in scan:
    stay, offset = b["patientunitstayid"], b["observationoffset"]
    pos = np.minimum(np.searchsorted(stay_ids, stay), stay_ids.size - 1)
    idx = np.flatnonzero((stay_ids[pos] == stay) & (offset != INT_NULL))
    selected += idx.size
    if idx.size == 0:
      continue
    pos, seconds = pos[idx], offset[idx] * 60
    for name, (channel, low, high, incl) in EICU_COLUMNS.items():
      v = b[name][idx]
      finite = np.isfinite(v)
      ok = in_range(v, low, high, incl)
      out_of_range += int(np.count_nonzero(finite & ~ok))
      acc.add(pos[ok], seconds[ok], np.full(int(ok.sum()), EICU_CHANNELS.index(channel), np.int8),
              v[ok])
  stats = ScanStats(rows_read=scan.rows, rows_selected=selected, rows_out_of_range=out_of_range,
                    observations=acc.added, seconds=scan.seconds, batches=scan.batches)
  return acc, stats
