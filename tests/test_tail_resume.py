"""A tail that stopped inside a live segment resumes there after the segment is sealed.

Regression: a tail stopped at the durable watermark (or at max_records) kept its stream open
with the end the writer had published then. Once the writer sealed that segment, the old stream
ended at the stale end and the walker moved to the next segment, skipping the rest of the
sealed one and reporting the skipped sequences as damage.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wal


def read_exactly(tail: wal.Tail, count: int, max_records: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        batch, payload_bytes = tail.next_batch_sized(max_records, timeout_s=2)
        assert batch, f"the tail stalled after {len(seqs)} of {count} records"
        assert payload_bytes == sum(len(record.payload) for record in batch)
        seqs += [record.seq for record in batch]
    return seqs


@pytest.mark.parametrize("stop", ["watermark", "max_records"])
def test_tail_resumes_inside_a_segment_sealed_meanwhile(tmp_path, stop):
    with wal.open(str(tmp_path), segment_bytes=64 * 1024, auto_archive=False) as log:
        log.append_batch([b"x" * 200 for _ in range(100)])
        tail = log.tail(1)
        if stop == "watermark":
            assert read_exactly(tail, 100, 1000) == list(range(1, 101))
        else:
            assert read_exactly(tail, 60, 60) == list(range(1, 61))
        log.append_batch([b"y" * 200 for _ in range(500)])  # seals the first segment, then another
        start = 101 if stop == "watermark" else 61
        assert read_exactly(tail, 601 - start, 50) == list(range(start, 601))
        assert log.damage == []
        tail.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=12), st.integers(1, 300), st.integers(0, 2**32))
def test_tail_sees_every_sequence_whatever_the_batches(tmp_path_factory, batches, max_records, seed):
    rng = random.Random(seed)
    root = tmp_path_factory.mktemp("log")
    with wal.open(str(root), segment_bytes=16 * 1024, auto_archive=False) as log:
        tail = log.tail(1)
        seen: list[int] = []
        total = 0
        for size in batches:
            log.append_batch([rng.randbytes(rng.randint(0, 300)) for _ in range(size)])
            total += size
            # read part of what is there, leaving the tail somewhere inside a segment
            want = rng.randint(0, total - len(seen))
            if want:
                seen += read_exactly(tail, want, max_records)
        seen += read_exactly(tail, total - len(seen), max_records)
        assert log.damage == []
        assert seen == list(range(1, total + 1))
        tail.close()
