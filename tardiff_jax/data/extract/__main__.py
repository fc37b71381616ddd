"""Command line: official MIMIC-III / MIMIC-IV / eICU CSV tables -> the data contract's `.npz`.

  python -m tardiff_jax.data.extract --source=mimic3 --raw_dir=/data/mimic-iii-1.4 \
      --out=cohorts/mimic3_mortality.npz --label=mortality

Writes `--out` and `<out>.summary.json` atomically, shows progress while streaming the large
table, and prints the summary (stays left after each cohort rule, label prevalences, missingness
per channel, rows read and rows/s). A bad input stops with a message naming the file and column.
"""

from __future__ import annotations

import sys

from absl import app, flags

from tardiff_jax.data.dataset import DataError
from tardiff_jax.data.extract import LABELS, SOURCES, extract, format_summary, write_extraction

_SOURCE = flags.DEFINE_enum("source", None, list(SOURCES), "Which database the tables come from.")
_RAW_DIR = flags.DEFINE_string(
    "raw_dir", None, "Folder of the official CSV tables (.csv or .csv.gz): MIMIC-III's folder, "
    "MIMIC-IV's release folder (with icu/ and hosp/), or eICU's folder.")
_OUT = flags.DEFINE_string("out", None, "Output .npz (its summary goes to <out>.summary.json).")
_LABEL = flags.DEFINE_enum("label", "mortality", list(LABELS),
                           "Label stored as `y` (both are stored as y_mortality, y_long_stay).")
_BLOCK_MB = flags.DEFINE_float(
    "block_mb", 4.0, "MB of CSV text per parsed block; the reader holds up to ~35 blocks.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show rows read and rows/s while streaming.")
flags.mark_flags_as_required(["source", "raw_dir", "out"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    ext = extract(_SOURCE.value, _RAW_DIR.value, block_bytes=int(_BLOCK_MB.value * 2**20),
                  progress=_PROGRESS.value)
    summary = write_extraction(ext, _OUT.value, _LABEL.value)
  except DataError as e:  # Bad raw input: the message names the file and column; no traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_summary(summary))


if __name__ == "__main__":
  app.run(main)
