"""`option`: a dataclass field with its help text, so each setting is documented where its default
lives (the typed config sections are the one place for defaults)."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, *, derived: bool = False) -> Any:  # noqa: A002
  """A frozen-dataclass field with a default and a one-line `help`.

  `derived=True` marks a field that the run fills from the data (e.g. the number of classes):
  it is not a user setting, so config files and the command line cannot set it.
  """
  meta = {"help": help, "derived": derived}
  if dataclasses.is_dataclass(default):
    return dataclasses.field(default_factory=lambda: default, metadata=meta)
  if isinstance(default, (list, dict, set)):
    raise TypeError(f"option defaults must be immutable (use a tuple), got {default!r}.")
  return dataclasses.field(default=default, metadata=meta)


def help_of(cls: type, name: str) -> str:
  """The help text of field `name` of dataclass `cls`."""
  for f in dataclasses.fields(cls):
    if f.name == name:
      return str(f.metadata.get("help", ""))
  raise KeyError(f"{cls.__name__} has no field {name!r}.")
