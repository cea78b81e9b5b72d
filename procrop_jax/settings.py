"""Typed settings read from the experiment config, one way and with no defaults of their own.

Every config starts from `configs/default.py`, which sets every field, so a reader takes each
field as the config has it. A second set of defaults here would drift from the config's (and
did: a CAD `max_side` of 1024 against the config's 640); a field that is missing is an error
that names it instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def read(cls: type[T], section: Any, where: str) -> T:
  """The dataclass `cls` with every field taken from the config section of the same name.

  Args:
    cls: a dataclass whose field names are keys of `section`.
    section: a config section (an ml_collections ConfigDict or a dict); other keys are ignored.
    where: the section's name for the error, e.g. "config.data".

  Raises:
    KeyError: `section` lacks some of the fields (all of them are named).
  """
  names = [field.name for field in dataclasses.fields(cls)]
  missing = [name for name in names if name not in section]
  if missing:
    raise KeyError(f"{where} has no {', '.join(missing)}: configs start from "
                   "configs/default.py, which sets every field")
  return cls(**{name: section[name] for name in names})
