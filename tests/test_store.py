"""The workdir's artifact store (content addressing, checksums, manifest) and its lock."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tardiff_jax import io as tio
from tardiff_jax.experiment.store import ArtifactStore, CorruptArtifactError, settings_digest
from tardiff_jax.experiment.workdir import Workdir, WorkdirLockedError


def test_keys_are_content_addressed():
  s = ArtifactStore("/nonexistent")
  a = s.key("protocol", "trtr", {"b": [1, 2], "a": (1.5, "x")})
  assert a == s.key("protocol", "trtr", {"a": [1.5, "x"], "b": (1, 2)})  # order, tuple/list
  assert a != s.key("protocol", "trtr", {"a": [1.5, "x"], "b": (1, 3)})
  assert a.relpath == os.path.join("eval", f"trtr-{a.digest[:16]}.json")
  assert settings_digest({"x": np.float32(1.0)}) == settings_digest({"x": 1.0})
  with pytest.raises(ValueError, match="Unknown artifact kind"):
    s.key("cache", "x", {})


def test_write_read_and_manifest(tmp_path):
  s = ArtifactStore(str(tmp_path))
  k = s.key("fidelity", "fidelity_x", {"seed": 0})
  assert s.read_json(k) is None
  s.write_json(k, {"mir": 0.5}, seconds=1.5)
  arr = s.key("synthetic", "unguided", {"seed": 0}, ext="npz")
  s.write_arrays(arr, {"x": np.ones((2, 3, 1), np.float32), "y": np.array([0, 1])})
  again = ArtifactStore(str(tmp_path))  # A fresh process sees what was recorded.
  assert again.read_json(k) == {"mir": 0.5} and again.seconds(k) == 1.5
  np.testing.assert_array_equal(again.read_arrays(arr)["x"], np.ones((2, 3, 1)))
  entry = again.entry(k)
  assert entry["sha256"] == tio.file_sha256(again.path(k)) and entry["settings"] == {"seed": 0}
  # A file written without its manifest entry (a kill between the two writes) does not count.
  orphan = s.key("fidelity", "fidelity_y", {"seed": 1})
  tio.write_json(s.path(orphan), {"mir": 0.9})
  assert again.read_json(orphan) is None
  ro = ArtifactStore(str(tmp_path), readonly=True)
  with pytest.raises(PermissionError, match="read-only"):
    ro.write_json(orphan, {})


def test_damaged_artifact_stops_with_its_name(tmp_path):
  s = ArtifactStore(str(tmp_path))
  k = s.key("synthetic", "tardiff", {"w": 3.0}, ext="npz")
  s.write_arrays(k, {"x": np.zeros((4, 5, 2), np.float32)})
  path = s.path(k)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 7)
  with pytest.raises(CorruptArtifactError, match=f"{path} is damaged.*Delete the file"):
    ArtifactStore(str(tmp_path)).read_arrays(k)
  os.remove(path)  # Deleting it means: compute it again.
  assert ArtifactStore(str(tmp_path)).read_arrays(k) is None
  with open(os.path.join(tmp_path, "manifest.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(CorruptArtifactError, match="manifest.json is not valid JSON"):
    ArtifactStore(str(tmp_path)).read_arrays(k)


def test_workdir_lock_is_exclusive_and_dies_with_its_process(tmp_path):
  a, b = Workdir(tmp_path), Workdir(tmp_path)
  a.acquire()
  with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
    b.acquire()
  a.release()
  b.acquire()
  b.release()
  code = ("import sys, time; from tardiff_jax.experiment.workdir import Workdir; "
          f"Workdir({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  with pytest.raises(WorkdirLockedError, match=f"pid {proc.pid}"):
    a.acquire()
  proc.kill()  # kill -9: the OS drops the lock with the process, no stale lock file blocks.
  proc.wait()
  t0 = time.time()
  a.acquire()
  assert time.time() - t0 < 5
  a.release()
