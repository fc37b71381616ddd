"""All orbax calls live here: one checkpoint directory per trained model.

A checkpoint holds a pytree `state` (params, EMA, optimiser state, step, rng...) and a JSON
`meta` dict (the config, the normaliser, TimesNet periods, ...). Saves are atomic (orbax writes
to a temporary directory and renames), so a killed run resumes from its last complete step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointStore:
  """A thin wrapper over `ocp.CheckpointManager` with `state` + `meta` items.

  Use as a context manager:
    with CheckpointStore(workdir/"checkpoints"/"diffusion") as store:
      store.save(step, state, meta={"config": ...})
      state, meta = store.restore(abstract_state)
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def __enter__(self) -> CheckpointStore:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None,
           force: bool = True) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`; blocks."""
    state = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(_jsonable(meta or {}))),
        force=force)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) at `step` (default: latest) into the structure of `abstract_state`.

    `abstract_state` is a pytree with the target structure (arrays or ShapeDtypeStructs), e.g.
    the freshly initialised state.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
        if not isinstance(a, jax.ShapeDtypeStruct) else a, abstract_state)
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """Restores only the JSON meta dict (e.g. the config needed to rebuild the model)."""
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])


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
