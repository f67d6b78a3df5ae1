"""Stateful property tests: a model of the log (a list of payloads) against the real log on disk.

Every example starts from a fresh directory on the real file system, uses tiny segments so rotation
happens all the time, and archives only when a rule asks for it (auto_archive=False).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import defaultdict

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import wal
from wal.format import HEADER_SIZE, RECORD_OVERHEAD
from wal.layout import parse_first_seq

SEGMENT_BYTES = st.integers(min_value=128, max_value=2048)
PAYLOAD = st.binary(min_size=0, max_size=300)
CURSOR_NAMES = st.sampled_from(["alpha", "beta"])


class LogMachine(RuleBasedStateMachine):
    """The log must always hold exactly the model's payloads, numbered 1..N."""

    fsync = "never"

    def __init__(self) -> None:
        super().__init__()
        self.root = os.path.join(tempfile.mkdtemp(prefix="wal-prop-"), "log")
        self.model: list[bytes] = []
        self.cursors: dict[str, int] = {}  # every cursor ever created, with its committed position
        self.log: wal.Log | None = None
        self.segment_bytes = 0

    def _open(self, segment_bytes: int) -> None:
        self.segment_bytes = segment_bytes
        self.log = wal.open(
            self.root,
            fsync=self.fsync,
            segment_bytes=segment_bytes,
            auto_archive=False,
            min_free_bytes=0,
        )

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close()
        shutil.rmtree(os.path.dirname(self.root), ignore_errors=True)

    @initialize(segment_bytes=SEGMENT_BYTES)
    def open_fresh(self, segment_bytes: int) -> None:
        self._open(segment_bytes)
        assert self.log is not None and self.log.last_seq == 0

    # -- rules -----------------------------------------------------------------------------------

    @rule(payload=PAYLOAD)
    def append(self, payload: bytes) -> None:
        assert self.log is not None
        seq = self.log.append(payload)
        self.model.append(payload)
        assert seq == len(self.model)

    @rule(payloads=st.lists(PAYLOAD, min_size=1, max_size=8))
    def append_batch(self, payloads: list[bytes]) -> None:
        assert self.log is not None
        first = len(self.model) + 1
        seqs = self.log.append_batch(payloads)
        self.model.extend(payloads)
        assert seqs == list(range(first, first + len(payloads)))

    @rule(segment_bytes=st.one_of(st.none(), SEGMENT_BYTES))
    def reopen(self, segment_bytes: int | None) -> None:
        assert self.log is not None
        self.log.close()
        self.log = None
        # Without a writer, the directory alone must read back as the model.
        offline = list(wal.read_log(self.root))
        assert [r.seq for r in offline] == list(range(1, len(self.model) + 1))
        assert [r.payload for r in offline] == self.model
        self._open(self.segment_bytes if segment_bytes is None else segment_bytes)
        assert self.log is not None
        assert self.log.last_seq == len(self.model)
        assert self.log.durable_seq == len(self.model)
        assert self.log.cursors() == self.cursors

    @rule(name=CURSOR_NAMES, data=st.data())
    def commit_cursor(self, name: str, data: st.DataObject) -> None:
        assert self.log is not None
        cursor = self.log.cursor(name)
        assert cursor.position == self.cursors.get(name, 0)
        target = data.draw(st.integers(min_value=cursor.position, max_value=len(self.model)), label="seq")
        cursor.commit(target)
        self.cursors[name] = target
        assert cursor.position == target
        assert self.log.cursors() == self.cursors

    @rule(commit_to=st.one_of(st.none(), CURSOR_NAMES), data=st.data())
    def archive(self, commit_to: str | None, data: st.DataObject) -> None:
        assert self.log is not None
        if commit_to is not None:
            self.commit_cursor(commit_to, data)
        before = self._live_first_seqs()
        done = self.log.archive()
        # Archiving takes the oldest live segments, in order, never the active one.
        assert [a.first_seq for a in done] == before[: len(done)]
        assert len(done) < len(before)
        for archived in done:
            assert archived.archive.endswith(".wal.zst") and os.path.exists(archived.archive)
            assert not os.path.exists(archived.source)
        after = self._live_first_seqs()
        assert after == before[len(done) :]
        # It stopped only at the active segment or at a segment some cursor has not passed.
        if len(after) >= 2 and self.cursors:
            floor = min(self.cursors.values())
            assert floor < after[1] - 1, (floor, after)
        elif not self.cursors:
            assert len(after) == 1

    @rule(data=st.data())
    def read_from(self, data: st.DataObject) -> None:
        assert self.log is not None
        n = len(self.model)
        from_seq = data.draw(st.integers(min_value=0, max_value=n + 2), label="from_seq")
        start = max(from_seq, 1)
        records = list(self.log.read(from_seq=from_seq))
        assert [r.seq for r in records] == list(range(start, n + 1))
        assert [r.payload for r in records] == self.model[start - 1 :]

    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        assert self.log is not None
        n = len(self.model)
        from_seq = data.draw(st.integers(min_value=1, max_value=n + 1), label="from_seq")
        to_seq = data.draw(st.integers(min_value=from_seq - 1, max_value=n + 1), label="to_seq")
        records = list(self.log.read(from_seq=from_seq, to_seq=to_seq))
        assert [r.payload for r in records] == self.model[from_seq - 1 : min(to_seq, n)]

    # -- invariants ------------------------------------------------------------------------------

    def _live_first_seqs(self) -> list[int]:
        names = sorted(os.listdir(os.path.join(self.root, "wal")))
        seqs = [parse_first_seq(name) for name in names]
        assert None not in seqs, names
        return seqs  # type: ignore[return-value]

    @invariant()
    def log_matches_model(self) -> None:
        if self.log is None:
            return
        n = len(self.model)
        records = list(self.log.read())
        assert [r.seq for r in records] == list(range(1, n + 1))
        assert [r.payload for r in records] == self.model
        assert self.log.last_seq == n
        assert self.log.durable_seq == n
        assert self.log.damage == []

        archive_dir = os.path.join(self.root, "archive")
        wal_dir = os.path.join(self.root, "wal")
        by_file: dict[str, list[wal.Record]] = defaultdict(list)
        seen_live = False
        for record in records:
            by_file[record.path].append(record)
            if record.archived:
                assert not seen_live, "an archived record after a live one"
                assert record.path.endswith(".wal.zst")
                assert os.path.dirname(record.path) == archive_dir
                assert os.path.exists(record.path)
            else:
                seen_live = True
                assert record.path.endswith(".wal") and os.path.dirname(record.path) == wal_dir
        for path, held in by_file.items():
            # Each file is named after its first record, and records sit back to back in it.
            assert parse_first_seq(os.path.basename(path)) == held[0].seq, path
            assert held[0].offset == HEADER_SIZE
            for previous, record in itertools.pairwise(held):
                assert record.offset == previous.offset + RECORD_OVERHEAD + len(previous.payload)
        for path in by_file:
            if path.endswith(".wal"):
                size = os.path.getsize(path)
                last = by_file[path][-1]
                assert size == last.offset + RECORD_OVERHEAD + len(last.payload)

        # Every live segment holds records, except possibly the active (last) one, named N + 1.
        live = sorted(os.listdir(wal_dir))
        assert live, "there is always an active segment"
        live_with_records = {os.path.basename(p) for p in by_file if p.endswith(".wal")}
        for name in live[:-1]:
            assert name in live_with_records, name
        if live[-1] not in live_with_records:
            assert parse_first_seq(live[-1]) == n + 1
            assert os.path.getsize(os.path.join(wal_dir, live[-1])) == HEADER_SIZE
        archived_names = {os.path.basename(p) for p in by_file if p.endswith(".wal.zst")}
        assert sorted(os.listdir(archive_dir)) == sorted(archived_names)


LogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_log_state_machine = LogMachine.TestCase


class DurableLogMachine(LogMachine):
    """The same model with fsync="always": the leader-writes path and real fsyncs, fewer examples."""

    fsync = "always"


DurableLogMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=20, deadline=None)
test_durable_log_state_machine = DurableLogMachine.TestCase
