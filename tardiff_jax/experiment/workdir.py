"""A run's directory: where everything lives, and the lock that keeps two runs out of it.

  config.json             the typed config of the last invocation
  manifest.json           the artifact store's index (settings digest, sha256, seconds)
  checkpoints/diffusion/  the denoiser (orbax, with checksums.json)
  checkpoints/classifier/ the guidance classifier (orbax, with checksums.json)
  checkpoints/sampler_fit/ the sampler's fits to the denoiser (gamma, x0 calibration)
  guidance/               the guidance cache G, gradient norms, the scale sweep
  synthetic/<method>.npz  each method's synthetic set in original units, with channel and
                          class names (synthetic/sets/ holds the store's normalised copies)
  eval/                   one result per protocol setting and fidelity score
  stages/                 wall time of each trained model
  metrics.jsonl, report.json, report.md, plots/*.png
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from tardiff_jax import io as tio

LOCK = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another process is running in this workdir."""


class Workdir:
  """Paths inside a run's directory, and an exclusive lock (`acquire` / `release`)."""

  def __init__(self, path: str | os.PathLike):
    self.root = os.path.abspath(os.fspath(path))
    self._lock_fd: int | None = None

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  @property
  def config_json(self) -> str:
    return self.path("config.json")

  @property
  def denoiser_dir(self) -> str:
    return self.path("checkpoints", "diffusion")

  @property
  def guide_dir(self) -> str:
    return self.path("checkpoints", "classifier")

  @property
  def metrics(self) -> str:
    return self.path("metrics.jsonl")

  def synthetic(self, method: str) -> str:
    return self.path("synthetic", f"{method}.npz")

  def acquire(self) -> None:
    """Takes the workdir's lock (an flock on `.lock`, released by the OS if the process dies,
    so a killed run never leaves a stale lock). Raises WorkdirLockedError naming the holder."""
    if self._lock_fd is not None or not tio.is_writer():
      return  # In a multi-process run process 0 holds the lock for all.
    os.makedirs(self.root, exist_ok=True)
    fd = os.open(self.path(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirLockedError(
            f"{self.root} is in use by another tardiff run (pid {holder}); wait for it to "
            "finish or use another --workdir.") from None
      raise
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    self._lock_fd = fd

  def release(self) -> None:
    if self._lock_fd is not None:
      with contextlib.suppress(OSError):
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
      os.close(self._lock_fd)
      self._lock_fd = None
