"""Making the destination a `[[destinations]]` entry describes."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..state import StateStore
from .base import Destination

__all__ = ["build_destination"]


def build_destination(config: Any, state: StateStore | None = None) -> Destination:
    """The destination for one validated destination config (imports only the type it needs)."""
    kind = config.type
    if kind == "http":
        from .http import HttpDestination

        return HttpDestination(config)
    if kind == "file":
        from .file import FileDestination

        return FileDestination(config)
    if kind == "postgres":
        from .postgres import PostgresDestination

        return PostgresDestination(config, state)
    if kind == "duckdb":
        from .duckdb import DuckDbDestination

        return DuckDbDestination(config, state)
    if kind == "pgstream":
        try:
            from .pgstream import PgStreamDestination
        except ImportError:
            raise ConfigError(
                "the pgstream destination is not available in this build",
                option=f"destinations.{config.name}",
            ) from None
        return PgStreamDestination(config)
    raise ConfigError(f"unknown destination type {kind!r}", option=f"destinations.{config.name}")
