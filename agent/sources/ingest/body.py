"""Reading a request body within its limit, and turning it into encoded change records.

A body is one JSON object (application/json) or NDJSON (application/x-ndjson: one object per
line, blank lines ignored). An object with both "op" and "table" is a change record and must
pass `Change.from_dict`; any other object is a plain event, kept whole as the `message` of an
op="message" change. Nothing is appended unless every record of the body is good, so each check
here raises a `Rejection` that names the line and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import orjson

from agent.change import Change, ChangeFormatError, encode_change

from .decisions import Rejection

JSON = "json"
NDJSON = "ndjson"
CONTENT_TYPES = {
    "application/json": JSON,
    "application/x-ndjson": NDJSON,
    "application/ndjson": NDJSON,
}
RECORD_FRAMING = 32  # bytes the log adds to each payload; max_record_bytes counts them
_CHUNK_LINE_MAX = 1024


def body_format(content_type: str | None) -> str:
    """JSON or NDJSON from a Content-Type header (parameters such as charset are ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        return CONTENT_TYPES[media]
    except KeyError:
        raise Rejection(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {media or '(none)'!r} is not accepted; "
            "send application/json or application/x-ndjson",
        ) from None


def declared_length(headers: Mapping[str, str], limit: int) -> int | None:
    """The Content-Length, checked against `limit` before any byte is read; None when chunked.

    `headers` has lower-case names (the handler parses them so).
    """
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise Rejection(400, "BAD_REQUEST", f"Transfer-Encoding {coding!r} is not supported", close=True)
        return None
    raw = headers.get("content-length")
    if raw is None:
        return 0
    try:
        length = int(raw)
        if length < 0:
            raise ValueError
    except ValueError:
        raise Rejection(
            400, "BAD_REQUEST", f"Content-Length {raw!r} is not a byte count", close=True
        ) from None
    if length > limit:
        raise Rejection(
            413,
            "PAYLOAD_TOO_LARGE",
            f"the body is {length} bytes; the limit is {limit} (max_body_bytes)",
            close=True,
        )
    return length


def read_body(stream: IO[bytes], length: int | None, limit: int) -> bytes:
    """`length` bytes, or a chunked body (length None) of at most `limit` bytes."""
    if length is not None:
        data = stream.read(length) if length else b""
        if len(data) < length:
            raise Rejection(
                400, "BAD_REQUEST", f"the body ended after {len(data)} of {length} bytes", close=True
            )
        return data
    parts: list[bytes] = []
    total = 0
    while True:
        line = stream.readline(_CHUNK_LINE_MAX)
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError
        except ValueError:
            raise Rejection(
                400, "BAD_REQUEST", "malformed chunked body: bad chunk size line", close=True
            ) from None
        if size == 0:
            break
        total += size
        if total > limit:
            raise Rejection(
                413,
                "PAYLOAD_TOO_LARGE",
                f"the chunked body exceeds the limit of {limit} bytes (max_body_bytes)",
                close=True,
            )
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(_CHUNK_LINE_MAX).strip():
            raise Rejection(400, "BAD_REQUEST", "malformed chunked body: a chunk ended early", close=True)
        parts.append(chunk)
    while stream.readline(_CHUNK_LINE_MAX).strip():  # trailer fields, up to the blank line
        pass
    return b"".join(parts)


class RecordMaker:
    """Turns a body into the payloads to append, or raises the Rejection that says why not."""

    def __init__(self, source: str, table: str, max_records: int, max_record_bytes: int) -> None:
        self.source = source
        self.table = table
        self.max_records = max_records
        self.max_payload_bytes = max_record_bytes - RECORD_FRAMING

    def payloads(self, body: bytes, fmt: str) -> list[bytes]:
        if fmt == JSON:
            try:
                item = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Rejection(
                    422, "INVALID_JSON", f"line {exc.lineno}: {exc.msg} (column {exc.colno})"
                ) from None
            return [self._payload(item, 1)]
        lines = body.split(b"\n")
        if len(lines) > self.max_records:
            count = sum(1 for line in lines if line.strip())
            if count > self.max_records:
                raise Rejection(
                    413,
                    "TOO_MANY_RECORDS",
                    f"the body holds {count} records; the limit is {self.max_records} (max_records_per_request)",
                )
        payloads = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise Rejection(
                    422, "INVALID_JSON", f"line {number}: {exc.msg} (column {exc.colno})"
                ) from None
            payloads.append(self._payload(item, number))
        if not payloads:
            raise Rejection(
                422, "INVALID_RECORD", "the body holds no records (it is empty or only blank lines)"
            )
        return payloads

    def _payload(self, item: Any, line: int) -> bytes:
        if type(item) is not dict:
            raise Rejection(
                422, "INVALID_RECORD", f"line {line}: expected a JSON object, not {_json_kind(item)}"
            )
        try:
            if "op" in item and "table" in item:
                change = Change.from_dict(item)
            else:
                change = Change(table=self.table, op="message", source=self.source, message=item)
            payload = encode_change(change)
        except ChangeFormatError as exc:
            raise Rejection(422, "INVALID_RECORD", f"line {line}: {exc}") from None
        if len(payload) > self.max_payload_bytes:
            raise Rejection(
                413,
                "RECORD_TOO_LARGE",
                f"line {line}: the record is {len(payload) + RECORD_FRAMING} bytes; "
                f"the log takes at most {self.max_payload_bytes + RECORD_FRAMING} (wal max_record_bytes)",
            )
        return payload


def _json_kind(item: Any) -> str:
    if isinstance(item, list):
        return "an array"
    if isinstance(item, str):
        return "a string"
    if isinstance(item, bool):
        return "a boolean"
    if item is None:
        return "null"
    return "a number"
