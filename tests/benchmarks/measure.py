"""The measurements behind `make bench`: the log's paths and the bare system calls beneath them.

Each function measures one thing and returns plain numbers; `__main__` puts them side by side.
Every file is written in the directory it is given, so the log and its floor share one disk.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

import wal
from wal.archive import archive_segment
from wal.fs import OS_FS
from wal.layout import WAL_DIR, parse_first_seq

KiB = 1024
MiB = 1024 * KiB

# Bound the queue of a pipelining producer: wait for durability once this many records are ahead.
PIPELINE_WINDOW_RECORDS = 8192
BARE_CHUNK_BYTES = 1 * MiB


@dataclass(frozen=True)
class Latency:
    """Operations per second over a run, and the per-operation latency percentiles in µs."""

    ops: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds


@dataclass(frozen=True)
class Throughput:
    """Records (or chunks) and bytes moved in a run."""

    records: int
    payload_bytes: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.payload_bytes / MiB / self.seconds


@dataclass(frozen=True)
class Compression:
    """One compressor on one file: its ratio (original / compressed) and input speed."""

    original_bytes: int
    compressed_bytes: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.compressed_bytes

    @property
    def mib_per_s(self) -> float:
        return self.original_bytes / MiB / self.seconds


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return cuts[49] * 1e6, cuts[98] * 1e6


def _open(path: str, fsync: str) -> wal.Log:
    return wal.open(path, fsync=fsync, auto_archive=False)


def bare_fdatasync(directory: str, record_bytes: int, seconds: float) -> Latency:
    """The floor: one os.write of one record then os.fdatasync, in a loop."""
    path = os.path.join(directory, "floor.bin")
    record = os.urandom(record_bytes)
    samples: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        now = started
        while now < deadline:
            os.write(fd, record)
            os.fdatasync(fd)
            after = time.perf_counter()
            samples.append(after - now)
            now = after
    finally:
        os.close(fd)
        os.unlink(path)
    p50, p99 = _percentiles(samples)
    return Latency(len(samples), now - started, p50, p99)


def bare_sequential(directory: str, total_bytes: int, sync_every_bytes: int | None) -> Throughput:
    """os.write of 1 MiB chunks, with one fdatasync at the end or one every `sync_every_bytes`."""
    path = os.path.join(directory, "sequential.bin")
    chunk = os.urandom(BARE_CHUNK_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        started = time.perf_counter()
        written = unsynced = 0
        while written < total_bytes:
            written += os.write(fd, chunk)
            unsynced += len(chunk)
            if sync_every_bytes is not None and unsynced >= sync_every_bytes:
                os.fdatasync(fd)
                unsynced = 0
        os.fdatasync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return Throughput(written // BARE_CHUNK_BYTES, written, seconds)


def pipelined(log_dir: str, fsync: str, record_bytes: int, count: int) -> Throughput:
    """One producer: append(wait=False) in a loop, wait_durable every window, then on the last."""
    payloads = [os.urandom(record_bytes) for _ in range(64)]
    log = _open(log_dir, fsync)
    try:
        append, wait_durable = log.append, log.wait_durable
        started = time.perf_counter()
        seq = 0
        for index in range(count):
            seq = append(payloads[index & 63], wait=False)
            if index % PIPELINE_WINDOW_RECORDS == PIPELINE_WINDOW_RECORDS - 1:
                wait_durable(seq - PIPELINE_WINDOW_RECORDS // 2, 60)
        wait_durable(seq, 60)
        seconds = time.perf_counter() - started
    finally:
        log.close()
    return Throughput(count, count * record_bytes, seconds)


def waiting_threads(log_dir: str, threads: int, record_bytes: int, seconds: float) -> Latency:
    """`threads` producers, each calling append(wait=True) in a loop for `seconds`."""
    log = _open(log_dir, "always")
    payload = os.urandom(record_bytes)
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def produce(samples: list[float]) -> None:
        start.wait()
        clock, append = time.perf_counter, log.append
        now = clock()
        while now < stop_at[0]:
            append(payload)
            after = clock()
            samples.append(after - now)
            now = after

    workers = [threading.Thread(target=produce, args=(s,)) for s in per_thread]
    try:
        for worker in workers:
            worker.start()
        started = time.perf_counter()
        stop_at[0] = started + seconds
        start.wait()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
    finally:
        log.close()
    samples = [s for thread_samples in per_thread for s in thread_samples]
    p50, p99 = _percentiles(samples)
    return Latency(len(samples), elapsed, p50, p99)


def scan(log_dir: str) -> Throughput:
    """Log.read over a whole log (opened for writing, as a reader in the agent would)."""
    log = _open(log_dir, "never")
    try:
        records = payload_bytes = 0
        started = time.perf_counter()
        for record in log.read():
            records += 1
            payload_bytes += len(record.payload)
        seconds = time.perf_counter() - started
    finally:
        log.close()
    return Throughput(records, payload_bytes, seconds)


def bare_read(paths: list[str]) -> Throughput:
    """Read the same files in 1 MiB chunks and do nothing with them."""
    chunks = total = 0
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while data := handle.read(BARE_CHUNK_BYTES):
                chunks += 1
                total += len(data)
    return Throughput(chunks, total, time.perf_counter() - started)


def segment_paths(log_dir: str) -> list[str]:
    folder = os.path.join(log_dir, WAL_DIR)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".wal"))


def change_record(rng: random.Random, seq: int) -> bytes:
    """A JSON change record of the kind the agent captures: a row's before and after images."""
    row_id = rng.randrange(1, 5_000_000)
    before = {
        "id": row_id,
        "customer_id": rng.randrange(1, 200_000),
        "status": rng.choice(["pending", "paid", "shipped", "delivered", "cancelled"]),
        "total_cents": rng.randrange(100, 500_000),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "updated_at": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
        f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(10**6):06d}Z",
        "note": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=rng.randrange(0, 60))),
    }
    after = dict(
        before, status=rng.choice(["paid", "shipped", "delivered"]), total_cents=before["total_cents"]
    )
    change = {
        "lsn": f"0/{0x1A2B3C00 + seq * 0x58:X}",
        "xid": 700_000 + seq // 3,
        "op": rng.choice(["update", "update", "update", "insert", "delete"]),
        "schema": "public",
        "table": rng.choice(["orders", "order_items", "customers", "payments"]),
        "ts_ms": 1_700_000_000_000 + seq * 7,
        "before": before,
        "after": after,
    }
    return json.dumps(change, separators=(",", ":")).encode()


def realistic_segment(log_dir: str, target_bytes: int) -> str:
    """Fill one sealed segment of about `target_bytes` with change records; return its path."""
    rng = random.Random(3)
    log = wal.open(log_dir, fsync="never", auto_archive=False, segment_bytes=target_bytes)
    try:
        seq = 1
        while len(segment_paths(log_dir)) < 2:
            log.append_batch([change_record(rng, seq + i) for i in range(1000)], wait=True)
            seq += 1000
    finally:
        log.close()
    return segment_paths(log_dir)[0]


def archive_with_wal(segment: str, log_dir: str) -> Compression:
    """wal.archive.archive_segment (zstd level 3, with checksum) on a copy of the segment."""
    copy = os.path.join(log_dir, WAL_DIR, os.path.basename(segment))
    first_seq = parse_first_seq(os.path.basename(segment))
    assert first_seq is not None
    os.makedirs(os.path.join(log_dir, WAL_DIR), exist_ok=True)
    os.makedirs(os.path.join(log_dir, "archive"), exist_ok=True)
    shutil.copyfile(segment, copy)
    original = os.path.getsize(copy)
    started = time.perf_counter()
    result = archive_segment(OS_FS, copy, log_dir, first_seq, 3)
    seconds = time.perf_counter() - started
    return Compression(original, result.archived_bytes, seconds)


def archive_with_cli(segment: str, out_path: str) -> Compression | None:
    """`zstd -3` on the same file, timed as a subprocess; None when the CLI is missing."""
    if shutil.which("zstd") is None:
        return None
    started = time.perf_counter()
    subprocess.run(["zstd", "-3", "-q", "-f", "-o", out_path, segment], check=True)
    seconds = time.perf_counter() - started
    return Compression(os.path.getsize(segment), os.path.getsize(out_path), seconds)
