"""One content-addressed artifact store for everything a run computes besides its checkpoints.

An artifact is named by its kind, a short name and the digest of the settings that produced it
(canonical JSON, sha256): the same settings give the same file, changed settings a new one, so
no stage keeps a cache of its own. Files are written atomically, then recorded in
`manifest.json` (atomically too) with their sha256, size, seconds and settings. An artifact
counts only once it is in the manifest (a run killed between the two writes recomputes it), and
reading one verifies its checksum: a truncated or altered file stops the run with
`CorruptArtifactError` naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tardiff_jax import io as tio

MANIFEST = "manifest.json"
FOLDERS = {
    "sampler_fit": os.path.join("checkpoints", "sampler_fit"),
    "guidance_cache": "guidance", "grad_norms": "guidance", "selection": "guidance",
    "guide_quality": "guidance", "class_balance": "guidance", "guide_members": "guidance",
    "synthetic": os.path.join("synthetic", "sets"),
    "protocol": "eval", "fidelity": "eval",
    "timing": "stages",
}


class CorruptArtifactError(RuntimeError):
  """An artifact's bytes differ from the checksum recorded when it was written."""


def settings_digest(settings: Any) -> str:
  """sha256 of the canonical JSON of `settings` (sorted keys; tuples as lists)."""
  text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=_default)
  return hashlib.sha256(text.encode()).hexdigest()


def _default(o: Any) -> Any:
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"{type(o).__name__} is not part of an artifact's settings")


@dataclasses.dataclass(frozen=True)
class ArtifactKey:
  """Where an artifact lives: `<folder of kind>/<name>-<digest[:16]>.<ext>`."""
  kind: str
  name: str
  digest: str
  ext: str
  settings: Any = dataclasses.field(compare=False, repr=False, default=None)

  @property
  def relpath(self) -> str:
    return os.path.join(FOLDERS[self.kind], f"{self.name}-{self.digest[:16]}.{self.ext}")


class ArtifactStore:
  """Artifacts under `root` (a workdir), indexed by `root/manifest.json`.

  Only one process writes a workdir (its lock; in a multi-process run, process 0: the others
  compute the same artifacts and discard them); `readonly` stores refuse writes.
  """

  def __init__(self, root: str, readonly: bool = False):
    self.root = os.path.abspath(root)
    self.readonly = readonly
    self._manifest: dict[str, Any] | None = None

  # ------------------------------------------------------------------ keys and the manifest
  def key(self, kind: str, name: str, settings: Any, ext: str = "json") -> ArtifactKey:
    if kind not in FOLDERS:
      raise ValueError(f"Unknown artifact kind {kind!r}; expected one of {sorted(FOLDERS)}.")
    return ArtifactKey(kind, name, settings_digest(settings), ext, settings)

  def _load_manifest(self) -> dict[str, Any]:
    if self._manifest is None:
      path = os.path.join(self.root, MANIFEST)
      self._manifest = {"format": 1, "artifacts": {}}
      if os.path.exists(path):
        try:
          self._manifest = tio.read_json(path)
        except ValueError as e:
          raise CorruptArtifactError(f"{path} is not valid JSON ({e}); it indexes the run's "
                                     "artifacts: delete it to recompute them.") from e
    return self._manifest

  def entry(self, key: ArtifactKey) -> dict[str, Any] | None:
    """The manifest record of `key` (None when it was never completed)."""
    return self._load_manifest()["artifacts"].get(key.relpath)

  def entries(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
    arts = self._load_manifest()["artifacts"]
    return {p: e for p, e in arts.items() if kind is None or e["kind"] == kind}

  def path(self, key: ArtifactKey) -> str:
    return os.path.join(self.root, key.relpath)

  def verified_path(self, key: ArtifactKey) -> str | None:
    """The artifact's file when it is complete and intact; None when absent (never completed,
    or deleted to be recomputed). Raises CorruptArtifactError when its bytes do not match the
    recorded checksum."""
    rec = self.entry(key)
    path = self.path(key)
    if rec is None or not os.path.exists(path):
      return None
    got = tio.file_sha256(path)
    if got != rec["sha256"]:
      raise CorruptArtifactError(
          f"{path} is damaged: its sha256 is {got[:12]}..., {MANIFEST} recorded "
          f"{rec['sha256'][:12]}... when it was written. Delete the file to recompute it.")
    return path

  def _record(self, key: ArtifactKey, seconds: float | None) -> None:
    if not tio.is_writer():  # Another process of a multi-process run writes (and records).
      return
    path = self.path(key)
    manifest = self._load_manifest()
    manifest["artifacts"][key.relpath] = {
        "kind": key.kind, "name": key.name, "digest": key.digest,
        "sha256": tio.file_sha256(path), "bytes": os.path.getsize(path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": None if seconds is None else float(seconds), "settings": key.settings}
    tio.write_json(os.path.join(self.root, MANIFEST), manifest)

  def check_writable(self, key: ArtifactKey) -> None:
    """Raises before any work is spent on an artifact that a read-only store cannot keep."""
    if self.readonly:
      raise PermissionError(f"This run was opened read-only; {key.relpath} is not computed yet. "
                            "Run the pipeline on the workdir first.")

  # ------------------------------------------------------------------ typed reads and writes
  def seconds(self, key: ArtifactKey) -> float | None:
    rec = self.entry(key)
    return None if rec is None else rec.get("seconds")

  def read_json(self, key: ArtifactKey) -> Any:
    path = self.verified_path(key)
    return None if path is None else tio.read_json(path)

  def write_json(self, key: ArtifactKey, obj: Any, seconds: float | None = None) -> None:
    self.check_writable(key)
    tio.write_json(self.path(key), obj)
    self._record(key, seconds)

  def read_arrays(self, key: ArtifactKey) -> dict[str, np.ndarray] | None:
    path = self.verified_path(key)
    if path is None:
      return None
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}

  def write_arrays(self, key: ArtifactKey, arrays: Mapping[str, np.ndarray],
                   seconds: float | None = None) -> None:
    self.check_writable(key)
    tio.write_npz(self.path(key), **arrays)
    self._record(key, seconds)

  def write_with(self, key: ArtifactKey, writer: Callable[[str], None],
                 seconds: float | None = None) -> None:
    """Writes an artifact with a custom (atomic) `writer(path)`, then records it."""
    self.check_writable(key)
    writer(self.path(key))
    self._record(key, seconds)
