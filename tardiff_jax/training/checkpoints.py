"""All orbax calls live here: one checkpoint directory per trained model, with checksums.

A checkpoint holds a pytree `state` (params, EMA, optimiser state, step, rng...) and a JSON
`meta` dict (the settings that shaped the model, the normaliser, TimesNet periods, ...). Orbax
writes each step to a temporary directory and renames it, so a killed run never leaves a
half-saved step. Beyond that, every saved step's files get sha256 checksums in
`<directory>/checksums.json`; a restore verifies them and, when a step is truncated or
corrupt (or orbax fails to read it), warns and falls back to the previous good step, or stops
with `CorruptCheckpointError` naming the directory when there is none.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tardiff_jax import io as tio
from tardiff_jax.parallel.sharding import to_host

CHECKSUMS = "checksums.json"


class CorruptCheckpointError(RuntimeError):
  """No step of a checkpoint directory passes its checksums and restores."""


def _step_dir(directory: str, step: int) -> str:
  return os.path.join(directory, str(int(step)))


def file_checksums(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in sorted(files):
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, root)] = tio.file_sha256(path)
  return dict(sorted(out.items()))


class CheckpointStore:
  """A thin wrapper over `ocp.CheckpointManager` with `state` + `meta` items and checksums.

  Use as a context manager:
    with CheckpointStore(workdir/"checkpoints"/"diffusion") as store:
      store.save(step, state, meta={"unet": ...})
      state, meta = store.restore(abstract_state)
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))
    self._bad: set[int] = set()

  def __enter__(self) -> CheckpointStore:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  # ------------------------------------------------------------------ checksums
  def _checksums(self) -> dict[str, dict[str, str]]:
    path = os.path.join(self.directory, CHECKSUMS)
    if not os.path.exists(path):
      return {}
    try:
      return dict(tio.read_json(path))
    except ValueError:
      return {}  # A damaged checksum file verifies nothing; orbax's own reads still do.

  def verify(self, step: int) -> bool:
    """Whether `step`'s files match their recorded checksums (a step saved without a record,
    e.g. killed between orbax's commit and the record, is checked by orbax's read alone)."""
    want = self._checksums().get(str(int(step)))
    if want is None:
      return True
    root = _step_dir(self.directory, step)
    return os.path.isdir(root) and file_checksums(root) == want

  def _good_steps(self) -> list[int]:
    """Steps newest first, without those that failed verification or restore."""
    return [s for s in sorted(self._manager.all_steps(), reverse=True) if s not in self._bad]

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    steps = self._good_steps()
    return steps[0] if steps else None

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None,
           force: bool = True) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`; blocks until
    written, then records the step's checksums."""
    state = to_host(state)
    if int(step) in self._bad and int(step) in self._manager.all_steps():
      self._manager.delete(int(step))  # The damaged copy of this step is replaced.
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(_jsonable(meta or {}))),
        force=force)
    self._manager.wait_until_finished()
    if tio.is_writer():  # With several processes orbax writes through process 0; so do we.
      sums = {k: v for k, v in self._checksums().items()
              if int(k) in set(self._manager.all_steps())}
      sums[str(int(step))] = file_checksums(_step_dir(self.directory, step))
      tio.write_json(os.path.join(self.directory, CHECKSUMS), sums)
    self._bad.discard(int(step))

  def _restore_good(self, step: int | None, args_fn) -> tuple[int, Any]:
    """Restores `step` (default: the newest good one), falling back to older steps when a step
    fails its checksums or orbax cannot read it."""
    candidates = self._good_steps() if step is None else [int(step)]
    if not candidates:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    problems = []
    for s in candidates:
      if not self.verify(s):
        problems.append(f"step {s}: files differ from their checksums")
      else:
        try:
          return s, self._manager.restore(s, args=args_fn())
        except Exception as e:  # noqa: BLE001 (orbax raises many kinds on damaged files)
          problems.append(f"step {s}: {type(e).__name__}: {e}")
      self._bad.add(s)
      print(f"[tardiff] WARNING: checkpoint {_step_dir(self.directory, s)} is damaged "
            f"({problems[-1]}); trying an older step.", file=sys.stderr, flush=True)
    raise CorruptCheckpointError(
        f"No usable checkpoint in {self.directory}: {'; '.join(problems)}. Delete the "
        "directory (or rerun with --retrain) to train again.")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) at `step` (default: the newest good step) into the structure of
    `abstract_state` (arrays or ShapeDtypeStructs, e.g. the freshly initialised state)."""
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
        if not isinstance(a, jax.ShapeDtypeStruct) else a, abstract_state)
    _, restored = self._restore_good(step, lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """Restores only the JSON meta dict (e.g. the settings needed to rebuild the model)."""
    _, restored = self._restore_good(step, lambda: ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])


# Meta entries that describe a checkpoint without identifying what it learned (the data
# settings are identified by a fingerprint of the data itself; a history is a result).
DESCRIPTIVE = ("data_config", "normalizer", "history", "final")


def meta_mismatch(saved: dict[str, Any], wanted: dict[str, Any],
                  ignore: tuple[str, ...] = ()) -> list[str]:
  """Dotted names of the entries in which two JSON meta dicts differ (lists and tuples compare
  equal), skipping `DESCRIPTIVE` entries and the dotted names in `ignore` (and everything below
  them)."""
  out: list[str] = []
  ignore = tuple(ignore) + DESCRIPTIVE

  def walk(a: Any, b: Any, path: str) -> None:
    if path in ignore:
      return
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    elif _jsonable(a) != _jsonable(b):
      out.append(path)

  walk(saved, wanted, "")
  return out


def _jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  return obj
