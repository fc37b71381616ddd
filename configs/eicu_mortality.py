"""eICU, hospital mortality: 288 five-minute steps x 3 vitals of the first 24 h in the ICU.

Make the cohort first (README, "Using MIMIC-III, MIMIC-IV or eICU"):
  python -m tardiff_jax.data.extract --source=eicu --raw_dir=/path/to/eicu \
      --label=mortality --out=cohorts/eicu_mortality.npz
then: tardiff --config=configs/eicu_mortality.py --workdir=runs/eicu_mortality
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
  c.data.path = "cohorts/eicu_mortality.npz"  # Relative path; or --config.data.path.
  # T = 288 five-minute steps: one more halving than the default U-Net (288 -> 144 -> 72 -> 36)
  # and self-attention only at the coarsest level (36 positions), where it is cheap: at T = 288
  # its training step ran 1.4x as fast as the default U-Net's, 4-8x slower per example than at
  # T = 24 (benchmarks/results/bench_long_series.md).
  c.unet.channel_mult = (1, 2, 2, 2)  # Four levels, downsampling factors 1, 2, 4, 8.
  c.unet.attention_resolutions = (8,)  # Attention at factor 8 only (36 positions).
  return c
