"""wal: a standalone durable write-ahead log (ARWAL001 segments, group commit, archive).

The public API is listed in `__all__`; everything else is internal.
"""

from .format import crc_extension_in_use, require_crc_extension

__all__ = ["crc_extension_in_use", "require_crc_extension"]
