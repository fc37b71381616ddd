"""MIMIC-III, in-hospital mortality: 24 hourly steps x 7 vitals of the first 24 h in the ICU.

Make the cohort first (README, "Using MIMIC-III, MIMIC-IV or eICU"):
  python -m tardiff_jax.data.extract --source=mimic3 --raw_dir=/path/to/mimic3 \
      --label=mortality --out=cohorts/mimic3_mortality.npz
then: tardiff --config=configs/mimic3_mortality.py --workdir=runs/mimic3_mortality
"""

import importlib.util
import os

import ml_collections

# Load the sibling default config by path: config files are loaded by path, not as a package.
_spec = importlib.util.spec_from_file_location(
    "_tardiff_default_config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config(variant)
  c.data.source = "file"  # A cohort written by `python -m tardiff_jax.data.extract` (README).
  c.data.path = "cohorts/mimic3_mortality.npz"  # Relative path; or --config.data.path.
  return c
