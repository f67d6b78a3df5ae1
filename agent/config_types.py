"""Validated value types shared by the configuration models: sizes, durations, names.

Sizes accept a number of bytes or a string such as "64MiB"; durations a number of seconds or a
string such as "500ms", "10s" or "5m" (`wal.units` parses both). Once validated, every size is
an int of bytes and every duration a float of seconds.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

from wal.units import parse_duration, parse_size

MAX_SLOT_NAME_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1


# -- value types --------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value the way the operator typed it: strings quoted, booleans spelt as in TOML."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError("size", "must not be negative (got {got})", {"got": value})
        return value
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError:
            pass
    raise PydanticCustomError("size", "not a size: {got}", {"got": _shown(value)})


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if value < 0:
            raise PydanticCustomError("duration", "must not be negative (got {got})", {"got": value})
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            pass
    raise PydanticCustomError("duration", "not a duration: {got}", {"got": _shown(value)})


# None passes through the parsers, so one validator serves the optional fields too and a bad
# value gives one error rather than one per member of `int | None`.
Size = Annotated[int, BeforeValidator(_size)]
OptionalSize = Annotated[int | None, BeforeValidator(_size)]
Duration = Annotated[float, BeforeValidator(_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(_duration)]

_SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SLOT_NAME = re.compile(r"[a-z0-9_]+")
_IDENTIFIER = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'  # plain, or double-quoted as in SQL
_QUALIFIED_TABLE = re.compile(rf"({_IDENTIFIER})(?:\.({_IDENTIFIER}))?")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def _source_name(value: str) -> str:
    if not _SOURCE_NAME.fullmatch(value):
        raise PydanticCustomError(
            "source_name", 'must be letters, digits, "_" or "-" (got {got})', {"got": _shown(value)}
        )
    return value


def _slot_name(value: str) -> str:
    if not _SLOT_NAME.fullmatch(value):
        raise PydanticCustomError(
            "slot_name",
            "must be lowercase letters, digits and underscores (got {got})",
            {"got": _shown(value)},
        )
    if len(value) > MAX_SLOT_NAME_LENGTH:
        raise PydanticCustomError(
            "slot_name",
            "must be at most {limit} characters (got {length})",
            {"limit": MAX_SLOT_NAME_LENGTH, "length": len(value)},
        )
    return value


def _not_empty(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "must not be empty")
    return value


def _qualified_table(value: str) -> str:
    match = _QUALIFIED_TABLE.fullmatch(value)
    if match is None:
        raise PydanticCustomError(
            "table_name", 'must be "schema.table" or "table" (got {got})', {"got": _shown(value)}
        )
    return value if match.group(2) else f"public.{value}"


def _schema_name(value: str) -> str:
    if not re.fullmatch(_IDENTIFIER, value):
        raise PydanticCustomError("schema_name", "must be a schema name (got {got})", {"got": _shown(value)})
    return value


def _lsn(value: str) -> str:
    match = _LSN.fullmatch(value)
    if match is None:
        raise PydanticCustomError(
            "lsn", 'must be an LSN such as "16/B374D848" (got {got})', {"got": _shown(value)}
        )
    return f"{int(match.group(1), 16):X}/{int(match.group(2), 16):X}"  # PostgreSQL's own spelling


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


SourceName = Annotated[str, AfterValidator(_source_name)]
SlotName = Annotated[str, AfterValidator(_slot_name)]
NonEmpty = Annotated[str, AfterValidator(_not_empty)]
QualifiedTable = Annotated[str, AfterValidator(_qualified_table)]
SchemaName = Annotated[str, AfterValidator(_schema_name)]
Lsn = Annotated[str, AfterValidator(_lsn)]


# -- models -------------------------------------------------------------------------------------


class _Options(BaseModel):
    # A misspelt option is an error, not a silently ignored key; defaults go through the same
    # validators as typed values, so a bad default fails at import rather than in production.
    model_config = ConfigDict(extra="forbid", validate_default=True)
