"""Real EHR inputs: MIMIC-III, MIMIC-IV and eICU CSV tables -> the data contract's `.npz`.

`extract(source, raw_dir)` streams the official tables (`tables`), selects the cohort (`cohort`,
rules in each source module's docstring), bins the vital signs on a time grid from ICU admission
(`grid`, item ids in `items`) and returns an `Extraction`; `write_extraction` writes the `.npz`
and its summary. Command line: `python -m tardiff_jax.data.extract --source=mimic3 ...`.
"""

from __future__ import annotations

import os

from tardiff_jax.data.extract.eicu import extract_eicu
from tardiff_jax.data.extract.mimic3 import extract_mimic3
from tardiff_jax.data.extract.mimic4 import extract_mimic4
from tardiff_jax.data.extract.output import (
    LABELS,
    Extraction,
    format_summary,
    summary_path,
    write_extraction,
)
from tardiff_jax.data.extract.tables import DEFAULT_BLOCK_BYTES

SOURCES = {"mimic3": extract_mimic3, "mimic4": extract_mimic4, "eicu": extract_eicu}


def extract(source: str, raw_dir: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES,
            progress: bool = False) -> Extraction:
  """Extracts `source` ("mimic3", "mimic4" or "eicu") from the CSV tables in `raw_dir`."""
  if source not in SOURCES:
    raise ValueError(f"source={source!r}; expected one of {tuple(SOURCES)}.")
  return SOURCES[source](raw_dir, block_bytes=block_bytes, progress=progress)


__all__ = ["DEFAULT_BLOCK_BYTES", "Extraction", "LABELS", "SOURCES", "extract", "extract_eicu",
           "extract_mimic3", "extract_mimic4", "format_summary", "summary_path",
           "write_extraction"]
