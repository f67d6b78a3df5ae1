"""What every destination is: a small protocol, and the errors that tell the sender what to do.

    DestinationError            delivery failed; `retryable` says whether trying again can help
     ├── RetryableError         network errors, timeouts, 5xx, 429: back off and retry the batch
     └── PermanentError         the destination refused the data (another 4xx, a value the
                                format cannot encode): retrying the same records cannot help

A permanent error on a batch does not say which record is at fault; the sender splits the batch
until it has the offending record(s), delivers the rest and dead-letters only those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..delivery import Delivery
from ..errors import AgentError

__all__ = ["Destination", "DestinationError", "PermanentError", "RetryableError", "TransactionalDestination"]


class DestinationError(AgentError):
    """A batch was not delivered. `hint` tells the operator what to look at."""

    retryable = False

    def __init__(self, message: str, *, hint: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.retry_after_s = retry_after_s  # the destination asked us to wait this long (Retry-After)


class RetryableError(DestinationError):
    """Trying the same batch again later can succeed."""

    retryable = True


class PermanentError(DestinationError):
    """The destination refused the data; the same records will be refused again."""

    retryable = False


class Destination(Protocol):
    """One configured destination. The sender calls these from its own thread only.

    `write` returns once the destination has confirmed the whole batch (it is durable there, or
    as durable as the destination makes it), or raises a DestinationError. It may be called
    again with the same records after a failure or a restart: delivery is at-least-once, and
    each record's `idempotency_key` lets the receiver drop repeats.
    """

    name: str

    def open(self) -> None:
        """Connect or prepare; raise RetryableError when the destination is not reachable yet."""
        ...

    def write(self, batch: Sequence[Delivery]) -> None:
        """Deliver every record of `batch`, in order."""
        ...

    def close(self) -> None:
        """Release connections and files; safe to call more than once."""
        ...


@runtime_checkable
class TransactionalDestination(Destination, Protocol):
    """A destination that stores its position in the same transaction as the data (exactly-once).

    After a crash the sender resumes after `position()`, whatever its cursor in the log says.
    `write` must store the last record's `seq` together with the batch's data, atomically.
    """

    def position(self) -> int:
        """The `seq` of the last record this destination has durably applied (0: none)."""
        ...
