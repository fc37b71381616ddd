"""Loading config files (`configs/*.py` defining `get_config(variant)`) outside absl flags."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
