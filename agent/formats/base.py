"""The wire-format protocol every encoder follows, and the error for values a format cannot carry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..delivery import Delivery
from ..destinations.base import PermanentError

__all__ = ["Format", "FormatError"]


class FormatError(PermanentError):
    """A record holds a value this format cannot encode; retrying cannot help (dead-letter it)."""


class Format(Protocol):
    """Encodes a batch of deliveries into one body (a request, or a file's contents).

    `decode` reverses `encode` into envelope dicts (`agent.delivery.envelope`), which the
    round-trip tests compare with what went in.
    """

    name: str
    content_type: str
    extension: str  # file name suffix, with its dot: ".jsonl"
    # True: a body holds one table (its schema is that table's), and `encode` raises ValueError
    # for a batch that mixes tables, so the caller splits batches by table first.
    single_table: bool

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        """One body holding every record of `batch`, in order; FormatError for an unencodable value."""
        ...

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        """The envelopes `encode` wrote, in order."""
        ...
