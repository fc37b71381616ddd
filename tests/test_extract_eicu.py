"""eICU extraction on fixture tables written here in the official schema (patient, vitalPeriodic;
tardiff_jax/data/extract/eicu.py), expectations computed by hand."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from tardiff_jax.data import DataError
from tardiff_jax.data.extract import extract
from tardiff_jax.data.extract.eicu import parse_age

HR, RR, SPO2 = range(3)

PATIENT_H = ["patientunitstayid", "patienthealthsystemstayid", "gender", "age", "ethnicity",
             "hospitalid", "wardid", "apacheadmissiondx", "admissionheight", "hospitaladmittime24",
             "hospitaladmitoffset", "hospitaladmitsource", "hospitaldischargeyear",
             "hospitaldischargetime24", "hospitaldischargeoffset", "hospitaldischargelocation",
             "hospitaldischargestatus", "unittype", "unitadmittime24", "unitadmitsource",
             "unitvisitnumber", "unitstaytype", "admissionweight", "dischargeweight",
             "unitdischargetime24", "unitdischargeoffset", "unitdischargelocation",
             "unitdischargestatus", "uniquepid"]
VITAL_H = ["vitalperiodicid", "patientunitstayid", "observationoffset", "temperature", "sao2",
           "heartrate", "respiration", "cvp", "etco2", "systemicsystolic", "systemicdiastolic",
           "systemicmean", "pasystolic", "padiastolic", "pamean", "st1", "st2", "st3", "icp"]

# patientunitstayid, patienthealthsystemstayid, uniquepid, age, year, visit, status, discharge
PATIENTS = [
    (1001, 501, "002-1", "> 89", 2014, 1, "Expired", 300),  # 5 h stay: 60 cells, rest padded.
    (1002, 502, "002-2", "70", 2014, 2, "Alive", 2000),  # Second unit stay of its hospital stay.
    (1003, 502, "002-2", "70", 2014, 1, "Alive", 5000),  # First: kept; > 3 days.
    (1004, 503, "002-3", "15", 2014, 1, "Alive", 2000),  # A child.
    (1005, 504, "002-4", "", 2014, 1, "Alive", 2000),  # Unknown age.
    (1006, 505, "002-5", "60", 2014, 1, "", 2000),  # Unknown outcome.
    (1007, 600, "002-6", "45", 2015, 1, "Expired", 2000),  # Later hospital stay (2015).
    (1008, 700, "002-6", "45", 2014, 1, "Alive", 4320),  # Earlier (2014): kept; exactly 3 days.
]
VITALS = [  # patientunitstayid, observationoffset, sao2, heartrate, respiration
    (1001, 0, None, 80, None),  # Cell 0 HR ...
    (1001, 2, None, 90, None),  # ... mean 85.
    (1001, 5, 101, None, 18),  # SpO2 101 dropped; RR 18 in cell 1.
    (1001, -5, None, 60, None),  # Before unit admission.
    (1001, 300, None, 70, None),  # At unit discharge: dropped.
    (1003, 1435, None, 100, None),  # Cell 287.
    (1003, 1440, None, 100, None),  # 24 h: outside the window.
    (1008, 10, 100, None, 0),  # SpO2 100 kept (<= 100); RR 0 dropped (> 0 required).
    (1002, 10, 95, 95, 15),  # Not in the cohort.
    (1007, 10, 95, 95, 15),  # Not in the cohort.
]


def write_eicu(d, vitals=VITALS, vital_header=VITAL_H):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "patient.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(PATIENT_H)
    for st, hs, pid, age, year, visit, status, dis in PATIENTS:
      row = dict.fromkeys(PATIENT_H, "")
      row.update(patientunitstayid=st, patienthealthsystemstayid=hs, uniquepid=pid, age=age,
                 hospitaldischargeyear=year, unitvisitnumber=visit,
                 hospitaldischargestatus=status, unitdischargeoffset=dis, gender="Female",
                 hospitalid=73, unittype="Med-Surg ICU", hospitaladmitoffset=-20,
                 unitdischargestatus="Alive")
      w.writerow([row[h] for h in PATIENT_H])
  with open(os.path.join(d, "vitalPeriodic.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(vital_header)
    for i, (st, off, sao2, hr, rr) in enumerate(vitals):
      row = dict.fromkeys(VITAL_H, "")
      row.update(vitalperiodicid=i, patientunitstayid=st, observationoffset=off,
                 sao2="" if sao2 is None else sao2, heartrate="" if hr is None else hr,
                 respiration="" if rr is None else rr)
      w.writerow([row[h] for h in vital_header])
  return str(d)


def test_parse_age():
  np.testing.assert_array_equal(parse_age(np.array(["67", "> 89", "", "0", "x"], object)),
                                [67, 90, np.nan, 0, np.nan])


def test_eicu_cohort_values_and_padding(tmp_path):
  ext = extract("eicu", write_eicu(tmp_path))
  c = ext.cohort
  np.testing.assert_array_equal(c.stay_id, [1001, 1003, 1008])
  np.testing.assert_array_equal(c.y_mortality, [1, 0, 0])
  np.testing.assert_array_equal(c.y_long_stay, [0, 1, 0])
  assert [n for _, n in c.flow] == [8, 6, 4, 4, 3, 3]
  assert ext.x.shape == (3, 288, 3)
  np.testing.assert_allclose(ext.x[0, 0, HR], 85.0)
  np.testing.assert_allclose(ext.x[0, 1, RR], 18.0)
  np.testing.assert_allclose(ext.x[1, 287, HR], 100.0)
  np.testing.assert_allclose(ext.x[2, 2, SPO2], 100.0)
  expected = np.zeros((3, 288, 3), bool)
  expected[0, 0, HR] = expected[0, 1, RR] = expected[1, 287, HR] = expected[2, 2, SPO2] = True
  np.testing.assert_array_equal(ext.mask, expected)
  np.testing.assert_array_equal(ext.stay_steps, [60, 288, 288])
  assert ext.stats.rows_out_of_range == 2  # SpO2 101 and RR 0.


def test_eicu_chunked_equals_whole(tmp_path):
  d = write_eicu(tmp_path)
  whole, small = extract("eicu", d), extract("eicu", d, block_bytes=256)
  assert small.stats.batches >= 2 and whole.stats.batches == 1
  np.testing.assert_array_equal(small.x, whole.x)
  np.testing.assert_array_equal(small.mask, whole.mask)


def test_eicu_missing_column(tmp_path):
  d = write_eicu(tmp_path, vital_header=[h for h in VITAL_H if h != "heartrate"])
  with pytest.raises(DataError, match=r"vitalPeriodic\.csv: missing column 'heartrate'"):
    extract("eicu", d)


def test_eicu_bad_offset_names_column(tmp_path):
  vitals = list(VITALS)
  vitals[2] = (1001, "5 min", 101, None, 18)
  d = write_eicu(tmp_path, vitals=vitals)
  with pytest.raises(DataError, match=r"vitalPeriodic\.csv: column 'observationoffset'"):
    extract("eicu", d)
