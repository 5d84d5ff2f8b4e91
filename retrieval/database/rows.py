"""Records from rows: a statement selects the columns a record names, and the record is built
from the row's mapping, never copied field by field (the column types already hand back what
the record holds: `tables.UTCDateTime` aware moments, `tables.Embedding` float32 vectors)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from sqlalchemy.engine import Row

R = TypeVar("R")


def record(cls: type[R], row: Row, **given: Any) -> R:
    """A ``cls`` (a dataclass) from the row's columns of its fields' names; ``given`` fills or
    overrides the others (a score, an id under another name)."""
    mapping = row._mapping
    values = {f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping}
    return cls(**(values | given))
