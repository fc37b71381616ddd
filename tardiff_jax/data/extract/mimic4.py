"""MIMIC-IV v2.x / v3.x (Johnson et al. 2023) -> 24 hourly means of 7 vital signs per ICU stay.

Tables (the official CSVs, `.csv` or `.csv.gz`, lower-case columns) under `raw_dir`:
icu/icustays, icu/chartevents, hosp/patients, hosp/admissions (`raw_dir` is the release folder
that holds `icu/` and `hosp/`).

Cohort rules, in this order (the summary reports the stays left after each), as for MIMIC-III:
  1. ICU stays in icu/icustays, then those with an intime.
  2. The subject's first ICU stay: the earliest intime per subject_id (ties: smaller stay_id).
  3. Adults: age at ICU admission >= 18, where age = anchor_age + (year of intime - anchor_year)
     (MIMIC-IV publishes an anchor age per patient, not a date of birth; ages over 89 are
     reported as 91). Subjects missing from hosp/patients are dropped here.
  4. ICU discharge known: outtime and los present.
  5. The admission (hadm_id) is in hosp/admissions with a hospital_expire_flag.
  6. At least one vital sign in the window (after streaming icu/chartevents).
Labels: in-hospital mortality = hospital_expire_flag; long stay = icustays.los (days) > 3.

Series: icu/chartevents rows are linked by stay_id and placed by charttime - intime on the hourly
grid of the first 24 h (`grid.HOURLY_24H`, as for MIMIC-III). MIMIC-IV kept only MetaVision
items: `items.MIMIC4_ITEMS` (from mimic-code's `vitalsign.sql`). chartevents has no ERROR flag.
"""

from __future__ import annotations

import os

import numpy as np

from tardiff_jax.data.extract.chartevents import ChartColumns, scan_chartevents
from tardiff_jax.data.extract.cohort import (
    ADULT_YEARS,
    LONG_STAY_DAYS,
    Flow,
    calendar_year,
    first_per_group,
    lookup,
)
from tardiff_jax.data.extract.grid import HOURLY_24H
from tardiff_jax.data.extract.items import MIMIC4_ITEMS, MIMIC_CHANNELS, MIMIC_UNITS, ItemTable
from tardiff_jax.data.extract.output import Extraction, assemble
from tardiff_jax.data.extract.tables import (
    DEFAULT_BLOCK_BYTES,
    INT_NULL,
    Column,
    find_table,
    read_table,
)

ICUSTAYS = (Column("subject_id", "int"), Column("hadm_id", "int"), Column("stay_id", "int"),
            Column("intime", "time"), Column("outtime", "time"), Column("los", "float"))
PATIENTS = (Column("subject_id", "int"), Column("anchor_age", "int"), Column("anchor_year", "int"))
ADMISSIONS = (Column("hadm_id", "int"), Column("hospital_expire_flag", "int"))
CHART = ChartColumns(stay="stay_id", item="itemid", time="charttime", value="valuenum")
TABLES = ("icu/icustays", "hosp/patients", "hosp/admissions", "icu/chartevents")


def extract_mimic4(raw_dir: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES,
                   progress: bool = False) -> Extraction:
  """Builds the MIMIC-IV cohort and its hourly vitals (see the module docstring for the rules)."""
  paths = {name: find_table(raw_dir, name) for name in TABLES}
  icu = read_table(paths["icu/icustays"], ICUSTAYS)
  pat = read_table(paths["hosp/patients"], PATIENTS)
  adm = read_table(paths["hosp/admissions"], ADMISSIONS)

  flow = Flow(icu, "ICU stays (icu/icustays)")
  flow.keep(icu["intime"] != INT_NULL, "intime recorded")
  s = flow.stays
  flow.keep(first_per_group(s["subject_id"], s["intime"], s["stay_id"]),
            "first ICU stay of the subject")
  s = flow.stays
  anchor_age = lookup(s["subject_id"], pat["subject_id"], pat["anchor_age"], INT_NULL)
  anchor_year = lookup(s["subject_id"], pat["subject_id"], pat["anchor_year"], INT_NULL)
  known = (anchor_age != INT_NULL) & (anchor_year != INT_NULL)
  age = np.where(known, anchor_age + calendar_year(s["intime"]) - anchor_year, -1)
  flow.keep(known & (age >= ADULT_YEARS), f"adult (age >= {ADULT_YEARS:g} at intime)")
  s = flow.stays
  flow.keep((s["outtime"] != INT_NULL) & np.isfinite(s["los"]),
            "ICU discharge known (outtime, los)")
  s = flow.stays
  died = lookup(s["hadm_id"], adm["hadm_id"], adm["hospital_expire_flag"], INT_NULL)
  flow.keep(np.isin(died, (0, 1)), "admission with hospital_expire_flag (hosp/admissions)")
  s = flow.stays
  died = lookup(s["hadm_id"], adm["hadm_id"], adm["hospital_expire_flag"], INT_NULL)
  cohort = flow.cohort(s["stay_id"], s["intime"], s["outtime"] - s["intime"], died,
                       s["los"] > LONG_STAY_DAYS, source=f"MIMIC-IV in {raw_dir}")

  items = ItemTable(MIMIC4_ITEMS, MIMIC_CHANNELS)
  acc, stats = scan_chartevents(paths["icu/chartevents"], CHART, cohort, items, HOURLY_24H,
                                block_bytes=block_bytes, progress=progress)
  return assemble("mimic4", cohort, acc, stats, MIMIC_CHANNELS, MIMIC_UNITS, paths)
