"""MIMIC-IV extraction on fixture tables written here in the official schema (icu/, hosp/,
lower-case columns; tardiff_jax/data/extract/mimic4.py), expectations computed by hand."""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pytest

from tardiff_jax.data import DataError
from tardiff_jax.data.extract import extract

HR, SBP, DBP, MAP, RR, TEMP, SPO2 = range(7)

ICUSTAYS_H = ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime",
              "outtime", "los"]
PATIENTS_H = ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"]
ADMISSIONS_H = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                "admit_provider_id", "admission_location", "discharge_location", "insurance",
                "language", "marital_status", "race", "edregtime", "edouttime",
                "hospital_expire_flag"]
CHART_H = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid",
           "value", "valuenum", "valueuom", "warning"]

PATIENTS = [(10000001, 17, 2150), (10000002, 17, 2150), (10000003, 70, 2140)]  # anchor age, year
ICUSTAYS = [  # subject_id, hadm_id, stay_id, intime, outtime, los
    (10000001, 20000001, 30000001, "2151-02-01 10:00:00", "2151-02-06 10:00:00", 5.0),  # Age 18.
    (10000002, 20000002, 30000002, "2150-06-01 10:00:00", "2150-06-03 10:00:00", 2.0),  # Age 17.
    (10000003, 20000003, 30000004, "2141-01-01 00:00:00", "2141-01-01 06:00:00", 0.25),
    (10000003, 20000004, 30000003, "2142-01-01 00:00:00", "2142-01-08 00:00:00", 7.0),  # Second.
]
ADMISSIONS = [(10000001, 20000001, 0), (10000002, 20000002, 1), (10000003, 20000003, 1),
              (10000003, 20000004, 0)]
CHART = [  # stay_id, charttime, itemid, valuenum
    (30000001, "2151-02-01 10:20:00", 225309, 130.0),  # ART BP Systolic (MIMIC-IV only id).
    (30000001, "2151-02-01 10:40:00", 220179, 110.0),  # NBP systolic: SBP hour 0 = 120.
    (30000001, "2151-02-01 11:10:00", 223761, 212.0),  # 212 F is out of range: dropped.
    (30000001, "2151-02-01 11:20:00", 223761, 99.5),  # 99.5 F = 37.5 C, hour 1.
    (30000001, "2151-02-01 12:00:00", 211, 80.0),  # A CareVue id: not a MIMIC-IV item.
    (30000001, "2151-02-01 12:30:00", 220277, 97.0),  # SpO2 hour 2.
    (30000002, "2150-06-01 10:30:00", 220045, 90.0),  # Age 17: not in the cohort.
    (30000004, "2141-01-01 05:30:00", 220045, 101.0),  # 6-hour first stay: hour 5.
    (30000003, "2142-01-01 01:00:00", 220045, 70.0),  # Second stay: not in the cohort.
]


def write_csv(path, header, rows):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def write_mimic4(d, chart=CHART):
  for sub in ("icu", "hosp"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
  write_csv(os.path.join(d, "hosp", "patients.csv.gz"), PATIENTS_H,
            [(s, "F", a, y, "2008 - 2010", "") for s, a, y in PATIENTS])
  write_csv(os.path.join(d, "icu", "icustays.csv.gz"), ICUSTAYS_H,
            [(s, h, st, "MICU", "MICU", t0, t1, los) for s, h, st, t0, t1, los in ICUSTAYS])
  write_csv(os.path.join(d, "hosp", "admissions.csv.gz"), ADMISSIONS_H,
            [(s, h, "2151-01-31 00:00:00", "", "", "EW EMER.", "P1", "", "", "", "", "", "", "",
              "", f) for s, h, f in ADMISSIONS])
  write_csv(os.path.join(d, "icu", "chartevents.csv.gz"), CHART_H,
            [(1, 1, st, 5, t, t, item, str(v), v, "", 0) for st, t, item, v in chart])
  return str(d)


def test_mimic4_cohort_values_and_padding(tmp_path):
  ext = extract("mimic4", write_mimic4(tmp_path))
  c = ext.cohort
  np.testing.assert_array_equal(c.stay_id, [30000001, 30000004])
  np.testing.assert_array_equal(c.y_mortality, [0, 1])
  np.testing.assert_array_equal(c.y_long_stay, [1, 0])
  assert [n for _, n in c.flow] == [4, 4, 3, 2, 2, 2, 2]
  np.testing.assert_allclose(ext.x[0, 0, SBP], 120.0)
  np.testing.assert_allclose(ext.x[0, 1, TEMP], 37.5, atol=1e-5)
  np.testing.assert_allclose(ext.x[0, 2, SPO2], 97.0)
  np.testing.assert_allclose(ext.x[1, 5, HR], 101.0)
  assert ext.mask.sum() == 4  # The CareVue id and 212 F count nowhere.
  assert not ext.mask[0, :, HR].any()
  np.testing.assert_array_equal(ext.stay_steps, [24, 6])


def test_mimic4_unparseable_intime(tmp_path):
  d = write_mimic4(tmp_path)
  rows = [(s, h, st, "MICU", "MICU", t0, t1, los) for s, h, st, t0, t1, los in ICUSTAYS]
  rows[2] = rows[2][:5] + ("not a time",) + rows[2][6:]
  write_csv(os.path.join(d, "icu", "icustays.csv.gz"), ICUSTAYS_H, rows)
  with pytest.raises(DataError, match=r"icustays\.csv\.gz: column 'intime'"):
    extract("mimic4", d)
