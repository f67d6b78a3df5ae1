"""Where the agent's time goes: the messages of a captured stream replayed through the source's
steps one at a time, for the hot-path rows of the PostgreSQL section of `make bench`."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

import wal
from agent.change import encode_change
from agent.sources.postgres.changes import ChangeDecoder
from agent.sources.postgres.errors import ProtocolError
from agent.sources.postgres.pgoutput import Begin, Relation, decode_message
from tests.benchmarks.pg_consumers import CAPTURE_TIMEOUT_S

APPEND_BATCH_RECORDS = 256  # as the source appends a large transaction
# Each step is timed this many times and its least time kept: other load only ever adds time.
ROUNDS = 3


@dataclass(frozen=True)
class HotPath:
    """CPU microseconds per row of each step the source takes, measured one step at a time."""

    rows: int
    payload_us: float  # pgoutput bytes to the change record's bytes (ChangeDecoder.row_payload)
    general_us: float  # the same the long way: decode_message, row_change, encode_change
    append_us: float  # append_batch of 256 payloads to a log with fsync="always", appender's CPU

    @property
    def total_us(self) -> float:
        return self.payload_us + self.append_us


def hot_path(stream_path: str, log_dir: str) -> HotPath:
    """Replay the messages of pg_recvlogical's file through the source's steps, one step at a time.

    Each step runs over every row before the next starts, in this thread alone, timed by
    time.thread_time: CPU time, which the machine's other load disturbs less than wall time; the
    least of ROUNDS rounds is kept. `log_dir` is where the append step writes its logs.
    """
    messages = split_messages(stream_path)
    decoder = ChangeDecoder("bench")
    rows: list[tuple[int, bytes]] = []
    for index, raw in enumerate(messages):
        if raw[0] in b"IUD":
            rows.append((index, raw))
        else:
            item = decode_message(raw)
            if isinstance(item, Relation):
                decoder.relation(item)
            elif isinstance(item, Begin):
                decoder.begin(item)
    # Results are dropped as they are made, as in the source, and what this replay holds is
    # frozen out of the collector's sight: a full collection over 200,000 live objects would be a
    # cost of the replay, not of the source.
    gc.collect()
    gc.freeze()
    try:
        rounds = [_timed_steps(decoder, rows, os.path.join(log_dir, str(n))) for n in range(ROUNDS)]
    finally:
        gc.unfreeze()
    return HotPath(
        rows=len(rows),
        payload_us=min(r.payload_us for r in rounds),
        general_us=min(r.general_us for r in rounds),
        append_us=min(r.append_us for r in rounds),
    )


def _timed_steps(decoder: ChangeDecoder, rows: list[tuple[int, bytes]], log_dir: str) -> HotPath:
    row_payload = decoder.row_payload
    started = time.thread_time()
    for index, raw in rows:
        row_payload(raw, index, 0)
    encoded = time.thread_time()
    row_change = decoder.row_change
    for index, raw in rows:
        encode_change(row_change(decode_message(raw), index, 0))  # type: ignore[arg-type]
    encoded_generally = time.thread_time()
    payloads = [row_payload(raw, index, 0) or b"" for index, raw in rows]
    log = wal.open(log_dir, fsync="always")
    try:
        append_batch = log.append_batch
        appending = time.thread_time()
        for start in range(0, len(payloads), APPEND_BATCH_RECORDS):
            append_batch(payloads[start : start + APPEND_BATCH_RECORDS], wait=False)
        appended = time.thread_time()
        log.wait_durable(log.last_seq, CAPTURE_TIMEOUT_S)
    finally:
        log.close()
    count = len(rows)
    return HotPath(
        rows=count,
        payload_us=(encoded - started) / count * 1e6,
        general_us=(encoded_generally - encoded) / count * 1e6,
        append_us=(appended - appending) / count * 1e6,
    )


def split_messages(path: str) -> list[bytes]:
    """The pgoutput messages of a pg_recvlogical file: each ends at the first "\\n" after which it
    decodes (a value may hold a "\\n" byte, and a message cut there does not decode)."""
    with open(path, "rb") as handle:
        data = handle.read()
    messages = []
    start = 0
    while start < len(data):
        end = data.index(b"\n", start)
        while True:
            try:
                decode_message(data[start:end])
                break
            except ProtocolError:
                end = data.index(b"\n", end + 1)
        messages.append(data[start:end])
        start = end + 1
    return messages
