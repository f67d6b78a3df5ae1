"""Named failpoints: places on the durability path where tests crash or fail the log on purpose.

Production code calls `hit(name)` at each step; when nothing is armed that is one dict lookup.
Tests arm a name with an action (raise an OSError, `os._exit`, record a snapshot) to check what
survives a crash at exactly that step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Every failpoint the package hits, with the step it sits after.
FAILPOINTS: dict[str, str] = {
    "segment.after_header_write": "new segment's header written, not yet fsynced",
    "segment.before_dir_sync": "new segment fsynced, its directory entry not yet fsynced",
    "log.after_write": "a batch of records written to the active segment, not yet fsynced",
    "log.after_sync": "a batch fsynced, callers not yet released",
    "atomic.after_write": "temporary file written, not yet fsynced",
    "atomic.after_sync": "temporary file fsynced, not yet renamed",
    "atomic.after_rename": "renamed over the target, directory not yet fsynced",
    "archive.after_compress": "archive written and fsynced under its temporary name",
    "archive.before_unlink": "archive renamed and its directory fsynced, original still present",
    "recover.before_truncate": "torn tail copied to quarantine, segment not yet truncated",
}

_armed: dict[str, Callable[[], None]] = {}


def hit(name: str) -> None:
    """Run the action armed at `name`, if any."""
    action = _armed.get(name)
    if action is not None:
        action()


def arm(name: str, action: Callable[[], None]) -> None:
    """Arm `name` with `action`; unknown names are refused so a typo cannot pass silently."""
    if name not in FAILPOINTS:
        raise KeyError(f"unknown failpoint {name!r}")
    _armed[name] = action


def disarm(name: str | None = None) -> None:
    """Disarm one failpoint, or all of them."""
    if name is None:
        _armed.clear()
    else:
        _armed.pop(name, None)


@contextmanager
def armed(name: str, action: Callable[[], None]) -> Iterator[None]:
    """Arm `name` for the duration of a `with` block."""
    arm(name, action)
    try:
        yield
    finally:
        disarm(name)
