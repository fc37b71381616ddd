"""MIMIC-III v1.4 (Johnson et al. 2016) -> 24 hourly means of 7 vital signs per ICU stay.

Tables (the official CSVs, `.csv` or `.csv.gz`, upper-case columns): ICUSTAYS, PATIENTS,
ADMISSIONS and CHARTEVENTS, all directly in `raw_dir`.

Cohort rules, in this order (the summary reports the stays left after each):
  1. ICU stays in ICUSTAYS with an INTIME (the summary lists all stays, then those with one).
  2. The subject's first ICU stay: the earliest INTIME per SUBJECT_ID (ties: smaller ICUSTAY_ID).
     Decided over all the subject's stays, before the age rule.
  3. Adults: (INTIME - PATIENTS.DOB) >= 18 years. MIMIC-III shifts the DOB of patients older than
     89 to 300 years before their first admission; such ages (~300) count as adult. Subjects
     missing from PATIENTS or without a DOB are dropped here.
  4. ICU discharge known: OUTTIME and LOS present.
  5. The admission (HADM_ID) is in ADMISSIONS with a HOSPITAL_EXPIRE_FLAG.
  6. At least one vital sign in the window (after streaming CHARTEVENTS).
Labels: in-hospital mortality = ADMISSIONS.HOSPITAL_EXPIRE_FLAG of the stay's admission;
long stay = ICUSTAYS.LOS (days) > 3.

Series: CHARTEVENTS rows with ERROR = 1 are dropped (the column is optional); rows are linked to
stays by ICUSTAY_ID (rows without one are dropped) and placed by CHARTTIME - INTIME on the hourly
grid of the first 24 h (`grid.HOURLY_24H`: observations in [INTIME, min(INTIME + 24 h, OUTTIME)),
hourly means, NaN and mask False where nothing was charted or after OUTTIME). Item ids, ranges and
the Fahrenheit conversion: `items.MIMIC3_ITEMS` (CareVue and MetaVision, from mimic-code).
"""

from __future__ import annotations

import os

import numpy as np

from tardiff_jax.data.extract.chartevents import ChartColumns, scan_chartevents
from tardiff_jax.data.extract.cohort import (
    ADULT_YEARS,
    LONG_STAY_DAYS,
    Flow,
    first_per_group,
    lookup,
    years_between,
)
from tardiff_jax.data.extract.grid import HOURLY_24H
from tardiff_jax.data.extract.items import MIMIC3_ITEMS, MIMIC_CHANNELS, MIMIC_UNITS, ItemTable
from tardiff_jax.data.extract.output import Extraction, assemble
from tardiff_jax.data.extract.tables import (
    DEFAULT_BLOCK_BYTES,
    INT_NULL,
    Column,
    find_table,
    read_table,
)

ICUSTAYS = (Column("SUBJECT_ID", "int"), Column("HADM_ID", "int"), Column("ICUSTAY_ID", "int"),
            Column("INTIME", "time"), Column("OUTTIME", "time"), Column("LOS", "float"))
PATIENTS = (Column("SUBJECT_ID", "int"), Column("DOB", "time"))
ADMISSIONS = (Column("HADM_ID", "int"), Column("HOSPITAL_EXPIRE_FLAG", "int"))
CHART = ChartColumns(stay="ICUSTAY_ID", item="ITEMID", time="CHARTTIME", value="VALUENUM",
                     error="ERROR")


def extract_mimic3(raw_dir: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES,
                   progress: bool = False) -> Extraction:
  """Builds the MIMIC-III cohort and its hourly vitals (see the module docstring for the rules)."""
  paths = {name: find_table(raw_dir, name)
           for name in ("ICUSTAYS", "PATIENTS", "ADMISSIONS", "CHARTEVENTS")}
  icu = read_table(paths["ICUSTAYS"], ICUSTAYS)
  pat = read_table(paths["PATIENTS"], PATIENTS)
  adm = read_table(paths["ADMISSIONS"], ADMISSIONS)

  flow = Flow(icu, "ICU stays (ICUSTAYS)")
  flow.keep(icu["INTIME"] != INT_NULL, "INTIME recorded")
  s = flow.stays
  flow.keep(first_per_group(s["SUBJECT_ID"], s["INTIME"], s["ICUSTAY_ID"]),
            "first ICU stay of the subject")
  s = flow.stays
  dob = lookup(s["SUBJECT_ID"], pat["SUBJECT_ID"], pat["DOB"], INT_NULL)
  adult = (dob != INT_NULL) & (years_between(dob, s["INTIME"]) >= ADULT_YEARS)
  flow.keep(adult, f"adult (age >= {ADULT_YEARS:g} at INTIME)")
  s = flow.stays
  flow.keep((s["OUTTIME"] != INT_NULL) & np.isfinite(s["LOS"]),
            "ICU discharge known (OUTTIME, LOS)")
  s = flow.stays
  died = lookup(s["HADM_ID"], adm["HADM_ID"], adm["HOSPITAL_EXPIRE_FLAG"], INT_NULL)
  flow.keep(np.isin(died, (0, 1)), "admission with HOSPITAL_EXPIRE_FLAG (ADMISSIONS)")
  s = flow.stays
  died = lookup(s["HADM_ID"], adm["HADM_ID"], adm["HOSPITAL_EXPIRE_FLAG"], INT_NULL)
  cohort = flow.cohort(s["ICUSTAY_ID"], s["INTIME"], s["OUTTIME"] - s["INTIME"], died,
                       s["LOS"] > LONG_STAY_DAYS, source=f"MIMIC-III in {raw_dir}")

  items = ItemTable(MIMIC3_ITEMS, MIMIC_CHANNELS)
  acc, stats = scan_chartevents(paths["CHARTEVENTS"], CHART, cohort, items, HOURLY_24H,
                                block_bytes=block_bytes, progress=progress)
  return assemble("mimic3", cohort, acc, stats, MIMIC_CHANNELS, MIMIC_UNITS, paths)
