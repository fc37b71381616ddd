"""Streaming generation: chunks equal the in-memory generation, a SIGKILLed run resumes without
drawing a batch twice or losing one, settings are pinned, the manifest checks its files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax import io as tio
from tardiff_jax.sampling.generate import generate
from tardiff_jax.sampling.stream import (
  MANIFEST,
  chunk_name,
  iter_chunks,
  load_stream,
  stream_generate,
)

SHAPE = (5, 2)
COUNTS = (23, 14)  # 37 samples: batches of 4 -> 10 batches, chunks of 8 -> 5 chunks (last 5)


@jax.jit
def _toy(params, gparams, key, y):
  return (jax.random.normal(key, (y.shape[0], *SHAPE)) + params
          + gparams * y.astype(jnp.float32)[:, None, None])


class Counting:
  """A toy sampler (params, gparams, key, y, shape) that counts its calls."""

  def __init__(self):
    self.calls = 0

  def __call__(self, params, gparams, key, y, shape):
    assert shape == (y.shape[0], *SHAPE)
    self.calls += 1
    return _toy(params, gparams, key, jnp.asarray(y))


KEY = jax.random.PRNGKey(3)


def test_chunks_equal_in_memory_generation(tmp_path):
  x_ref, y_ref = generate(Counting(), 0.5, 2.0, KEY, COUNTS, SHAPE, 4, progress=False)
  sampler = Counting()
  man = stream_generate(sampler, 0.5, 2.0, KEY, COUNTS, SHAPE, 4, tmp_path, chunk_size=8,
                        transform=lambda x: 10.0 * x, extra={"names": np.array(["a", "b"])},
                        meta={"method": "toy"}, progress=False)
  assert sampler.calls == 10
  assert [c["rows"] for c in man["chunks"]] == [8, 8, 8, 8, 5]
  assert [c["first_index"] for c in man["chunks"]] == [0, 8, 16, 24, 32]
  assert man["class_counts"] == {"0": 23, "1": 14} and man["meta"] == {"method": "toy"}
  x, y = load_stream(tmp_path)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(x, 10.0 * x_ref, rtol=1e-6)
  with np.load(tmp_path / chunk_name(0)) as z:
    assert list(z["names"]) == ["a", "b"]
  # Complete: a rerun draws nothing and returns the same manifest.
  again = Counting()
  assert stream_generate(again, 0.5, 2.0, KEY, COUNTS, SHAPE, 4, tmp_path, chunk_size=8,
                         transform=lambda x: 10.0 * x, extra={"names": np.array(["a", "b"])},
                         meta={"method": "toy"}, progress=False) == man
  assert again.calls == 0
  # The manifest's hashes catch a changed file.
  tio.write_npz(tmp_path / chunk_name(2), x=np.zeros((8, *SHAPE), np.float32),
                y=np.zeros(8, np.int32))
  with pytest.raises(ValueError, match="SHA-256"):
    list(iter_chunks(tmp_path, verify=True))


def test_settings_are_pinned_and_arguments_checked(tmp_path):
  stream_generate(Counting(), 0.5, 2.0, KEY, COUNTS, SHAPE, 4, tmp_path, chunk_size=8,
                  meta={"scale": 1.0}, progress=False)
  for kwargs in ({"meta": {"scale": 2.0}}, {"chunk_size": 12, "meta": {"scale": 1.0}}):
    with pytest.raises(ValueError, match="other settings"):
      stream_generate(Counting(), 0.5, 2.0, KEY, COUNTS, SHAPE, 4, tmp_path, progress=False,
                      **kwargs)
  with pytest.raises(ValueError, match="multiple of batch_size"):
    stream_generate(Counting(), 0.5, 2.0, KEY, COUNTS, SHAPE, 4, tmp_path / "b", chunk_size=6)
  with pytest.raises(FileNotFoundError, match="not complete"):
    next(iter_chunks(tmp_path / "nothing"))


WORKER = textwrap.dedent("""
  import sys, time
  import jax
  sys.path.insert(0, {tests!r})
  import test_stream as t
  from tardiff_jax.sampling.stream import stream_generate

  def slow(*args):
    time.sleep(0.4)
    return t.Counting()(*args)

  stream_generate(slow, 0.5, 2.0, t.KEY, t.COUNTS, t.SHAPE, 4, {out!r}, chunk_size=8,
                  progress=False)
""")


def test_killed_generation_resumes_without_duplicates_or_losses(tmp_path):
  out = tmp_path / "gen"
  code = WORKER.format(tests=os.path.dirname(__file__), out=str(out))
  proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
  try:
    deadline = time.time() + 120
    while not (out / chunk_name(1)).exists():  # two chunks on disk, the third being drawn
      assert proc.poll() is None and time.time() < deadline, "worker ended or hung"
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert not (out / MANIFEST).exists()
  on_disk = sorted(p.name for p in out.glob("chunk_*.npz"))
  assert 2 <= len(on_disk) < 5
  sampler = Counting()
  stream_generate(sampler, 0.5, 2.0, KEY, COUNTS, SHAPE, 4, out, chunk_size=8, progress=False)
  assert sampler.calls == 10 - 2 * len(on_disk)  # only the missing chunks' batches were drawn
  x, y = load_stream(out)
  x_ref, y_ref = generate(Counting(), 0.5, 2.0, KEY, COUNTS, SHAPE, 4, progress=False)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(x, x_ref)
