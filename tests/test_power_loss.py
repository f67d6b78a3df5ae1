"""Simulated power loss: the log on a CrashFS, crashed at random moments and at every failpoint.

Each seed runs a few rounds. A round reopens the log on what the last crash left, checks it, and
appends from several threads (and, in some seeds, commits a cursor and archives) until the machine
"dies": `fs.crash(rng)` is taken without closing the log, from a crasher thread while appends are
in flight, or from inside a named failpoint. What must hold after every reopen:

- every acknowledged record (append returned before the crash) is present with its payload;
- sequences read are contiguous from 1, with no duplicates and no payload that was never appended;
- every record a reader saw after a reopen survives every later crash (sequences never reused);
- committed cursors do not move back, and the next append gets last + 1.

Seeds scale with POWER_LOSS_SEEDS (random crashes) and POWER_LOSS_FAILPOINT_SEEDS (per failpoint).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field

import pytest

import wal
from tests.crashfs import CrashFS, TailMode
from wal import failpoints
from wal.layout import list_segments
from wal.scan import Damage
from wal.segment import iter_segment

ROOT = "/var/lib/log"
RANDOM_SEEDS = int(os.environ.get("POWER_LOSS_SEEDS", "500"))
FAILPOINT_SEEDS = int(os.environ.get("POWER_LOSS_FAILPOINT_SEEDS", "12"))
JOIN_TIMEOUT_S = 20.0
CURSOR = "reader"


# -- payloads that describe themselves, so any record read can be checked ---------------------------


def make_payload(tag: str, size: int) -> bytes:
    """`tag:size|` followed by `size` bytes derived from the tag: unique, and checkable alone."""
    head = f"{tag}:{size}|".encode()
    digest = hashlib.sha256(head).digest()
    return head + (digest * (size // len(digest) + 1))[:size]


def check_payload(payload: bytes) -> None:
    head, sep, _ = payload.partition(b"|")
    tag, _, size = head.decode(errors="replace").rpartition(":")
    assert sep and size.isdigit() and make_payload(tag, int(size)) == payload, (
        f"a record holds bytes that were never appended: {payload[:60]!r}"
    )


# -- what the test knows ----------------------------------------------------------------------------


@dataclass
class Acks:
    """What the log acknowledged in this round: appends that returned and cursor commits."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: dict[int, bytes] = field(default_factory=dict)
    cursor: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    crash_at: int = 0  # the crasher fires once this many appends were acknowledged


@dataclass
class History:
    """What must survive every later crash: records seen after a reopen, and cursor positions."""

    known: dict[int, bytes] = field(default_factory=dict)
    cursor: int = 0


class Snapshot:
    """Takes the crash image once: acknowledgements are copied first, then the disk is frozen."""

    def __init__(self, fs: CrashFS, rng: random.Random, acks: Acks, tail: TailMode) -> None:
        self.fs, self.rng, self.acks, self.tail = fs, rng, acks, tail
        self.lock = threading.Lock()
        self.taken = threading.Event()
        self.crashed: CrashFS | None = None
        self.required: dict[int, bytes] = {}
        self.cursor = 0
        self.where = ""

    def take(self, where: str) -> None:
        with self.lock:
            if self.crashed is not None:
                return
            # Copy before crashing: an append recorded here returned before the crash, so its
            # fsync happened before it too.
            with self.acks.lock:
                self.required = dict(self.acks.records)
                self.cursor = self.acks.cursor
            self.crashed = self.fs.crash(self.rng, tail=self.tail)
            self.where = where
            self.taken.set()


def arm_crash(name: str, snapshot: Snapshot, skip: int) -> list[int]:
    """Arm failpoint `name` to take the snapshot at its (skip+1)-th hit; returns the hit counter."""
    hits = [0]

    def action() -> None:
        hits[0] += 1
        if hits[0] == skip + 1:
            snapshot.take(f"failpoint {name} (hit {hits[0]})")

    failpoints.arm(name, action)
    return hits


# -- reopening and checking --------------------------------------------------------------------------


def reopen_and_check(fs: CrashFS, history: History, options: dict, context: str) -> wal.Log:
    """Open the log on `fs`, check everything the history requires, append one probe record."""
    try:
        log = wal.open(ROOT, fs=fs, **options)
    except Exception as exc:
        raise AssertionError(f"{context}: open failed after the crash: {exc!r}") from exc
    try:
        records = list(log.read())
        seqs = [r.seq for r in records]
        assert seqs == list(range(1, len(seqs) + 1)), (
            f"{context}: sequences not contiguous from 1: {_gaps(seqs)}; damage: {log.damage}"
        )
        found = {r.seq: r.payload for r in records}
        for seq, payload in sorted(history.known.items()):
            assert seq in found, f"{context}: acknowledged record {seq} lost (log ends at {len(seqs)})"
            assert found[seq] == payload, f"{context}: record {seq} changed: {found[seq][:40]!r}"
        payloads = [r.payload for r in records]
        for payload in payloads:
            check_payload(payload)
        assert len(set(payloads)) == len(payloads), f"{context}: a payload appears under two sequences"
        last = seqs[-1] if seqs else 0
        assert log.durable_seq == last, f"{context}: durable_seq {log.durable_seq} but last read {last}"
        position = log.cursors().get(CURSOR, 0)
        assert position >= history.cursor, f"{context}: cursor went back from {history.cursor} to {position}"
        assert position <= last, f"{context}: cursor at {position} is past the last record {last}"
        history.known.update(found)
        history.cursor = position
        probe = make_payload(f"probe-{context}", 7)
        seq = log.append(probe)
        assert seq == last + 1, f"{context}: append after reopen got {seq}, expected {last + 1}"
        history.known[seq] = probe
    except BaseException:
        close_quietly(log)
        raise
    return log


def _gaps(seqs: list[int]) -> str:
    problems = [f"{a}->{b}" for a, b in zip([0, *seqs], seqs, strict=False) if b != a + 1]
    return ", ".join(problems[:10])


def close_quietly(log: wal.Log) -> None:
    try:
        log.close()
    except (wal.WalError, OSError):
        pass


# -- one round: reopen, append until the power goes ------------------------------------------------


@dataclass
class Plan:
    """How a round ends: a crasher thread after `crash_at` acknowledgements, or a failpoint."""

    budget: int  # appends before the round stops on its own (then the main thread crashes it)
    crash_at: int | None = None
    failpoint: str | None = None
    skip: int = 0
    threads: int = 2
    maintenance: bool = False  # commit the cursor and archive while appending
    tail: TailMode = "random"
    open_failpoint: str | None = None  # armed while reopening instead (recover.before_truncate)


def run_round(fs: CrashFS, history: History, options: dict, plan: Plan, rng: random.Random, context: str):
    """Reopen and check, then append until the crash; return (crashed fs, snapshot, failpoint hits)."""
    acks = Acks(crash_at=plan.crash_at or 0)
    snapshot = Snapshot(fs, random.Random(rng.random()), acks, plan.tail)
    hits = [0]
    known_before = dict(history.known)
    if plan.open_failpoint:
        hits = arm_crash(plan.open_failpoint, snapshot, 0)
    try:
        log = reopen_and_check(fs, history, options, context)
    finally:
        failpoints.disarm()
    if snapshot.crashed is not None:
        # The crash came inside the reopen, before the probe append: require what was known then.
        history.known = known_before
        close_quietly(log)
        return snapshot, hits[0]
    if plan.failpoint:
        hits = arm_crash(plan.failpoint, snapshot, plan.skip)
    stop = threading.Event()
    errors: list[BaseException] = []
    workers = [
        threading.Thread(target=_appender, args=(log, acks, stop, snapshot, plan, rng.random(), t, context))
        for t in range(plan.threads)
    ]
    if plan.maintenance:
        workers.append(threading.Thread(target=_maintain, args=(log, acks, stop, snapshot, rng.random())))
    if plan.crash_at is not None:
        workers.append(threading.Thread(target=_crasher, args=(acks, stop, snapshot, rng.random())))
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        appenders = workers[: plan.threads]
        while not stop.wait(0.002) and not snapshot.taken.is_set() and time.monotonic() < deadline:
            if not any(a.is_alive() for a in appenders):
                break
        snapshot.take("end of the round")  # nothing fired: crash now, appends still in flight
        stop.set()
        for worker in workers:
            worker.join(JOIN_TIMEOUT_S)
            if worker.is_alive():
                errors.append(AssertionError(f"{context}: a {worker.name} did not stop (a hang?)"))
    finally:
        stop.set()
        failpoints.disarm()
        close_quietly(log)
    if errors:
        raise errors[0]
    return snapshot, hits[0]


def _appender(log, acks, stop, snapshot, plan, seed, thread, context) -> None:
    rng = random.Random(seed)
    counter = 0
    while not stop.is_set() and not snapshot.taken.is_set():
        count = rng.choice([1, 1, 1, 2, 5]) if rng.random() < 0.3 else 1
        payloads = []
        for _ in range(count):
            counter += 1
            size = rng.choice([0, 1, 10, 60, 200, rng.randint(0, 900)])
            payloads.append(make_payload(f"{context}/t{thread}/{counter}", size))
        try:
            seqs = log.append_batch(payloads) if count > 1 else [log.append(payloads[0])]
        except wal.WalError:
            return
        with acks.lock:
            acks.records.update(zip(seqs, payloads, strict=True))
            done = len(acks.records)
        if acks.crash_at and done >= acks.crash_at:
            acks.reached.set()
        if done >= plan.budget:
            stop.set()


def _maintain(log, acks, stop, snapshot, seed) -> None:
    """Commit the cursor to an acknowledged record and archive what it passed, now and then."""
    rng = random.Random(seed)
    cursor = log.cursor(CURSOR)
    while not stop.is_set() and not snapshot.taken.is_set():
        time.sleep(rng.uniform(0, 0.004))
        with acks.lock:
            done = sorted(acks.records)
        try:
            if done and rng.random() < 0.7:
                target = max(cursor.position, rng.choice(done[len(done) // 2 :]))
                cursor.commit(target)
                with acks.lock:
                    acks.cursor = max(acks.cursor, target)
            log.archive()
        except (wal.WalError, OSError):
            return


def _crasher(acks, stop, snapshot, seed) -> None:
    rng = random.Random(seed)
    acks.reached.wait(JOIN_TIMEOUT_S)
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0, 0.002))  # land anywhere in the writer's write/fsync cycle
    snapshot.take(f"crasher thread after {acks.crash_at} acknowledgements")
    stop.set()


def random_options(rng: random.Random) -> dict:
    return {"segment_bytes": rng.choice([2048, 4096, 8192]), "auto_archive": False}


def run_seed(seed: int, plans: list[Plan], options: dict, label: str) -> list[int]:
    """Run the rounds, checking after each crash; returns how often each round's failpoint fired."""
    rng = random.Random(seed)
    fs = CrashFS()
    history = History()
    hits = []
    for number, plan in enumerate(plans, 1):
        context = f"{label} seed={seed} round={number}"
        snapshot, fired = run_round(fs, history, options, plan, rng, context)
        hits.append(fired)
        assert snapshot.crashed is not None
        for seq, payload in snapshot.required.items():
            history.known.setdefault(seq, payload)
        history.cursor = max(history.cursor, snapshot.cursor)
        fs = snapshot.crashed
    close_quietly(reopen_and_check(fs, history, options, f"{label} seed={seed} final ({snapshot.where})"))
    return hits


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(threading.enumerate())
    yield
    failpoints.disarm()
    deadline = time.monotonic() + 5
    while (leaked := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


# -- random crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(RANDOM_SEEDS), ids=lambda s: f"seed={s}")
def test_power_loss_at_a_random_moment(seed):
    rng = random.Random(seed)
    plans = []
    for _ in range(rng.randint(1, 3)):
        budget = rng.randint(20, 200)
        plan = Plan(
            budget=budget,
            threads=rng.randint(1, 4),
            maintenance=rng.random() < 0.3,
            tail=rng.choice(["random", "random", "torn", "none", "all"]),
        )
        if rng.random() < 0.25:
            plan.failpoint = rng.choice(sorted(failpoints.FAILPOINTS))
            plan.skip = rng.randint(0, 5)
        else:
            plan.crash_at = rng.randint(1, budget)
        plans.append(plan)
    run_seed(seed, plans, random_options(rng), "random")


# -- crashes at each named failpoint -----------------------------------------------------------------


def failpoint_plans(name: str, rng: random.Random) -> list[Plan]:
    """Rounds that crash at `name`, with whatever workload reaches it."""
    if name == "recover.before_truncate":
        # A crash right after a write leaves a torn tail, which the next open cuts off.
        first = Plan(budget=200, failpoint="log.after_write", skip=rng.randint(0, 20), tail="torn")
        return [first, Plan(budget=50, crash_at=10, open_failpoint=name, tail=rng.choice(["random", "torn"]))]
    frequent = name.startswith("log.")
    needs_cursor = name.startswith(("atomic.", "archive."))
    return [
        Plan(
            # Archiving needs the maintenance thread to get turns between appends, which on the
            # in-memory file system finish quickly: give those rounds more records.
            budget=2000 if needs_cursor else 400,
            failpoint=name,
            skip=rng.randint(0, 30 if frequent else 2),
            threads=rng.randint(1, 4),
            maintenance=needs_cursor,
            tail=rng.choice(["random", "torn", "all"]),
        )
        for _ in range(rng.randint(1, 3))
    ]


@pytest.mark.parametrize("seed", range(FAILPOINT_SEEDS), ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("name", sorted(failpoints.FAILPOINTS))
def test_power_loss_at_failpoint(name, seed):
    rng = random.Random(f"{name}/{seed}")
    plans = failpoint_plans(name, rng)
    hits = run_seed(seed, plans, random_options(rng), name)
    assert any(hits), f"failpoint {name} was never reached, so no crash was taken there"


# -- write and fsync errors ----------------------------------------------------------------------------


def read_all(log: wal.Log) -> dict[int, bytes]:
    return {r.seq: r.payload for r in log.read()}


def test_fsync_eio_fails_every_waiter_and_reopen_recovers_what_was_acknowledged():
    fs = CrashFS()
    log = wal.open(ROOT, fs=fs, segment_bytes=4096, auto_archive=False)
    acked = {log.append(make_payload(f"before/{i}", 50)): make_payload(f"before/{i}", 50) for i in range(30)}
    durable_before = log.durable_seq

    # Hold the writer after it wrote one batch, queue more behind it, then fail the fsync.
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        failpoints.disarm("log.after_write")
        entered.set()
        release.wait(JOIN_TIMEOUT_S)

    failpoints.arm("log.after_write", hold)
    outcomes: dict[str, BaseException | int] = {}

    def append(name: str) -> None:
        try:
            outcomes[name] = log.append(make_payload(name, 20))
        except BaseException as exc:
            outcomes[name] = exc

    first = threading.Thread(target=append, args=("in-write",))
    first.start()
    assert entered.wait(JOIN_TIMEOUT_S)
    pipelined = log.append(make_payload("no-wait", 20), wait=False)
    queued = [threading.Thread(target=append, args=(f"queued/{i}",)) for i in range(3)]
    for thread in queued:
        thread.start()
    while log.last_seq < pipelined + 3:
        time.sleep(0.001)
    fs.fail_next("sync", errno.EIO)
    release.set()
    for thread in [first, *queued]:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive(), "an appender hung after the fsync error"

    assert set(outcomes) == {"in-write", "queued/0", "queued/1", "queued/2"}
    for name, outcome in outcomes.items():
        assert isinstance(outcome, wal.WalIOError), f"{name}: {outcome!r}"
        assert not isinstance(outcome, wal.DiskFullError)
        assert outcome.cause is not None and outcome.cause.errno == errno.EIO
    with pytest.raises(wal.WalIOError):
        log.wait_durable(pipelined, timeout=5)
    with pytest.raises(wal.WalIOError):
        log.append(b"after")
    with pytest.raises(wal.WalIOError):
        log.append_batch([b"after", b"batch"])
    assert log.durable_seq == durable_before
    close_quietly(log)

    for label, disk in (("same disk", fs), ("after power loss", fs.crash(random.Random(1)))):
        history = History(known=dict(acked))
        close_quietly(reopen_and_check(disk, history, {"segment_bytes": 4096}, f"EIO, {label}"))


def append_until_full(log: wal.Log, tag: str) -> tuple[dict[int, bytes], BaseException]:
    """Append single records and small batches, in a fixed pattern, until the log refuses one."""
    acked: dict[int, bytes] = {}
    for i in range(10_000):
        payloads = [make_payload(f"{tag}/{i}/{j}", 60 + 37 * (i + j) % 200) for j in range(1 + i % 3)]
        try:
            seqs = log.append_batch(payloads)
        except wal.WalError as exc:
            return acked, exc
        acked.update(zip(seqs, payloads, strict=True))
    raise AssertionError("the disk never filled up")


def check_segments_clean(fs: CrashFS, durable_seq: int, context: str) -> None:
    """Every live segment is whole and ends at its last intact record; they hold 1..durable_seq at least.

    Records after durable_seq may be there: a rotation fsyncs what it seals, before the failure.
    """
    seqs = []
    for segment in [s for s in list_segments(fs, ROOT) if not s.archived]:
        try:
            items = list(iter_segment(segment.path, fs=fs))
        except wal.BadHeader as exc:
            raise AssertionError(f"{context}: the failed write left a broken segment: {exc}") from None
        damage = [i for i in items if isinstance(i, Damage)]
        assert not damage, f"{context}: the failed write left damage in {segment.path}: {damage}"
        seqs += [i.seq for i in items]
    assert seqs == list(range(1, len(seqs) + 1)), f"{context}: segments hold {_gaps(seqs)}"
    assert len(seqs) >= durable_seq, f"{context}: segments end at {len(seqs)}, before {durable_seq}"


@pytest.mark.parametrize("fail_after", range(1, 61))
def test_enospc_on_write_raises_disk_full_and_keeps_the_file_clean(fail_after):
    # The open writes one header; then 2 KiB segments rotate every dozen or so writes, so these
    # counts put the failing write everywhere: mid-segment, at a rotation, into a new segment.
    fs = CrashFS(fail_after_writes=fail_after)
    options = {"segment_bytes": 2048, "auto_archive": False}
    context = f"ENOSPC after {fail_after} writes"
    log = wal.open(ROOT, fs=fs, **options)
    acked, error = append_until_full(log, "full")
    assert isinstance(error, wal.DiskFullError), repr(error)
    assert isinstance(error, wal.WalIOError) and isinstance(error, wal.WalFullError)
    # A failed batch may already be partly durable (a rotation fsyncs what it sealed), never less.
    assert log.durable_seq >= max(acked, default=0)
    with pytest.raises(wal.DiskFullError):
        log.append(b"after")
    close_quietly(log)
    check_segments_clean(fs, log.durable_seq, context)
    fs.clear_faults()
    for label, disk in (("same disk", fs), ("after power loss", fs.crash(random.Random(fail_after)))):
        history = History(known=dict(acked))
        close_quietly(reopen_and_check(disk, history, options, f"{context}, {label}"))


@pytest.mark.parametrize("fault", ["enospc-header-write", "eio-header-fsync"])
def test_error_creating_the_next_segment_keeps_sequences_contiguous(fault):
    fs = CrashFS()
    log = wal.open(ROOT, fs=fs, segment_bytes=2048, auto_archive=False)
    acked = {log.append(make_payload(f"r{i}", 100 - 8)): make_payload(f"r{i}", 100 - 8) for i in range(14)}
    # 14 records of 132 bytes leave room for one more: the batch's first record seals segment 1
    # (fsynced by the rotation), then creating segment 16 fails.
    if fault == "enospc-header-write":
        fs.fail_next("write", errno.ENOSPC, after=1)
    else:
        fs.fail_next("sync", errno.EIO, after=1)
    with pytest.raises(wal.WalIOError):
        log.append_batch([make_payload("a", 100 - 8), make_payload("b", 100 - 8)])
    close_quietly(log)
    history = History(known=acked)
    close_quietly(reopen_and_check(fs, history, {"segment_bytes": 2048}, f"{fault}, same disk"))


def test_disk_full_fails_every_waiting_appender():
    fs = CrashFS(capacity_bytes=64 * 1024)
    options = {"segment_bytes": 1 << 20, "auto_archive": False, "min_free_bytes": 0}
    log = wal.open(ROOT, fs=fs, **options)
    results: list[tuple[dict[int, bytes], BaseException]] = []

    def appender(thread: int) -> None:
        results.append(append_until_full(log, f"t{thread}"))

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive(), "an appender hung after ENOSPC"
    assert len(results) == 4
    acked: dict[int, bytes] = {}
    for done, error in results:
        assert isinstance(error, wal.DiskFullError), repr(error)
        acked.update(done)
    assert log.durable_seq == max(acked)
    close_quietly(log)
    check_segments_clean(fs, log.durable_seq, "disk full")
    fs.capacity_bytes = None
    for label, disk in (("same disk", fs), ("after power loss", fs.crash(random.Random(0)))):
        history = History(known=dict(acked))
        close_quietly(reopen_and_check(disk, history, options, f"disk full, {label}"))
