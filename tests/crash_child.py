"""The process that test_crash_process.py kills: appends from several threads, reporting each ack.

    python -m tests.crash_child <log dir> <run id> <threads> <segment bytes> <auto archive 0|1>

Prints `ready <last seq>` once the log is open, then `ack <seq> <tag> <size>` for every append
that returned (the payload is `payload_for(tag, size)`), and `cursor <position>` for every cursor
commit that returned. Each line is one os.write, so a SIGKILL never leaves half a line.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading

import wal

CURSOR = "shipper"


def payload_for(tag: str, size: int) -> bytes:
    """`tag|` and `size` bytes derived from the tag: unique per tag, checkable on its own."""
    head = f"{tag}|".encode()
    digest = hashlib.sha256(head).digest()
    return head + (digest * (size // len(digest) + 1))[:size]


def parse_payload(payload: bytes) -> tuple[str, int]:
    """The (tag, size) a payload was made from; raises ValueError for bytes payload_for never made."""
    head, sep, body = payload.partition(b"|")
    tag = head.decode()
    if not sep or payload_for(tag, len(body)) != payload:
        raise ValueError(f"not a payload this test wrote: {payload[:60]!r}")
    return tag, len(body)


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def append_forever(log: wal.Log, run: str, thread: int) -> None:
    rng = random.Random(f"{run}/{thread}")
    cursor = log.cursor(CURSOR) if thread == 0 else None
    counter = 0
    while True:
        tags = []
        for _ in range(rng.choice([1, 1, 1, 3])):
            counter += 1
            tags.append((f"{run}.{thread}.{counter}", rng.choice([0, 8, 100, rng.randint(0, 700)])))
        seqs = log.append_batch([payload_for(tag, size) for tag, size in tags])
        say("\n".join(f"ack {seq} {tag} {size}" for seq, (tag, size) in zip(seqs, tags, strict=True)))
        if cursor is not None and rng.random() < 0.05:
            position = rng.randint(cursor.position, seqs[-1])
            cursor.commit(position)
            say(f"cursor {position}")


def main(argv: list[str]) -> None:
    root, run, threads, segment_bytes, auto_archive = argv
    log = wal.open(root, segment_bytes=int(segment_bytes), auto_archive=auto_archive == "1", fsync="always")
    say(f"ready {log.durable_seq}")
    workers = [
        threading.Thread(target=append_forever, args=(log, run, t), daemon=True) for t in range(int(threads))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()  # until the parent kills us


if __name__ == "__main__":
    main(sys.argv[1:])
