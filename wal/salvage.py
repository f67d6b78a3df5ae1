"""Salvage: copy every intact record of a damaged segment or archive into a new, clean segment."""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Any

from .durable import TMP_SUFFIX, rename_durably
from .errors import WalError
from .file_scan import ByteReader, HeaderCheck, open_data, scan_file
from .format import SEGMENT_HEADER
from .fs import OS_FS
from .report import DamageInfo
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord


@dataclass(frozen=True)
class SalvageReport:
    """What `salvage` copied into the new segment, and what it had to leave behind."""

    source: str
    output: str
    records_recovered: int
    first_seq: int | None
    last_seq: int | None
    bytes_written: int
    damages: tuple[DamageInfo, ...]  # what was lost, in the source's offsets

    @property
    def records_lost(self) -> int | None:
        """Sequence numbers lost inside the file; None when a damage's extent in records is unknown."""
        counts = [d.records_skipped for d in self.damages if d.bytes_lost or d.records_skipped]
        if any(count is None for count in counts):
            return None
        return sum(count for count in counts if count is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "records_recovered": self.records_recovered,
            "records_lost": self.records_lost,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "bytes_written": self.bytes_written,
            "damages": [damage.to_dict() for damage in self.damages],
        }


def salvage(src: str, out: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SalvageReport:
    """Write a new segment at `out` holding a fresh header and every intact record of `src`, verbatim.

    The copy is made durable (temporary file, fsync, rename, directory fsync) before it gets its
    name, so `out` never exists half-written. An existing `out` is never overwritten.
    """
    out = os.path.abspath(out)  # the directory fsync needs a real directory name
    if OS_FS.exists(out):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", out)
    damages: list[DamageInfo] = []
    count = 0
    first_seq: int | None = None
    last_seq: int | None = None
    with contextlib.closing(scan_file(src, max_record_bytes)) as items:
        header = next(items)  # opens src: an unreadable source fails before anything is created
        assert isinstance(header, HeaderCheck)
        if header.error is not None:
            damages.append(DamageInfo.from_bad_header(src, header))
        tmp = out + TMP_SUFFIX
        handle = OS_FS.create(tmp, exclusive=False)
        try:
            handle.write(SEGMENT_HEADER)
            with open_data(src) as stream:
                source = ByteReader(stream)
                for item in items:
                    if isinstance(item, RawRecord):
                        data = source.read(item.offset, item.length)
                        if len(data) != item.length:
                            raise WalError(f"{src}: record {item.seq} changed while it was being salvaged")
                        handle.write(data)
                        count += 1
                        first_seq = item.seq if first_seq is None else first_seq
                        last_seq = item.seq
                    elif isinstance(item, Damage):
                        damages.append(DamageInfo.from_damage(src, item))
            handle.sync()
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                OS_FS.unlink(tmp)
            raise
        written = handle.size
        handle.close()
    rename_durably(OS_FS, tmp, out)
    return SalvageReport(src, out, count, first_seq, last_seq, written, tuple(damages))
