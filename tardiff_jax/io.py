"""Atomic file writes: a killed run never leaves a half-written file that a later run trusts.

Every file the package writes into a workdir goes through here: write to a temporary file in
the same directory, flush and fsync, then `os.replace` (atomic on POSIX). In a multi-process
run only process 0 writes (`set_writer`, called by `tardiff_jax.parallel.initialize`): on the
others every write here is computed and discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)
_WRITER = [True]


def set_writer(writer: bool) -> None:
  """Whether this process writes files (False on every process but 0 of a multi-process run)."""
  _WRITER[0] = bool(writer)


def is_writer() -> bool:
  return _WRITER[0]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
  """Opens a temporary sibling of `path` for writing and renames it onto `path` on success (on a
  process that does not write, an in-memory file that is dropped)."""
  if not _WRITER[0]:
    yield io.BytesIO() if "b" in mode else io.StringIO()
    return
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions.
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_open(path, "w") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
  """Writes JSON atomically; numpy scalars and arrays are converted to Python values."""
  write_text(path, json.dumps(obj, indent=indent, default=_json_default, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """Writes an uncompressed `.npz` atomically (no object arrays: loadable with
  allow_pickle=False)."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Appends one JSON line; a torn last line from a crash is skipped by `read_jsonl`."""
  if not _WRITER[0]:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")
    f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSON-lines file, ignoring a final line torn by a crash."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  """Hex sha256 of a file's bytes (checksums of artifacts and checkpoints)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def _json_default(o: Any) -> Any:
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if hasattr(o, "__array__"):
    return np.asarray(o).tolist()
  raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")
