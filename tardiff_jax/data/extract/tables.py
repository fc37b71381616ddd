"""Streamed, typed reading of the official MIMIC / eICU CSV tables (plain or gzip) with pyarrow.

`pyarrow.csv.open_csv` parses one block at a time in C++, so a 33 GB CHARTEVENTS passes through in
memory bounded by the block size: its background reader queues up to about 32 blocks ahead of
the consumer (measured: peak Arrow allocation ~35 x block size whatever the file's length), hence
the 4 MB default (16 MB blocks cost ~0.5 GB for no speed-up). Only the declared columns are
converted, with the declared types (no type inference that a later block could contradict). Any
problem with a raw table (a missing file, a missing column, a value that does not parse as its
column's type, a malformed row) stops with a `DataError` naming the file and, where there is one,
the column.

Columns are matched case-insensitively, so MIMIC-III tables exported with lowercase headers work.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tardiff_jax.data.dataset import DataError
from tardiff_jax.training.progress import Progress

INT_NULL = np.iinfo(np.int64).min  # Null integers and timestamps come out as this value.
DEFAULT_BLOCK_BYTES = 4 << 20  # Bytes of CSV text per parsed block (~36k CHARTEVENTS rows).
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "time": pa.timestamp("s"),
                "str": pa.string()}


@dataclasses.dataclass(frozen=True)
class Column:
  """A column to read: its name in the official schema, its kind and whether it must exist.

  kind: "int" (int64, nulls -> INT_NULL), "float" (float64, nulls -> NaN), "time" (seconds since
  1970 as int64, nulls -> INT_NULL; the tables' "YYYY-MM-DD HH:MM:SS") or "str" (nulls -> "").
  """
  name: str
  kind: str
  required: bool = True

  def __post_init__(self):
    if self.kind not in _ARROW_TYPES:
      raise ValueError(f"column {self.name}: kind {self.kind!r} not in {tuple(_ARROW_TYPES)}.")


def find_table(raw_dir: str | os.PathLike, name: str) -> str:
  """Path of table `name` ("CHARTEVENTS", "icu/chartevents") as `.csv` or `.csv.gz` in `raw_dir`.

  The file name is matched case-insensitively; a plain `.csv` wins over `.csv.gz` (faster).
  """
  raw_dir = os.fspath(raw_dir)
  sub, base = os.path.split(name)
  directory = os.path.join(raw_dir, sub)
  wanted = (base + ".csv").lower(), (base + ".csv.gz").lower()
  entries = os.listdir(directory) if os.path.isdir(directory) else []
  for want in wanted:
    for entry in sorted(entries):
      path = os.path.join(directory, entry)
      if entry.lower() == want and os.path.isfile(path):
        return path
  raise DataError(f"{os.path.join(raw_dir, name)}.csv(.gz): table {name!r} not found: expected "
                  f"{name}.csv or {name}.csv.gz under {raw_dir}.")


def read_header(path: str) -> list[str]:
  """The column names of a CSV table (parses only its first block)."""
  raw, stream = _open(path)
  try:
    reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=1 << 20),
                            parse_options=pacsv.ParseOptions(newlines_in_values=True))
    names = list(reader.schema.names)
    reader.close()
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: not a readable CSV table ({e}).") from e
  finally:
    _close(raw, stream)
  if not names:
    raise DataError(f"{path}: empty file (no header row).")
  return names


class TableScan:
  """Iterates a table in blocks, each a dict {column name: numpy array}, in file order.

  Checks the header against `columns` up front. After (or during) iteration, `rows`, `batches`
  and `seconds` say how much was read. With `progress`, prints rows read, rows/s and the share of
  the (compressed) file consumed every `progress_every_s` seconds.
  """

  def __init__(self, path: str, columns: Sequence[Column], block_bytes: int = DEFAULT_BLOCK_BYTES,
               progress: bool = False, progress_every_s: float = 5.0):
    self.path, self.columns = path, tuple(columns)
    self.block_bytes = int(block_bytes)
    self.header = read_header(path)
    self.source_names = _resolve(path, self.header, self.columns)
    self.progress, self.progress_every_s = progress, progress_every_s
    self.rows = self.batches = 0
    self.seconds = 0.0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    present = {c.name: self.source_names[c.name] for c in self.columns
               if self.source_names[c.name] is not None}
    convert = pacsv.ConvertOptions(
        include_columns=list(present.values()),
        column_types={src: _ARROW_TYPES[c.kind] for c in self.columns
                      if (src := present.get(c.name)) is not None})
    read = pacsv.ReadOptions(block_size=self.block_bytes)
    # Free-text values (CHARTEVENTS.VALUE) may hold quoted line breaks; without this a break that
    # straddles two blocks fails to parse. Measured: no cost on a 5 M-row CHARTEVENTS.
    parse = pacsv.ParseOptions(newlines_in_values=True)
    raw, stream = _open(self.path)
    size = max(os.path.getsize(self.path), 1)
    bar = Progress(os.path.basename(self.path), total=max(1, round(size / 2**20)), unit="MB",
                   quiet=not self.progress)
    t0 = last = time.perf_counter()
    try:
      reader = self._guard(lambda: pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                                  convert_options=convert))
      while True:
        batch = self._guard(lambda: _next(reader))
        if batch is None:
          break
        out = {c.name: _column(batch, present.get(c.name), c.kind, batch.num_rows)
               for c in self.columns}
        self.rows += batch.num_rows
        self.batches += 1
        now = time.perf_counter()
        self.seconds = now - t0
        if self.progress and now - last >= self.progress_every_s:
          last = now
          bar.report(round(raw.tell() / 2**20), rows=self.rows, rows_per_s=self.rate)
        yield out
    finally:
      self.seconds = time.perf_counter() - t0
      _close(raw, stream)
    if self.progress:
      bar.report(bar.total, rows=self.rows, rows_per_s=self.rate)

  @property
  def rate(self) -> float:
    """Rows per second so far."""
    return self.rows / self.seconds if self.seconds > 0 else float("nan")

  def _guard(self, fn):
    """Runs a pyarrow read step, turning its errors into DataErrors naming file and column."""
    try:
      return fn()
    except pa.ArrowInvalid as e:
      msg = str(e)
      where = f"in the rows after data row {self.rows:,}"
      m = re.search(r"CSV column #(\d+)", msg)
      if m and int(m.group(1)) < len(self.header):
        col = self.header[int(m.group(1))]
        kind = next((c.kind for c in self.columns if self.source_names[c.name] == col), "?")
        raise DataError(f"{self.path}: column {col!r} ({kind}): a value does not parse, {where} "
                        f"({msg}).") from e
      raise DataError(f"{self.path}: malformed CSV {where} ({msg}).") from e
    except OSError as e:  # Truncated or corrupt gzip stream.
      raise DataError(f"{self.path}: read error after data row {self.rows:,} ({e}).") from e


def read_table(path: str, columns: Sequence[Column]) -> dict[str, np.ndarray]:
  """A whole (small) table as {column name: numpy array}."""
  parts = list(TableScan(path, columns))
  if not parts:
    return {c.name: _column(None, None, c.kind, 0) for c in columns}
  return {c.name: np.concatenate([p[c.name] for p in parts]) for c in columns}


def _resolve(path: str, header: list[str], columns: Sequence[Column]) -> dict[str, str | None]:
  by_lower: dict[str, str] = {}
  for h in header:
    by_lower.setdefault(h.lower(), h)
  names = {c.name: by_lower.get(c.name.lower()) for c in columns}
  missing = [c.name for c in columns if c.required and names[c.name] is None]
  if missing:
    shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
    raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(m) for m in missing)} (the file has: {shown}).")
  return names


def _open(path: str):
  """(raw file, stream): the stream decompresses `.gz`; the raw file's position tracks progress."""
  raw = pa.OSFile(path, "rb")
  if path.lower().endswith(".gz"):
    return raw, pa.CompressedInputStream(raw, "gzip")
  return raw, raw


def _close(raw, stream) -> None:
  stream.close()
  if raw is not stream and not raw.closed:
    raw.close()


def _next(reader) -> pa.RecordBatch | None:
  try:
    return reader.read_next_batch()
  except StopIteration:
    return None


_NULLS = {"int": (INT_NULL, np.int64), "time": (INT_NULL, np.int64), "float": (np.nan, np.float64),
          "str": ("", object)}


def _column(batch, source: str | None, kind: str, n: int) -> np.ndarray:
  if source is None:  # An optional column that the file does not have.
    fill, dtype = _NULLS[kind]
    return np.full(n, fill, dtype=dtype)
  arr = batch.column(source)
  if kind == "float":
    return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
  if kind == "str":
    return pc.fill_null(arr, "").to_numpy(zero_copy_only=False)
  if kind == "time":
    arr = arr.cast(pa.int64())
  return pc.fill_null(arr, INT_NULL).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
