"""Generation of cohorts larger than memory: fixed-size chunk files, resumable, one manifest.

`stream_generate` draws the same samples as `generate` (class-sorted labels, batch b keyed by
fold_in(key, b)) but writes every `chunk_size` samples to `chunk_<i>.npz` in `out_dir` and keeps
only one chunk in host memory. Chunk files are written atomically (a temporary file, then a
rename), so after a kill each chunk on disk is complete; a rerun with the same arguments skips
them and draws only the missing ones: nothing is drawn twice and nothing is lost. A
`stream.json` written first pins the settings (counts, shapes, batch and chunk sizes, key and
the caller's `meta`); a rerun with other settings stops with an error instead of mixing chunks.
`manifest.json`, written last, lists every chunk with its rows, first index and SHA-256; its
presence means the cohort is complete. Read a cohort back with `iter_chunks` or `load_stream`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.sampling.generate import draw_batch
from tardiff_jax.training.progress import Progress

MANIFEST = "manifest.json"
SETTINGS = "stream.json"


def chunk_name(i: int) -> str:
  return f"chunk_{i:06d}.npz"


def _settings(counts: np.ndarray, shape_tc: tuple[int, int], batch_size: int, chunk_size: int,
              key: jax.Array, meta: dict[str, Any] | None) -> dict[str, Any]:
  key_data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
      key.dtype, jax.dtypes.prng_key) else key)
  return {"counts": [int(c) for c in counts], "num_samples": int(counts.sum()),
          "shape_tc": [int(s) for s in shape_tc], "batch_size": int(batch_size),
          "chunk_size": int(chunk_size), "key": key_data.ravel().tolist(), "meta": meta or {}}


def _chunk_ok(path: str, rows: int) -> bool:
  """A chunk on disk is complete when it loads and has its rows (writes are atomic, so a
  partial file cannot appear; this also rejects a file damaged by other means)."""
  try:
    with np.load(path) as z:
      return z["x"].shape[0] == rows and z["y"].shape == (rows,)
  except (OSError, ValueError, KeyError):
    return False


def stream_generate(sample_fn_jitted: Callable[..., Any], params, gparams, key: jax.Array,
                    counts: Sequence[int], shape_tc: tuple[int, int], batch_size: int,
                    out_dir: str | os.PathLike, *, chunk_size: int | None = None,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    extra: dict[str, np.ndarray] | None = None,
                    meta: dict[str, Any] | None = None, progress: bool = True,
                    place_fn: Callable[[np.ndarray], Any] | None = None) -> dict[str, Any]:
  """Draws counts[k] samples of class k into chunk files under `out_dir`; returns the manifest.

  Args:
    sample_fn_jitted, params, gparams, key, counts, shape_tc, batch_size, place_fn: as
      `generate` (the concatenated chunks equal its output for the same arguments).
    chunk_size: samples per chunk file, a multiple of `batch_size` (default 64 batches); host
      memory holds one chunk.
    transform: applied to each chunk's x before it is written (e.g. back to original units).
    extra: arrays stored in every chunk (e.g. channel and class names).
    meta: JSON-serialisable settings pinned in stream.json and copied to the manifest (e.g. the
      method, its scale and the model's fingerprint); a rerun must pass the same.
  """
  counts = np.asarray(counts, np.int64)
  if counts.ndim != 1 or np.any(counts < 0):
    raise ValueError(f"counts must be non-negative, one per class, got {counts}.")
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  chunk_size = int(64 * batch_size if chunk_size is None else chunk_size)
  if chunk_size < batch_size or chunk_size % batch_size:
    raise ValueError(f"chunk_size must be a positive multiple of batch_size={batch_size}, "
                     f"got {chunk_size}.")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  settings = _settings(counts, shape_tc, batch_size, chunk_size, key, meta)
  settings_path = os.path.join(out_dir, SETTINGS)
  if os.path.exists(settings_path):
    found = tio.read_json(settings_path)
    if found != settings:
      diff = sorted(k for k in settings if found.get(k) != settings[k])
      raise ValueError(f"{out_dir} holds a generation with other settings ({', '.join(diff)}); "
                       "use another directory or remove it.")
  else:
    tio.write_json(settings_path, settings)
  manifest_path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(manifest_path):
    return tio.read_json(manifest_path)

  for name in os.listdir(out_dir):  # temporaries of chunk writes a kill interrupted
    if name.startswith(".tmp-chunk_") and tio.is_writer():
      os.unlink(os.path.join(out_dir, name))
  labels = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
  n, per_chunk = labels.size, chunk_size // batch_size
  num_chunks = math.ceil(n / chunk_size)
  rows = [min(chunk_size, n - i * chunk_size) for i in range(num_chunks)]
  done = [_chunk_ok(os.path.join(out_dir, chunk_name(i)), rows[i]) for i in range(num_chunks)]
  have = sum(r for r, d in zip(rows, done) if d)
  prog = Progress("generate", total=n, unit="samples", quiet=not progress)
  if have and progress:
    print(f"[generate] resuming: {sum(done)}/{num_chunks} chunks ({have} samples) on disk",
          file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  t_len, c_len = (int(s) for s in shape_tc)
  for i in range(num_chunks):
    if done[i]:
      continue
    lo = i * chunk_size
    x = np.empty((rows[i], t_len, c_len), np.float32)
    for j in range(math.ceil(rows[i] / batch_size)):
      b = i * per_chunk + j
      a, z = j * batch_size, min((j + 1) * batch_size, rows[i])
      x[a:z] = draw_batch(sample_fn_jitted, params, gparams, key, labels, b, batch_size,
                          (t_len, c_len), place_fn)
      have += z - a
      prog.report(have, elapsed_s=time.perf_counter() - t0)
    if transform is not None:
      x = np.asarray(transform(x), np.float32)
    tio.write_npz(os.path.join(out_dir, chunk_name(i)), x=x, y=labels[lo:lo + rows[i]],
                  **(extra or {}))
  chunks = [{"file": chunk_name(i), "rows": rows[i], "first_index": i * chunk_size,
             "sha256": tio.file_sha256(os.path.join(out_dir, chunk_name(i)))}
            for i in range(num_chunks)]
  manifest = dict(settings, chunks=chunks,
                  class_counts={str(k): int(c) for k, c in enumerate(counts)})
  tio.write_json(manifest_path, manifest)
  return manifest


def iter_chunks(out_dir: str | os.PathLike, verify: bool = False
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (x, y) of each chunk of a complete generation in order (one chunk in memory);
  `verify` checks each file's SHA-256 against the manifest first."""
  out_dir = os.fspath(out_dir)
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: the generation in {out_dir} is not complete "
                            "(rerun the same command to finish it).")
  for c in tio.read_json(path)["chunks"]:
    f = os.path.join(out_dir, c["file"])
    if verify and tio.file_sha256(f) != c["sha256"]:
      raise ValueError(f"{f}: SHA-256 differs from the manifest (file changed or damaged).")
    with np.load(f) as z:
      yield z["x"], z["y"]


def load_stream(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """All chunks of a complete generation concatenated (for cohorts that fit in memory)."""
  parts = list(iter_chunks(out_dir))
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
