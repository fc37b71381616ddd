"""Typed configuration: every setting of a run is a field of `ExperimentConfig`'s frozen
sections, with its default and help text in one place (`option`).

`experiment_config(cfg)` is the one converter from a config file's `ConfigDict` (or a workdir's
config.json) to the typed config; it rejects unknown fields. `load_config("tiny")` reads
`configs/tiny.py` outside absl. The schema imports the model and training modules, so it is
loaded on first use (the modules themselves import only `option` from here).
"""

from __future__ import annotations

import importlib
from typing import Any

from tardiff_jax.config.fields import help_of, option

_LAZY = {
    "ExperimentConfig": "schema", "experiment_config": "schema", "default_config_dict": "schema",
    "ConfigError": "convert", "describe": "convert", "from_mapping": "convert",
    "load_config": "convert", "to_config_dict": "convert", "to_dict": "convert",
}

__all__ = ["help_of", "option", *_LAZY]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(f"tardiff_jax.config.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'tardiff_jax.config' has no attribute {name!r}")
