"""The extraction building blocks (tardiff_jax/data/extract/: tables, items, grid, cohort) and its
command line; the per-database cohorts are tested in test_extract_{mimic3,mimic4,eicu}.py."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tardiff_jax.data import DataError
from tardiff_jax.data.extract import items as it
from tardiff_jax.data.extract.cohort import Flow, calendar_year, first_per_group, lookup
from tardiff_jax.data.extract.grid import HOURLY_24H, Grid, GridAccumulator, compact
from tardiff_jax.data.extract.tables import INT_NULL, Column, TableScan, find_table, read_table

COLS = (Column("ID", "int"), Column("T", "time"), Column("V", "float"), Column("S", "str"))
TEXT = 'ID,T,V,S\n1,2101-10-20 08:00:00,1.5,"a, b"\n,,,\n3,2101-10-20 09:30:00,2,c\n'


def _write(path, text):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt") as f:
    f.write(text)
  return str(path)


def test_read_table_types_and_nulls(tmp_path):
  t = read_table(_write(tmp_path / "a.csv", TEXT), COLS)
  np.testing.assert_array_equal(t["ID"], [1, INT_NULL, 3])
  assert t["T"][0] == int(np.datetime64("2101-10-20T08:00:00", "s").astype(np.int64))
  assert t["T"][2] - t["T"][0] == 5400 and t["T"][1] == INT_NULL
  np.testing.assert_array_equal(t["V"], [1.5, np.nan, 2.0])
  assert list(t["S"]) == ["a, b", "", "c"]


def test_lowercase_header_and_optional_column(tmp_path):
  path = _write(tmp_path / "b.csv.gz", TEXT.lower().replace("2101", "2101"))
  t = read_table(path, COLS[:3] + (Column("ERROR", "int", required=False),))
  np.testing.assert_array_equal(t["ID"], [1, INT_NULL, 3])
  np.testing.assert_array_equal(t["ERROR"], [INT_NULL] * 3)


def test_quoted_line_breaks_across_blocks(tmp_path):
  rows = "".join(f'{i},2101-10-20 08:00:00,{i}.5,"line one\nline, two"\n' for i in range(200))
  path = _write(tmp_path / "n.csv", "ID,T,V,S\n" + rows)
  scan = TableScan(path, COLS, block_bytes=256)
  parts = list(scan)
  assert scan.batches > 10
  np.testing.assert_array_equal(np.concatenate([p["ID"] for p in parts]), np.arange(200))
  assert parts[-1]["S"][-1] == "line one\nline, two"


def test_find_table(tmp_path):
  _write(tmp_path / "chartevents.csv.gz", TEXT)
  assert find_table(tmp_path, "CHARTEVENTS").endswith("chartevents.csv.gz")
  _write(tmp_path / "CHARTEVENTS.csv", TEXT)
  assert find_table(tmp_path, "CHARTEVENTS").endswith("CHARTEVENTS.csv")  # Plain .csv first.
  with pytest.raises(DataError, match="'icu/icustays' not found"):
    find_table(tmp_path, "icu/icustays")


def test_table_errors_name_file_and_column(tmp_path):
  with pytest.raises(DataError, match=r"c\.csv: missing columns 'X', 'Y' \(the file has: ID"):
    TableScan(_write(tmp_path / "c.csv", TEXT), COLS + (Column("X", "int"), Column("Y", "int")))
  bad = _write(tmp_path / "d.csv", TEXT.replace(",2,c", ",two,c"))
  with pytest.raises(DataError, match=r"d\.csv: column 'V' \(float\)"):
    read_table(bad, COLS)
  ragged = _write(tmp_path / "e.csv", TEXT + "4,2101-10-20 09:30:00\n")
  with pytest.raises(DataError, match=r"e\.csv: .*Expected 4 columns, got 2"):
    read_table(ragged, COLS)
  with pytest.raises(DataError, match=r"f\.csv: "):
    read_table(_write(tmp_path / "f.csv", ""), COLS)
  trunc = tmp_path / "g.csv.gz"
  _write(trunc, TEXT * 200)
  trunc.write_bytes(trunc.read_bytes()[:-20])
  with pytest.raises(DataError, match=r"g\.csv\.gz"):
    read_table(str(trunc), COLS)


def test_items_tables():
  for table in (it.MIMIC3_ITEMS, it.MIMIC4_ITEMS):
    ids = [i.itemid for i in table]
    assert len(ids) == len(set(ids))
    assert {i.channel for i in table} == set(it.MIMIC_CHANNELS)
  assert all(i.system == "metavision" for i in it.MIMIC4_ITEMS)
  assert {i.itemid for i in it.MIMIC4_ITEMS} - {i.itemid for i in it.MIMIC3_ITEMS} == {225309,
                                                                                       225310}
  np.testing.assert_allclose(it.fahrenheit_to_celsius(np.array([98.6, 212.0, 32.0])),
                             [37.0, 100.0, 0.0])
  table = it.ItemTable(it.MIMIC3_ITEMS, it.MIMIC_CHANNELS)
  ids = np.array([211, 678, 646, 646, 615, 999999, -1, 50])
  np.testing.assert_array_equal(table.channel_of(ids), [0, 5, 6, 6, 4, -1, -1, -1])
  v, ok = table.convert(ids[:5], np.array([300.0, 98.6, 100.0, 100.5, 69.9]))
  np.testing.assert_array_equal(ok, [False, True, True, False, True])
  np.testing.assert_allclose(v[1], 37.0)


def test_grid_accumulator_means_window_and_padding():
  acc = GridAccumulator(2, Grid(steps=4, step_seconds=60), 2, stay_seconds=np.array([150, 1000]))
  added = acc.add(np.array([0, 0, 0, 0, 1, 1, 1]), np.array([0, 59, 60, 150, -1, 239, 240]),
                  np.array([0, 0, 1, 0, 1, 1, 1]), np.array([1.0, 2.0, 5.0, 9.0, 7.0, 8.0, 9.0]))
  assert added == 4  # 150 s is at stay 0's discharge; -1 s and 240 s are outside the window.
  np.testing.assert_array_equal(acc.steps_in_stay(), [3, 4])
  x, mask = acc.finish()
  np.testing.assert_allclose(x[0, 0, 0], 1.5)
  np.testing.assert_allclose(x[0, 1, 1], 5.0)
  np.testing.assert_allclose(x[1, 3, 1], 8.0)
  assert mask.sum() == 3 and np.isnan(x[~mask]).all()
  assert HOURLY_24H.window_seconds == 86400


def test_compact_is_boolean_indexing_in_place():
  a = np.arange(40.0).reshape(10, 2, 2)
  keep = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1], bool)
  expected = a[keep].copy()
  out = compact(a, keep, chunk=2)
  np.testing.assert_array_equal(out, expected)
  assert np.shares_memory(out, a)


def test_cohort_helpers():
  keep = first_per_group(np.array([5, 4, 5, 4, 6]), np.array([3, 2, 1, 2, 0]),
                         np.array([0, 9, 1, 8, 0]))
  np.testing.assert_array_equal(keep, [False, False, True, True, True])
  np.testing.assert_array_equal(
      lookup(np.array([3, 1, 7]), np.array([1, 2, 3]), np.array([10, 20, 30]), -1), [30, 10, -1])
  np.testing.assert_array_equal(lookup(np.array([3]), np.array([], int), np.array([], int), -1),
                                [-1])
  t = np.array(["2150-01-01T00:00:00", "2189-12-31T23:59:59"], "datetime64[s]").astype(np.int64)
  np.testing.assert_array_equal(calendar_year(t), [2150, 2189])
  flow = Flow({"id": np.array([2, 2])}, "all")
  with pytest.raises(DataError, match="stay id 2 appears more than once"):
    flow.cohort(np.array([2, 2]), np.zeros(2), np.ones(2), np.zeros(2), np.zeros(2), "x")
  flow.keep(np.array([False, False]), "none")
  with pytest.raises(DataError, match="no ICU stay is left"):
    flow.cohort(np.array([], int), [], [], [], [], "x")


def test_command_line(tmp_path):
  sys.path.insert(0, os.path.dirname(__file__))
  from test_extract_eicu import write_eicu

  d = write_eicu(tmp_path / "raw")
  out = tmp_path / "eicu.npz"
  cmd = [sys.executable, "-m", "tardiff_jax.data.extract", "--source=eicu", f"--raw_dir={d}",
         f"--out={out}", "--label=long_stay"]
  env = dict(os.environ, TARDIFF_QUIET="0")  # The progress lines are checked below.
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
  assert r.returncode == 0, r.stderr
  assert "3 stays x 288 steps of 5 min x 3 channels" in r.stdout
  assert "[vitalPeriodic.csv]" in r.stderr  # Progress while streaming.
  summary = json.load(open(str(out) + ".summary.json"))
  assert summary["stays"] == 3 and summary["label"] == "long_stay"
  assert summary["prevalence_mortality"] == pytest.approx(1 / 3)
  with np.load(out, allow_pickle=False) as z:
    np.testing.assert_array_equal(z["y"], [0, 1, 0])
  os.remove(os.path.join(d, "patient.csv"))
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "table 'patient' not found" in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["mimic3_mortality", "mimic3_los", "mimic4_mortality",
                                  "eicu_mortality", "eicu_los"])
def test_cohort_configs(name):
  from tardiff_jax.config import experiment_config, load_config

  cfg = experiment_config(load_config(name))  # Validates every section (the U-Net's levels too).
  assert (cfg.data.source, cfg.data.path) == ("file", f"cohorts/{name}.npz")
  assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.1, 0.1)  # 80/10/10.
  if name.startswith("eicu"):
    assert cfg.unet.channel_mult == (1, 2, 2, 2) and cfg.unet.attention_resolutions == (8,)
