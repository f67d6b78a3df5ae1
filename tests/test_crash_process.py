"""A real process killed with SIGKILL mid-append, again and again, on the same log directory.

Each cycle starts tests/crash_child.py (fsync="always", small segments, 2-4 appending threads,
sometimes archiving in the background), collects the acknowledgements it prints, kills it after
a random 20-300 ms (sometimes while it is still opening the log), then reopens the log here and
checks: every acknowledged record is present with its payload, sequences run contiguously from 1
with no duplicates, the cursor did not move back, and the next append gets last + 1.

CRASH_CYCLES sets the number of cycles (40 by default) for a longer run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

import wal
from tests.crash_child import CURSOR, parse_payload, payload_for

CYCLES = int(os.environ.get("CRASH_CYCLES", "40"))
READY_TIMEOUT_S = 30.0  # a child that has not opened the log by then is stuck in open
STEP_TIMEOUT_S = 30.0  # reaping a killed child, or reopening and checking the log
SEGMENT_BYTES = 32 * 1024  # rotates a few times a cycle; reading many tiny segments is slow
REPO = Path(__file__).resolve().parent.parent


class Child:
    """One run of crash_child, its output collected by a thread so reading never blocks the test."""

    def __init__(self, root: str, run: str, rng: random.Random) -> None:
        args = [root, run, str(rng.randint(2, 4)), str(SEGMENT_BYTES), "1" if rng.random() < 0.5 else "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.stderr = b""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.endswith(b"\n"):  # a line cut by the kill was never a whole acknowledgement
                line = raw.decode()
                self.lines.append(line)
                if line.startswith("ready "):
                    self.ready.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def kill(self) -> int | None:
        """SIGKILL the child (unless it already exited) and collect everything it printed."""
        exited = self.proc.poll()
        if exited is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child {self.proc.pid} did not die within {STEP_TIMEOUT_S} s of SIGKILL")
        self._out.join(STEP_TIMEOUT_S)
        self._err.join(STEP_TIMEOUT_S)
        return exited

    def acknowledged(self) -> tuple[dict[int, bytes], int]:
        """The records the child saw acknowledged, and the highest cursor commit that returned."""
        records: dict[int, bytes] = {}
        cursor = 0
        for line in self.lines:
            kind, *fields = line.split()
            if kind == "ack":
                seq, tag, size = fields
                records[int(seq)] = payload_for(tag, int(size))
            elif kind == "cursor":
                cursor = max(cursor, int(fields[0]))
        return records, cursor


def run_with_timeout(what: str, function, *args):
    """Run `function` in a thread; a step that hangs fails the test with its stack, not a hang."""
    result: list = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(function(*args))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, name=what, daemon=True)
    worker.start()
    worker.join(STEP_TIMEOUT_S)
    if worker.is_alive():
        frame = sys._current_frames().get(worker.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
        pytest.fail(f"{what} hung for {STEP_TIMEOUT_S} s:\n{stack}")
    if failure:
        raise failure[0]
    return result[0]


def reopen_and_check(root: str, known: dict[int, bytes], cursor_floor: int, context: str) -> int:
    """Open the log in this process, check it against what was acknowledged; return the cursor."""
    try:
        log = wal.open(root, segment_bytes=SEGMENT_BYTES, auto_archive=False, fsync="always")
    except wal.WalError as exc:
        raise AssertionError(f"{context}: open failed after the kill: {exc!r}") from exc
    try:
        records = list(log.read())
        seqs = [r.seq for r in records]
        if seqs != list(range(1, len(seqs) + 1)):
            jumps = [f"{a}->{b}" for a, b in zip([0, *seqs], seqs, strict=False) if b != a + 1]
            raise AssertionError(f"{context}: sequences not contiguous from 1: {jumps[:10]}; {log.damage}")
        found = {r.seq: r.payload for r in records}
        lost = sorted(set(known) - set(found))
        assert not lost, f"{context}: acknowledged records lost: {lost[:20]} (log ends at {len(seqs)})"
        changed = [seq for seq, payload in known.items() if found[seq] != payload]
        assert not changed, f"{context}: records changed: {changed[:20]}"
        tags = [parse_payload(p)[0] for p in found.values()]
        assert len(set(tags)) == len(tags), f"{context}: one payload stored under two sequences"
        last = seqs[-1] if seqs else 0
        position = log.cursors().get(CURSOR, 0)
        assert cursor_floor <= position <= last, (
            f"{context}: cursor at {position}, committed {cursor_floor}, log ends at {last}"
        )
        known.update(found)  # seen by a reader: must survive every later crash too
        probe = payload_for(f"probe.{context.replace(' ', '_')}", 5)
        seq = log.append(probe)
        assert seq == last + 1, f"{context}: append after reopen got {seq}, expected {last + 1}"
        known[seq] = probe
        return position
    finally:
        log.close()


def test_sigkill_mid_append_loses_nothing_acknowledged(tmp_path):
    root = str(tmp_path / "log")
    rng = random.Random(os.environ.get("CRASH_SEED", "crash-process"))
    known: dict[int, bytes] = {}
    cursor = 0
    early_kills = 0
    for cycle in range(CYCLES):
        context = f"cycle {cycle}"
        child = Child(root, f"c{cycle}", rng)
        if rng.random() < 0.2:
            early_kills += 1
            time.sleep(rng.uniform(0, 0.3))  # may land while the child is still recovering the log
        else:
            if not child.ready.wait(READY_TIMEOUT_S):
                child.kill()
                pytest.fail(
                    f"{context}: the child did not open the log in {READY_TIMEOUT_S} s: {child.stderr!r}"
                )
            time.sleep(rng.uniform(0.02, 0.3))
        exited = child.kill()
        assert exited is None, f"{context}: the child exited by itself ({exited}): {child.stderr.decode()}"
        assert not child.stderr, f"{context}: the child wrote to stderr: {child.stderr.decode()}"
        acked, committed = child.acknowledged()
        for seq, payload in acked.items():
            assert known.get(seq, payload) == payload, f"{context}: sequence {seq} acknowledged twice"
        known.update(acked)
        cursor = max(cursor, committed)
        cursor = run_with_timeout(f"{context}: reopen", reopen_and_check, root, known, cursor, context)
    assert len(known) > CYCLES * 10, f"only {len(known)} records in {CYCLES} cycles: the child barely ran"
    assert early_kills < CYCLES
