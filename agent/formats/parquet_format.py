"""`parquet`: one complete Parquet file per body, holding one table's envelopes.

The columns are those of the arrow format (`to_arrow_table`); pyarrow stores the Arrow schema
in the file's metadata, so the JSON-carried markers on fields survive the trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..delivery import Delivery
from .arrow_format import from_arrow_table, to_arrow_table

__all__ = ["ParquetFormat"]


class ParquetFormat:
    """A Parquet file: one row group (up to pyarrow's 1,048,576 rows), Snappy-compressed pages."""

    name = "parquet"
    content_type = "application/vnd.apache.parquet"
    extension = ".parquet"
    single_table = True
    compression = "snappy"  # the codec every Parquet reader supports

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(to_arrow_table(batch), sink, compression=self.compression)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        # No reader threads: a body is small, and pyarrow's Parquet thread pool can abort the
        # process at interpreter exit (apache/arrow#34314).
        return from_arrow_table(pq.read_table(pa.BufferReader(data), use_threads=False))
