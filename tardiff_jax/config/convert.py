"""The one converter between config files (`ml_collections.ConfigDict`) and the typed sections.

`from_mapping(ExperimentConfig, cfg)` turns a ConfigDict (or any nested mapping, e.g. a
workdir's config.json) into frozen dataclasses, coercing each value to its field's annotated
type and rejecting unknown fields with the dotted path of the field. `to_config_dict` goes the
other way (what `configs/default.py` returns), `describe` lists every field with its help text,
and `load_config` reads a config file outside absl (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ConfigError(ValueError):
  """A config names an unknown field or gives a field a value of the wrong type."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def user_fields(cls: type) -> list[dataclasses.Field]:
  """The fields of a config section that users set (derived fields excluded)."""
  return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value if isinstance(value, Mapping) else None


def from_mapping(cls: type, values: Any, path: str = "") -> Any:
  """Builds dataclass `cls` from a mapping; missing fields keep their defaults.

  Raises ConfigError naming the dotted path of an unknown field or a badly typed value; the
  sections' own checks (`__post_init__`) raise ValueErrors that name their fields too.
  """
  mapping = _as_mapping(values)
  if mapping is None:
    raise ConfigError(f"config section {path.rstrip('.') or '<root>'} must be a mapping, got "
                      f"{type(values).__name__}.")
  fields = {f.name: f for f in user_fields(cls)}
  unknown = sorted(set(mapping) - set(fields))
  if unknown:
    where = path.rstrip(".") or "the config"
    raise ConfigError(f"unknown config field {path}{unknown[0]}; {where} has the fields "
                      f"{', '.join(sorted(fields))}.")
  hints = _hints(cls)
  kwargs = {name: _coerce(hints[name], mapping[name], path + name) for name in fields
            if name in mapping}
  return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
  """`value` as type `tp` (int, float, bool, str, tuples, X | None, nested sections)."""
  if isinstance(value, ml_collections.FieldReference):
    value = value.get()
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    inner = [a for a in args if a is not type(None)]
    return _coerce(inner[0], value, path)
  if dataclasses.is_dataclass(tp):
    return from_mapping(tp, value, path + ".")
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
      raise ConfigError(f"config field {path} must be a tuple, got {value!r}.")
    args = typing.get_args(tp)
    item = args[0] if args else Any
    return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
  if tp is Any:
    return value
  if tp is bool:
    if isinstance(value, (bool, np.bool_)):
      return bool(value)
    raise ConfigError(f"config field {path} must be True or False, got {value!r}.")
  if tp is int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
      return int(value)
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise ConfigError(f"config field {path} must be an integer, got {value!r}.")
  if tp is float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)):
      return float(value)
    raise ConfigError(f"config field {path} must be a number, got {value!r}.")
  if tp is str:
    if isinstance(value, str):
      return value
    raise ConfigError(f"config field {path} must be a string, got {value!r}.")
  raise ConfigError(f"config field {path} has an unsupported type {tp!r}.")


def to_dict(cfg: Any) -> dict[str, Any]:
  """A typed config as a JSON-ready nested dict of its user fields (tuples become lists)."""
  out = {}
  for f in user_fields(type(cfg)):
    v = getattr(cfg, f.name)
    if dataclasses.is_dataclass(v):
      v = to_dict(v)
    elif isinstance(v, tuple):
      v = list(v)
    out[f.name] = v
  return out


def to_config_dict(cfg: Any) -> ml_collections.ConfigDict:
  """A typed config as the ConfigDict a config file returns. Fields that may be None get a typed
  placeholder, so `--config.guidance.scale=100` still parses as a float."""
  hints = _hints(type(cfg))
  c = ml_collections.ConfigDict()
  for f in user_fields(type(cfg)):
    v = getattr(cfg, f.name)
    tp = hints[f.name]
    if dataclasses.is_dataclass(v):
      c[f.name] = to_config_dict(v)
    elif v is None:
      inner = [a for a in typing.get_args(tp) if a is not type(None)]
      c[f.name] = config_dict.placeholder(inner[0] if inner else object)
    else:
      c[f.name] = v
  return c


def describe(cfg: Any, prefix: str = "") -> list[str]:
  """One line per user field: `section.field = value  # help` (what `tardiff --print_config`
  prints)."""
  lines = []
  for f in user_fields(type(cfg)):
    v = getattr(cfg, f.name)
    if dataclasses.is_dataclass(v):
      lines += describe(v, f"{prefix}{f.name}.")
    else:
      lines.append(f"{prefix}{f.name} = {v!r}  # {f.metadata.get('help', '')}")
  return lines


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`"configs/default.py:paper"`, a path, or a bare name (`"tiny"` -> `configs/tiny.py` of this
  checkout) -> the ConfigDict that `--config=` would give."""
  path, _, variant = spec.partition(":")
  if not path.endswith(".py"):
    path = os.path.join(REPO_ROOT, "configs", path + ".py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path} does not exist.")
  mod_spec = importlib.util.spec_from_file_location(
      "_tardiff_cfg_" + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(variant or None)
