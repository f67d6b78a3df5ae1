"""The options of a log, with their defaults and units in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .archive import DEFAULT_ARCHIVE_LEVEL, DEFAULT_RETENTION_AGE_S
from .format import MiB
from .scan import DEFAULT_MAX_RECORD_BYTES

FsyncPolicy = Literal["always", "interval", "never"]
OnFull = Literal["block", "error"]

DEFAULT_SEGMENT_BYTES = 64 * MiB
DEFAULT_FSYNC_INTERVAL_MS = 10


@dataclass(frozen=True)
class LogOptions:
    """How a log behaves. Every size is in bytes and every duration says its unit."""

    # "always": append returns once the record is fsynced. "interval": append returns once the
    # record is written to the OS and an fsync follows within fsync_interval_ms (a power loss can
    # lose that window). "never": no fsync at all (tests only).
    fsync: FsyncPolicy = "always"
    fsync_interval_ms: int = DEFAULT_FSYNC_INTERVAL_MS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    segment_max_age_s: float | None = None  # also rotate a segment this old that holds records
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # whole record, 32 bytes of framing included
    max_unarchived_bytes: int | None = None  # budget for live segments; None: limited by the disk only
    on_full: OnFull = "block"  # when the budget is spent: block appends, or raise WalFullError
    full_timeout_s: float | None = None  # with on_full="block": give up with WalFullError after this
    archive_level: int = DEFAULT_ARCHIVE_LEVEL
    auto_archive: bool = True  # archive sealed segments in the background once every cursor passed them
    retention_max_age_s: float | None = DEFAULT_RETENTION_AGE_S
    retention_max_bytes: int | None = None
    min_free_bytes: int | None = None  # free disk required at open; default 2 * max_record_bytes

    def __post_init__(self) -> None:
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {self.fsync!r}")
        if self.on_full not in ("block", "error"):
            raise ValueError(f"on_full must be 'block' or 'error', not {self.on_full!r}")
        if self.fsync_interval_ms <= 0:
            raise ValueError("fsync_interval_ms must be positive")
        if self.max_record_bytes < 32:
            raise ValueError("max_record_bytes must be at least 32 (the record framing)")
        if self.segment_bytes < 16 + 32:
            raise ValueError("segment_bytes must hold a header and one record")
        if not 1 <= self.archive_level <= 22:
            raise ValueError("archive_level must be between 1 and 22")

    @property
    def required_free_bytes(self) -> int:
        return self.min_free_bytes if self.min_free_bytes is not None else 2 * self.max_record_bytes
