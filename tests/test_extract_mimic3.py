"""MIMIC-III extraction on fixture tables written here in the official schema (tardiff_jax/data/
extract/mimic3.py): every expected number below is computed by hand from the rows."""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pytest

from tardiff_jax.data import DataError, load_dataset
from tardiff_jax.data.extract import extract, format_summary, write_extraction
from tardiff_jax.data.extract.items import MIMIC_CHANNELS

HR, SBP, DBP, MAP, RR, TEMP, SPO2 = range(7)

PATIENTS_H = ["ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD", "DOD_HOSP", "DOD_SSN", "EXPIRE_FLAG"]
ICUSTAYS_H = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DBSOURCE", "FIRST_CAREUNIT",
              "LAST_CAREUNIT", "FIRST_WARDID", "LAST_WARDID", "INTIME", "OUTTIME", "LOS"]
ADMISSIONS_H = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME",
                "ADMISSION_TYPE", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE",
                "LANGUAGE", "RELIGION", "MARITAL_STATUS", "ETHNICITY", "EDREGTIME", "EDOUTTIME",
                "DIAGNOSIS", "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA"]
CHART_H = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID", "CHARTTIME", "STORETIME",
           "CGID", "VALUE", "VALUENUM", "VALUEUOM", "WARNING", "ERROR", "RESULTSTATUS", "STOPPED"]

PATIENTS = [  # SUBJECT_ID, DOB
    (1, "2050-01-01 00:00:00"),  # 51 at admission.
    (2, "1850-01-01 00:00:00"),  # Older than 89: DOB shifted, age ~300: adult.
    (3, "2100-12-01 00:00:00"),  # A baby: excluded.
    (4, "2060-01-01 00:00:00"),  # Two ICU stays: only the first by INTIME is kept.
    (5, "2060-01-01 00:00:00"),  # No vital sign charted: excluded.
]
ICUSTAYS = [  # SUBJECT_ID, HADM_ID, ICUSTAY_ID, DBSOURCE, INTIME, OUTTIME, LOS
    (1, 100001, 200001, "carevue", "2101-10-20 08:00:00", "2101-10-25 08:00:00", 5.0),
    (2, 100002, 200002, "metavision", "2150-01-01 00:00:00", "2150-01-01 10:00:00", 0.4167),
    (3, 100003, 200003, "carevue", "2101-01-05 00:00:00", "2101-01-09 00:00:00", 4.0),
    (4, 100004, 200004, "carevue", "2120-05-01 00:00:00", "2120-05-06 00:00:00", 5.0),
    (4, 100005, 200005, "carevue", "2120-03-01 00:00:00", "2120-03-04 00:00:00", 3.0),
    (5, 100006, 200006, "carevue", "2130-01-01 00:00:00", "2130-01-02 00:00:00", 1.0),
]
ADMISSIONS = [(1, 100001, 0), (2, 100002, 1), (3, 100003, 0), (4, 100004, 1), (4, 100005, 0),
              (5, 100006, 0)]  # SUBJECT_ID, HADM_ID, HOSPITAL_EXPIRE_FLAG
# ICUSTAY_ID, ITEMID, CHARTTIME, VALUE, VALUENUM, ERROR
CHART = [
    (200001, 211, "2101-10-20 08:10:00", "80", "80", "0"),  # HR hour 0 ...
    (200001, 211, "2101-10-20 08:50:00", "90", "90", ""),  # ... mean 85.
    (200001, 220045, "2101-10-20 09:30:00", "400", "400", ""),  # HR >= 300: dropped, hour 1 masked.
    (200001, 678, "2101-10-20 08:20:00", "98.6", "98.6", ""),  # 98.6 F = 37.0 C in hour 0.
    (200001, 676, "2101-10-20 10:15:00", "38", "38", ""),  # Hour 2: 38.0 C and ...
    (200001, 223761, "2101-10-20 10:45:00", "100.4", "100.4", ""),  # ... 100.4 F = 38.0 C.
    (200001, 678, "2101-10-20 11:15:00", "130", "130", ""),  # 130 F is out of range: dropped.
    (200001, 646, "2101-10-20 11:00:00", "100", "100", ""),  # SpO2 100 is in range (<= 100).
    (200001, 51, "2101-10-20 07:30:00", "120", "120", ""),  # Before INTIME: dropped.
    (200001, 8368, "2101-10-20 08:00:00", "60", "60", ""),  # At INTIME: hour 0.
    (200001, 618, "2101-10-20 08:59:59", "16", "16", ""),  # Hour 0.
    (200001, 618, "2101-10-20 09:00:00", "20", "20", ""),  # Hour 1.
    (200001, 211, "2101-10-21 07:30:00", "75", "75", ""),  # Hour 23.
    (200001, 211, "2101-10-21 08:00:00", "70", "70", ""),  # INTIME + 24 h: outside the window.
    (200001, 211, "2101-10-20 12:10:00", "100", "100", "1"),  # ERROR = 1: dropped.
    (None, 211, "2101-10-20 13:10:00", "60", "60", ""),  # No ICUSTAY_ID: dropped.
    (200001, 50, "2101-10-20 08:30:00", "5", "5", ""),  # An item that is not a vital sign.
    (200001, 456, "2101-10-20 09:05:00", "85", "85", ""),  # MAP hour 1.
    (200001, 456, "2101-10-20 09:25:00", "Other, see note", "", ""),  # No VALUENUM: dropped.
    (200002, 220045, "2150-01-01 09:30:00", "100", "100", ""),  # 10-hour stay: hour 9.
    (200002, 220045, "2150-01-01 10:00:00", "110", "110", ""),  # At OUTTIME: dropped.
    (200002, 220045, "2150-01-01 11:00:00", "120", "120", ""),  # After OUTTIME: dropped.
    (200003, 211, "2101-01-05 01:00:00", "140", "140", ""),  # Baby: not in the cohort.
    (200004, 211, "2120-05-01 01:00:00", "77", "77", ""),  # Second stay: not in the cohort.
    (200005, 211, "2120-03-01 00:30:00", "88", "88", ""),  # First stay of subject 4.
]


def write_csv(path, header, rows, quote_header=True):
  """Writes a table as the MIMIC-III v1.4 files are: quoted header, quotes where needed."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    f.write(",".join(f'"{h}"' if quote_header else h for h in header) + "\n")
    w = csv.writer(f)
    for r in rows:
      w.writerow(["" if v is None else v for v in r])


def write_mimic3(d, chart=CHART, chart_name="CHARTEVENTS.csv", drop=(), chart_header=CHART_H):
  """The four tables in `d`; `drop` leaves tables out."""
  os.makedirs(d, exist_ok=True)
  tables = {
      "PATIENTS.csv": (PATIENTS_H, [(i, s, "M", dob, None, None, None, 0)
                                    for i, (s, dob) in enumerate(PATIENTS)]),
      "ICUSTAYS.csv": (ICUSTAYS_H, [(i, s, h, st, db, "MICU", "MICU", 52, 52, t0, t1, los)
                                    for i, (s, h, st, db, t0, t1, los) in enumerate(ICUSTAYS)]),
      "ADMISSIONS.csv": (ADMISSIONS_H, [(i, s, h, "2100-01-01 00:00:00", None, None, "EMERGENCY",
                                         "", "", "", "", "", "", "", None, None, "SEPSIS", f, 1)
                                        for i, (s, h, f) in enumerate(ADMISSIONS)]),
  }
  for name, (header, rows) in tables.items():
    if name.split(".")[0] not in drop:
      write_csv(os.path.join(d, name), header, rows)
  rows = []
  for i, (stay, item, t, value, valuenum, err) in enumerate(chart):
    full = dict(ROW_ID=i, SUBJECT_ID=1, HADM_ID=1, ICUSTAY_ID=stay, ITEMID=item, CHARTTIME=t,
                STORETIME=t, CGID=17, VALUE=value, VALUENUM=valuenum, VALUEUOM="bpm",
                WARNING="", ERROR=err, RESULTSTATUS="", STOPPED="NotStopd")
    rows.append([full[h] for h in chart_header])
  if "CHARTEVENTS" not in drop:
    write_csv(os.path.join(d, chart_name), chart_header, rows)
  return str(d)


@pytest.fixture(scope="module")
def mimic3(tmp_path_factory):
  d = write_mimic3(tmp_path_factory.mktemp("mimic3"))
  return d, extract("mimic3", d)


def test_cohort_rules_and_labels(mimic3):
  _, ext = mimic3
  c = ext.cohort
  # Baby (200003), second stay (200004) and the stay without vitals (200006) are out; 200005 is
  # subject 4's first stay by INTIME although its id is larger.
  np.testing.assert_array_equal(c.stay_id, [200001, 200002, 200005])
  np.testing.assert_array_equal(c.y_mortality, [0, 1, 0])
  np.testing.assert_array_equal(c.y_long_stay, [1, 0, 0])  # LOS 5.0, 0.4167, 3.0 (not > 3).
  assert [n for _, n in c.flow] == [6, 6, 5, 4, 4, 4, 3]


def test_hourly_values_units_ranges(mimic3):
  _, ext = mimic3
  x, m = ext.x, ext.mask
  assert x.shape == (3, 24, 7) and x.dtype == np.float32 and m.dtype == bool
  np.testing.assert_allclose(x[0, 0, HR], 85.0)  # (80 + 90) / 2.
  np.testing.assert_allclose(x[0, 0, TEMP], 37.0, atol=1e-5)  # 98.6 F.
  np.testing.assert_allclose(x[0, 2, TEMP], 38.0, atol=1e-5)  # 38 C and 100.4 F.
  np.testing.assert_allclose(x[0, 3, SPO2], 100.0)
  np.testing.assert_allclose(x[0, 0, DBP], 60.0)
  np.testing.assert_allclose(x[0, 0, RR], 16.0)
  np.testing.assert_allclose(x[0, 1, RR], 20.0)
  np.testing.assert_allclose(x[0, 1, MAP], 85.0)
  np.testing.assert_allclose(x[0, 23, HR], 75.0)
  np.testing.assert_allclose(x[1, 9, HR], 100.0)
  np.testing.assert_allclose(x[2, 0, HR], 88.0)
  expected = np.zeros((3, 24, 7), bool)
  for s, t, ch in [(0, 0, HR), (0, 0, TEMP), (0, 2, TEMP), (0, 3, SPO2), (0, 0, DBP), (0, 0, RR),
                   (0, 1, RR), (0, 1, MAP), (0, 23, HR), (1, 9, HR), (2, 0, HR)]:
    expected[s, t, ch] = True
  # Everything else is missing: the out-of-range HR (hour 1) and Temp (hour 3), the ERROR row
  # (hour 4), SBP before INTIME, values at or after OUTTIME / INTIME + 24 h.
  np.testing.assert_array_equal(m, expected)
  assert np.isnan(x[~m]).all() and np.isfinite(x[m]).all()


def test_padding_of_short_stays(mimic3):
  _, ext = mimic3
  np.testing.assert_array_equal(ext.stay_steps, [24, 10, 24])  # 200002 lasted 10 hours.
  assert not ext.mask[1, 10:].any()
  s = ext.summary()
  assert s["padded_fraction"] == pytest.approx(14 / 72)
  # HR observed in 2 of 24 + 1 of 10 + 1 of 24 cells before discharge.
  assert s["missing_per_channel"]["HR"] == pytest.approx(1 - 4 / 58)
  assert s["rows_read"] == len(CHART)
  assert s["rows_out_of_range"] == 2  # HR 400 and 130 F (cohort stays only).


def test_chunked_reading_equals_whole_file(tmp_path, mimic3):
  d, whole = mimic3
  small = extract("mimic3", d, block_bytes=512)
  assert small.stats.batches > 3 and whole.stats.batches == 1
  np.testing.assert_array_equal(small.x, whole.x)
  np.testing.assert_array_equal(small.mask, whole.mask)
  gz = write_mimic3(tmp_path / "gz", chart_name="CHARTEVENTS.csv.gz")
  zipped = extract("mimic3", gz, block_bytes=512)
  np.testing.assert_array_equal(zipped.x, whole.x)
  np.testing.assert_array_equal(zipped.mask, whole.mask)


def test_error_column_is_optional(tmp_path, mimic3):
  _, ext = mimic3
  header = [h for h in CHART_H if h != "ERROR"]
  d = write_mimic3(tmp_path, chart_header=header)
  no_err = extract("mimic3", d)
  assert no_err.mask[0, 4, HR] and not ext.mask[0, 4, HR]  # The ERROR = 1 row now counts.
  np.testing.assert_allclose(no_err.x[0, 4, HR], 100.0)


def test_written_npz_is_the_data_contract(tmp_path, mimic3):
  _, ext = mimic3
  out = tmp_path / "cohort.npz"
  summary = write_extraction(ext, out, label="long_stay")
  ds = load_dataset(out)
  assert ds.channel_names == MIMIC_CHANNELS and ds.class_names == ("short", "long")
  np.testing.assert_array_equal(ds.y, [1, 0, 0])
  np.testing.assert_array_equal(ds.mask, ext.mask)
  with np.load(out, allow_pickle=False) as z:
    np.testing.assert_array_equal(z["y_mortality"], [0, 1, 0])
    np.testing.assert_array_equal(z["stay_id"], [200001, 200002, 200005])
  assert summary["prevalence_mortality"] == pytest.approx(1 / 3)
  assert os.path.exists(str(out) + ".summary.json")
  assert "3 stays" in format_summary(summary)


def test_missing_table(tmp_path):
  d = write_mimic3(tmp_path, drop=("ADMISSIONS",))
  with pytest.raises(DataError, match="ADMISSIONS"):
    extract("mimic3", d)


def test_missing_column_names_file_and_column(tmp_path):
  d = write_mimic3(tmp_path, chart_header=[h for h in CHART_H if h != "VALUENUM"])
  with pytest.raises(DataError, match=r"CHARTEVENTS\.csv: missing column 'VALUENUM'"):
    extract("mimic3", d)


def test_unparseable_timestamp_names_file_and_column(tmp_path):
  chart = list(CHART)
  chart[5] = (200001, 676, "20/10/2101 10h15", "38", "38", "")
  d = write_mimic3(tmp_path, chart=chart)
  with pytest.raises(DataError, match=r"CHARTEVENTS\.csv: column 'CHARTTIME'"):
    extract("mimic3", d, block_bytes=512)
