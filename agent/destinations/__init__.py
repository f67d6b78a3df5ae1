"""Destinations: where the senders deliver. Each is a small object following `Destination`.

`build_destination(config, ...)` makes the destination a `[[destinations]]` entry describes.
"""

from __future__ import annotations

from .base import Destination, DestinationError, PermanentError, RetryableError, TransactionalDestination
from .factory import build_destination

__all__ = [
    "Destination",
    "DestinationError",
    "PermanentError",
    "RetryableError",
    "TransactionalDestination",
    "build_destination",
]
