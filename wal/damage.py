"""Damage an open log has met, at recovery or while reading: each region reported once.

Recovery has already moved or copied what it cut into quarantine/; a segment found damaged by a
reader is copied there whole, once, the first time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .durable import copy_file
from .fs import FileSystem
from .layout import QUARANTINE_DIR
from .scan import Damage

log = logging.getLogger("wal")


@dataclass(frozen=True)
class DamageReport:
    """Damage found in one file: where, why, what was lost, and where a copy was kept."""

    path: str
    offset: int
    end_offset: int
    reason: str
    records_skipped: int | None
    quarantined: str | None


class DamageRecorder:
    """Every damaged region found since the log was opened, by file and offset."""

    def __init__(self, fs: FileSystem, root: str) -> None:
        self._fs = fs
        self._root = root
        self._reports: dict[tuple[str, int], DamageReport] = {}
        self._quarantined: set[str] = set()

    def record(self, path: str, damage: Damage, *, quarantine: bool) -> None:
        """Log a damaged region the first time it is seen; `quarantine` copies its file aside."""
        key = (path, damage.offset)
        if key in self._reports:
            return
        kept = None
        if quarantine and path not in self._quarantined and self._fs.exists(path):
            kept = os.path.join(self._root, QUARANTINE_DIR, os.path.basename(path) + ".damaged")
            try:
                if not self._fs.exists(kept):
                    copy_file(self._fs, path, kept)
                self._quarantined.add(path)
            except OSError as exc:
                log.error("wal.quarantine.failed", extra={"segment": path, "error": str(exc)})
                kept = None
        report = DamageReport(
            path, damage.offset, damage.end_offset, damage.reason, damage.records_skipped, kept
        )
        self._reports[key] = report
        log.error(
            "wal.damage",
            extra={
                "segment": path,
                "offset": damage.offset,
                "end_offset": damage.end_offset,
                "reason": damage.reason,
                "records_skipped": damage.records_skipped,
                "quarantined": kept,
            },
        )

    def reports(self) -> list[DamageReport]:
        return list(self._reports.values())

    def __len__(self) -> int:
        return len(self._reports)
