"""Loaders for user data: `.npz` (plain or pre-split) and, on explicit opt-in, the reference
code's pickled `(data[N, T, C], labels[N])` tuple.

`.npz` files are always opened with `allow_pickle=False`, so loading one never runs code.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.data.dataset import DataError, Dataset, Splits

_SPLITS = ("train", "val", "test")
_PICKLE_EXTS = (".pkl", ".pickle", ".pk")
_ZIP_MAGIC = b"PK"
_PICKLE_MAGIC = b"\x80"

PICKLE_REFUSAL = (
    "{path}: refusing to load a pickle. Unpickling runs arbitrary code from the file, so it is "
    "only done when you opt in (load_dataset(..., allow_pickle=True) or "
    "--config.data.allow_pickle=True) for files you trust. Better: convert it once to .npz:\n"
    "  import pickle, numpy as np\n"
    "  x, y = pickle.load(open('{path}', 'rb'))\n"
    "  np.savez('{stem}.npz', x=np.asarray(x, np.float32), y=np.asarray(y))")


def load_dataset(path: str | os.PathLike, allow_pickle: bool = False,
                 name: str | None = None) -> Dataset | Splits:
  """Loads a dataset file.

  `.npz` with arrays `x` [N, T, C], `y` [N] (optional `mask` [N, T, C], `channel_names` [C],
  `class_names` [K]) gives a `Dataset`; with `x_train/y_train/x_val/y_val/x_test/y_test`
  (optional `mask_<split>`) it gives `Splits`. A `.pkl`/`.pickle` holding `(data, labels)` is
  read only with `allow_pickle=True`. Raises `DataError` naming the file, array and problem.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found.")
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, expected a .npz or pickle file.")
  ext = os.path.splitext(path)[1].lower()
  name = name or os.path.splitext(os.path.basename(path))[0]
  with open(path, "rb") as f:
    head = f.read(4)
  if ext == ".npz":
    if not head.startswith(_ZIP_MAGIC):
      looks_pickled = head.startswith(_PICKLE_MAGIC)
      hint = " (it looks like a pickle; rename it to .pkl)" if looks_pickled else ""
      raise DataError(f"{path}: not a valid .npz (zip) file{hint}.")
    return _load_npz(path, name)
  if ext in _PICKLE_EXTS:
    if head.startswith(_ZIP_MAGIC):
      raise DataError(f"{path}: has a pickle extension but is a zip file (an .npz?); rename it.")
    if not allow_pickle:
      stem = os.path.splitext(path)[0]
      raise DataError(PICKLE_REFUSAL.format(path=path, stem=stem))
    return _load_pickle(path, name)
  raise DataError(f"{path}: unsupported extension {ext!r}; expected .npz or (opt-in) "
                  f"{'/'.join(_PICKLE_EXTS)}.")


def _load_npz(path: str, name: str) -> Dataset | Splits:
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: _read_member(z, k, path) for k in z.files}
  except DataError:
    raise
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}).") from e
  channel_names = _names(arrays.get("channel_names"), path, "channel_names")
  class_names = _names(arrays.get("class_names"), path, "class_names")
  presplit = [f"x_{s}" for s in _SPLITS]
  if any(k in arrays for k in presplit):
    missing = [k for s in _SPLITS for k in (f"x_{s}", f"y_{s}") if k not in arrays]
    if missing:
      raise DataError(f"{path}: pre-split file lacks arrays {missing}; has {sorted(arrays)}.")
    parts = {s: _make(path, f"{name}/{s}", arrays[f"x_{s}"], arrays[f"y_{s}"],
                      arrays.get(f"mask_{s}"), channel_names, class_names, suffix=f"_{s}")
             for s in _SPLITS}
    return _check_splits(path, parts, class_names)
  if "x" not in arrays or "y" not in arrays:
    raise DataError(f"{path}: expected arrays 'x' and 'y' (or x_train/y_train/...); has "
                    f"{sorted(arrays)}.")
  ds = _make(path, name, arrays["x"], arrays["y"], arrays.get("mask"), channel_names, class_names)
  _check_classes(path, ds, "y")
  return ds


def _read_member(z, key: str, path: str) -> np.ndarray:
  try:
    return z[key]
  except ValueError as e:  # Object arrays need pickle; we never allow it for npz.
    raise DataError(f"{path}: array {key!r} is an object array, which needs pickle to load; "
                    "store numeric arrays (and names as a unicode array).") from e


def _names(a, path: str, key: str) -> tuple[str, ...] | None:
  if a is None:
    return None
  a = np.asarray(a)
  if a.ndim != 1 or a.dtype.kind not in "US":
    raise DataError(f"{path}: array {key!r} must be a 1-D string array; got {a.dtype} {a.shape}.")
  return tuple(str(s) for s in a.tolist())


def _load_pickle(path: str, name: str) -> Dataset:
  try:
    with open(path, "rb") as f:
      obj = pickle.load(f)  # noqa: S301 (explicit user opt-in, see PICKLE_REFUSAL)
  except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
    raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e}).") from e
  if not isinstance(obj, (tuple, list)) or len(obj) != 2:
    raise DataError(f"{path}: expected a pickled (data[N, T, C], labels[N]) tuple; got "
                    f"{type(obj).__name__}" + (f" of length {len(obj)}" if hasattr(obj, "__len__")
                                               else "") + ".")
  data, labels = obj
  try:
    x = np.asarray(data)
    y = np.asarray(labels)
  except Exception as e:  # noqa: BLE001 (anything a foreign object raises)
    raise DataError(f"{path}: could not convert the pickled arrays to numpy ({e}).") from e
  ds = _make(path, name, x, y, None, None, None, xkey="data", ykey="labels")
  _check_classes(path, ds, "labels")
  return ds


def _make(path, name, x, y, mask, channel_names, class_names, suffix="", xkey="x", ykey="y"):
  """Builds a Dataset, re-raising its validation errors with the file and array names."""
  xk, yk, mk = xkey + suffix, ykey + suffix, "mask" + suffix
  x, y = np.asarray(x), np.asarray(y)
  if x.dtype.kind not in "fiub":
    raise DataError(f"{path}: array {xk!r} has non-numeric dtype {x.dtype}.")
  if x.ndim != 3:
    raise DataError(f"{path}: array {xk!r} must have rank 3 [N, T, C]; got shape {x.shape}.")
  if x.shape[0] == 0:
    raise DataError(f"{path}: array {xk!r} is empty (0 samples).")
  try:
    return Dataset(x=x, y=y, mask=mask, channel_names=channel_names, class_names=class_names,
                   name=name)
  except DataError as e:
    msg = str(e).split(": ", 1)[-1]
    msg = msg.replace("'x'", repr(xk)).replace("'y'", repr(yk)).replace("'mask'", repr(mk))
    raise DataError(f"{path}: {msg}") from e


def _check_classes(path: str, ds: Dataset, key: str) -> None:
  present = np.flatnonzero(ds.class_counts())
  if present.size < 2:
    raise DataError(f"{path}: array {key!r} has a single class ({present.tolist()}); a "
                    "classification task needs at least two.")


def _check_splits(path: str, parts: dict[str, Dataset], class_names) -> Splits:
  t, c = parts["train"].T, parts["train"].C
  for s in _SPLITS[1:]:
    if (parts[s].T, parts[s].C) != (t, c):
      raise DataError(f"{path}: array 'x_{s}' has T={parts[s].T}, C={parts[s].C} but 'x_train' "
                      f"has T={t}, C={c}.")
  k = max(p.num_classes for p in parts.values())
  if class_names is None:  # Same default class names for every split.
    names = tuple(str(i) for i in range(k))
    parts = {s: Dataset(p.x, p.y, p.mask, p.channel_names, names, p.name) for s, p in parts.items()}
  for s in _SPLITS:
    _check_classes(path, parts[s], f"y_{s}")
  return Splits(**parts)


def save_dataset(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, *,
                 mask: np.ndarray | None = None, channel_names=None, class_names=None,
                 **extra: np.ndarray) -> None:
  """Writes series in the contract's `.npz` layout (what `load_dataset` reads), atomically:
  x float32[N, T, C], y int32[N], optional mask and the channel / class names as unicode arrays;
  `extra` arrays (e.g. the generation method and scale) ride along."""
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  if x.ndim != 3 or y.shape != (x.shape[0],):
    raise DataError(f"{path}: save_dataset needs x [N, T, C] and y [N]; got {x.shape}, "
                    f"{y.shape}.")
  arrays = dict(extra, x=x, y=y)
  if mask is not None:
    arrays["mask"] = np.asarray(mask, bool)
  if channel_names is not None:
    arrays["channel_names"] = np.asarray([str(c) for c in channel_names], np.str_)
  if class_names is not None:
    arrays["class_names"] = np.asarray([str(c) for c in class_names], np.str_)
  tio.write_npz(path, **arrays)
