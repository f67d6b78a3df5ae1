"""`python -m tests.benchmarks`: measure the WAL engine and its floor side by side, then the
PostgreSQL capture against pg_recvlogical (pg_section.py); print, record.

Everything runs in one process, in one directory on the repository's disk (bench-out/, ignored by
git; never tmpfs, where fdatasync costs nothing), and is removed afterwards. About two minutes per
section; `--only wal`, `--only pg`, `--only sender` or `--only ingest` runs one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tests.benchmarks import ingest_section, measure, pg_section, sender_section
from tests.benchmarks.report import Row, console_table, markdown_section, write_section

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT_DIR = os.path.join(REPO, "bench-out")
DOC_PATH = os.path.join(REPO, "docs", "benchmarks.md")

SMALL_BYTES = 256
LARGE_BYTES = 4 * measure.KiB
SMALL_COUNT = 500_000
LARGE_TOTAL_BYTES = 256 * measure.MiB
FLOOR_SECONDS = 2.0
THREAD_SECONDS = 2.5
ROUNDS = 3
ARCHIVE_SEGMENT_BYTES = 16 * measure.MiB

T = TypeVar("T")

# The targets the WAL engine issue sets, as (ratio wanted, comparison).
PIPELINED_VS_FLOOR = 20.0
ALWAYS_VS_NEVER = 0.80
LARGE_VS_SEQUENTIAL = 0.60
THREADS16_VS_FLOOR = 4.0
P99_VS_FLOOR_P99 = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--dir", default=DEFAULT_OUT_DIR, help="where to write (a real disk, not tmpfs)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--only", choices=("wal", "pg", "sender", "ingest"), help="run one section (default: all)"
    )
    args = parser.parse_args(argv)

    workdir = os.path.join(args.dir, f"run-{os.getpid()}")
    os.makedirs(workdir)
    disk = _describe_disk(workdir)
    print(f"writing in {workdir}: {disk}", flush=True)
    if "tmpfs" in disk:
        print("warning: tmpfs makes fdatasync free; the floor and every ratio mean nothing here")
    # Each section: its rows and notes, how to render them, and how to write them into the doc.
    sections = []
    try:
        if args.only in (None, "wal"):
            sections.append((*_run(workdir), markdown_section, write_section))
        if args.only in (None, "pg"):
            sections.append((*pg_section.run(workdir), pg_section.markdown_section, pg_section.write))
        if args.only in (None, "sender"):
            sections.append(
                (*sender_section.run(workdir), sender_section.markdown_section, sender_section.write)
            )
        if args.only in (None, "ingest"):
            sections.append(
                (*ingest_section.run(workdir), ingest_section.markdown_section, ingest_section.write)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine = f"{os.cpu_count()} cores ({_cpu_model()}), {_memory()}, disk: {disk}"
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    for rows, notes, render, write in sections:
        print()
        print(console_table(rows))
        for note in notes:
            print(f"- {note}")
        if not args.no_doc:
            write(DOC_PATH, render(rows, date=date, machine=machine, notes=notes))
    if not args.no_doc:
        print(f"\nwrote {os.path.relpath(DOC_PATH, REPO)}")
    return 0


def _run(workdir: str) -> tuple[list[Row], list[str]]:
    def step(message: str) -> None:
        # Start each measurement with no dirty pages left over from the one before.
        os.sync()
        print(f"  {message}...", flush=True)

    def log_dir(name: str) -> str:
        return os.path.join(workdir, name)

    # Interleaved rounds, each measurement's median reported: this virtual disk's fdatasync
    # latency drifts by tens of percent from one minute to the next.
    large_count = LARGE_TOTAL_BYTES // LARGE_BYTES
    runs: dict[str, list[Any]] = {}

    def record(name: str, result: Any) -> None:
        runs.setdefault(name, []).append(result)

    for round_ in range(ROUNDS):
        step(f"round {round_ + 1}/{ROUNDS}: floor, write + fdatasync of 256 B")
        record("floor", measure.bare_fdatasync(workdir, SMALL_BYTES, FLOOR_SECONDS))
        step(f"round {round_ + 1}/{ROUNDS}: pipelined {SMALL_COUNT:,} x 256 B, fsync=always and never")
        for fsync in ("always", "never"):
            os.sync()
            name = f"small-{fsync}"
            record(name, measure.pipelined(log_dir(f"{name}-{round_}"), fsync, SMALL_BYTES, SMALL_COUNT))
        step(f"round {round_ + 1}/{ROUNDS}: pipelined {large_count:,} x 4 KiB, and bare sequential writes")
        for fsync in ("always", "never"):
            os.sync()
            name = f"large-{fsync}"
            record(name, measure.pipelined(log_dir(f"{name}-{round_}"), fsync, LARGE_BYTES, large_count))
        for name, sync_every in (("sequential", None), ("sequential-synced", measure.BARE_CHUNK_BYTES)):
            os.sync()
            record(name, measure.bare_sequential(workdir, LARGE_TOTAL_BYTES, sync_every))
        for count in (1, 4, 16):
            step(f"round {round_ + 1}/{ROUNDS}: {count} thread(s) calling append(wait=True)")
            record(
                f"threads-{count}",
                measure.waiting_threads(
                    log_dir(f"threads-{count}-{round_}"), count, SMALL_BYTES, THREAD_SECONDS
                ),
            )
    floor = _median(runs["floor"], lambda r: r.ops_per_s)
    small_always = _median(runs["small-always"], lambda r: r.records_per_s)
    small_never = _median(runs["small-never"], lambda r: r.records_per_s)
    large_always = _median(runs["large-always"], lambda r: r.mib_per_s)
    large_never = _median(runs["large-never"], lambda r: r.mib_per_s)
    sequential = _median(runs["sequential"], lambda r: r.mib_per_s)
    sequential_synced = _median(runs["sequential-synced"], lambda r: r.mib_per_s)
    threads = {count: _median(runs[f"threads-{count}"], lambda r: r.ops_per_s) for count in (1, 4, 16)}

    step("scan: Log.read against a bare read of the same segments")
    # A first bare read pulls the files into the page cache, so both sides read from memory.
    scans = {}
    for name in ("small-always-0", "large-always-0"):
        measure.bare_read(measure.segment_paths(log_dir(name)))
        bare = measure.bare_read(measure.segment_paths(log_dir(name)))
        scans[name] = (measure.scan(log_dir(name)), bare)

    step("archive: a 16 MiB segment of JSON change records, archive_segment against zstd -3")
    segment = measure.realistic_segment(log_dir("json"), ARCHIVE_SEGMENT_BYTES)
    cli = measure.archive_with_cli(segment, os.path.join(workdir, "cli.wal.zst"))
    ours = measure.archive_with_wal(segment, log_dir("json-archive"))

    rows = [
        Row(
            "floor: write+fdatasync 256 B",
            f"{floor.ops_per_s:,.0f} ops/s",
            f"p50 {floor.p50_us:.0f} µs, p99 {floor.p99_us:.0f} µs",
        ),
        _pipelined_row("pipelined 256 B, fsync=always", small_always, floor),
        Row(
            "  its share of fsync=never",
            f"{small_always.records_per_s:,.0f} rec/s",
            f"never: {small_never.records_per_s:,.0f} rec/s, {small_never.mib_per_s:.1f} MiB/s",
            _ratio(small_always.records_per_s / small_never.records_per_s, "%"),
            f"≥ {ALWAYS_VS_NEVER:.0%}",
            small_always.records_per_s >= ALWAYS_VS_NEVER * small_never.records_per_s,
        ),
        Row(
            "pipelined 4 KiB, fsync=always",
            f"{large_always.mib_per_s:.1f} MiB/s ({large_always.records_per_s:,.0f} rec/s)",
            f"bare seq. write, 1 fdatasync: {sequential.mib_per_s:.1f} MiB/s",
            _ratio(large_always.mib_per_s / sequential.mib_per_s, "%"),
            f"≥ {LARGE_VS_SEQUENTIAL:.0%}",
            large_always.mib_per_s >= LARGE_VS_SEQUENTIAL * sequential.mib_per_s,
        ),
        Row(
            "  against a sync per MiB",
            f"{large_always.mib_per_s:.1f} MiB/s",
            f"bare seq. write, fdatasync/MiB: {sequential_synced.mib_per_s:.1f} MiB/s",
            _ratio(large_always.mib_per_s / sequential_synced.mib_per_s, "%"),
        ),
        Row(
            "pipelined 4 KiB, fsync=never",
            f"{large_never.mib_per_s:.1f} MiB/s ({large_never.records_per_s:,.0f} rec/s)",
            "always/never",
            _ratio(large_always.mib_per_s / large_never.mib_per_s, "%"),
        ),
    ]
    for count, result in threads.items():
        passed, target = None, ""
        if count == 16:
            passed = result.ops_per_s >= THREADS16_VS_FLOOR * floor.ops_per_s
            target = f"≥ {THREADS16_VS_FLOOR:.0f}× floor"
        rows.append(
            Row(
                f"{count} thread(s), append(wait=True)",
                f"{result.ops_per_s:,.0f} rec/s",
                f"p50 {result.p50_us:.0f} µs, p99 {result.p99_us:.0f} µs",
                _ratio(result.ops_per_s / floor.ops_per_s, "×") + " floor",
                target,
                passed,
            )
        )
    single = threads[1]
    rows.append(
        Row(
            "  1 thread p99 vs floor p99",
            f"{single.p99_us:.0f} µs",
            f"floor p99 {floor.p99_us:.0f} µs",
            _ratio(single.p99_us / floor.p99_us, "×"),
            f"≤ {P99_VS_FLOOR_P99:.0f}×",
            single.p99_us <= P99_VS_FLOOR_P99 * floor.p99_us,
        )
    )
    for name, label in (("small-always-0", "256 B"), ("large-always-0", "4 KiB")):
        read, bare = scans[name]
        rows.append(
            Row(
                f"scan Log.read, {label} records",
                f"{read.mib_per_s:,.0f} MiB/s ({read.records_per_s:,.0f} rec/s)",
                f"bare read 1 MiB chunks: {bare.mib_per_s:,.0f} MiB/s",
                _ratio(read.mib_per_s / bare.mib_per_s, "%"),
            )
        )
    rows.append(
        Row(
            "archive_segment, zstd level 3",
            f"ratio {ours.ratio:.2f}, {ours.mib_per_s:.0f} MiB/s",
            f"zstd -3 CLI: ratio {cli.ratio:.2f}, {cli.mib_per_s:.0f} MiB/s" if cli else "zstd CLI missing",
            _ratio(ours.mib_per_s / cli.mib_per_s, "%") + " speed" if cli else "",
        )
    )
    notes = [
        f"Each log and floor figure is the median of {ROUNDS} interleaved rounds; the spread "
        f"(min–max) was: floor {_spread(runs['floor'], lambda r: r.ops_per_s, 'ops/s')}; "
        f"pipelined 256 B always {_spread(runs['small-always'], lambda r: r.records_per_s, 'rec/s')}, "
        f"never {_spread(runs['small-never'], lambda r: r.records_per_s, 'rec/s')}; "
        f"4 KiB always {_spread(runs['large-always'], lambda r: r.mib_per_s, 'MiB/s')}; "
        f"bare sequential {_spread(runs['sequential'], lambda r: r.mib_per_s, 'MiB/s')}; "
        f"16 threads {_spread(runs['threads-16'], lambda r: r.ops_per_s, 'rec/s')}.",
        f"Pipelined runs: {SMALL_COUNT:,} × 256 B and {large_count:,} × 4 KiB records, "
        f"`wait_durable` every {measure.PIPELINE_WINDOW_RECORDS:,} appends to bound the queue; "
        "MiB/s counts payload bytes (32 B of framing per record are extra).",
        f"Scan MiB/s counts payload bytes for Log.read and file bytes for the bare read; "
        f"archive input: a {ours.original_bytes / measure.MiB:.0f} MiB segment of JSON change records "
        "(the zstd CLI time includes starting the process).",
    ]
    return rows, notes


def _pipelined_row(label: str, result: measure.Throughput, floor: measure.Latency) -> Row:
    return Row(
        label,
        f"{result.records_per_s:,.0f} rec/s, {result.mib_per_s:.1f} MiB/s",
        f"floor {floor.ops_per_s:,.0f} ops/s",
        _ratio(result.records_per_s / floor.ops_per_s, "×") + " floor",
        f"≥ {PIPELINED_VS_FLOOR:.0f}× floor",
        result.records_per_s >= PIPELINED_VS_FLOOR * floor.ops_per_s,
    )


def _median(results: list[T], key: Callable[[T], float]) -> T:
    """The run whose figure is the median (the lower middle one for an even count)."""
    ordered = sorted(results, key=key)
    return ordered[(len(ordered) - 1) // 2]


def _spread(results: list[T], key: Callable[[T], float], unit: str) -> str:
    values = [key(r) for r in results]
    return f"{min(values):,.0f}–{max(values):,.0f} {unit}"


def _ratio(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"
    return f"{value:.1f}×"


def _describe_disk(path: str) -> str:
    """The device, file system type and size of the mount holding `path` (from df)."""
    try:
        output = subprocess.run(
            ["df", "-hT", path], check=True, capture_output=True, text=True
        ).stdout.splitlines()[-1]
        device, fstype, size, _used, available, *_ = output.split()
        return f"{device} ({fstype}, {size}, {available} free)"
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "unknown (df failed)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
        return f"{kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "unknown RAM"


if __name__ == "__main__":
    sys.exit(main())
