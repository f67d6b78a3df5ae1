"""The whole-system fault suite: the real agent, a real PostgreSQL and a faulty HTTP receiver.

Each scenario runs a write workload against PostgreSQL while faults are injected, then checks:
every change committed in PostgreSQL reached every destination (the HTTP receiver by
idempotency key, the PostgreSQL copy by `certify`), none was applied twice, and the agent's
own report (`wallaby-agent status --json`) agrees: every destination's cursor at the end of the
log, nothing pending, no dead letters.

    python -m tests.chaos            # `make chaos`: the long matrix, results into docs/reliability.md
    tests/test_chaos.py              # the short version, in `make test`

Scenarios: SIGKILL of the agent at random moments; receiver outage and flapping; PostgreSQL
restarted under the agent; the data directory filling up (a small tmpfs: needs root to mount);
a sealed segment corrupted on disk.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.certify import certify_table
from agent.delivery import idempotency_key
from tests.agent_harness import execute, logged_changes, wait_for
from tests.agent_process import AgentProcess, postgres_source, run_cli, wait_until_caught_up, write_config
from tests.fault_receiver import FaultReceiver
from tests.pg import PostgresServer
from tests.test_delivery_e2e import SCHEMA, ItemWorkload

DRAIN_TIMEOUT_S = 180.0
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"


@dataclass
class Result:
    scenario: str
    cycles: int = 0
    faults: int = 0
    records: int = 0
    lost: int = 0
    duplicated: int = 0  # deliveries of a key already delivered (at-least-once repeats, dropped by key)
    notes: list[str] = field(default_factory=list)


@dataclass
class Rig:
    """One scenario's PostgreSQL, receiver, target database and agent configuration."""

    server: PostgresServer
    receiver: FaultReceiver
    source_dsn: str
    target_dsn: str
    data_dir: Path
    config: Path
    workload: ItemWorkload
    slot: str
    agent: AgentProcess | None = None

    def start_agent(self) -> AgentProcess:
        self.agent = AgentProcess(self.config)
        return self.agent


def make_rig(
    server: PostgresServer, workdir: Path, name: str, data_dir: Path | None = None, **wal_options: object
) -> Rig:
    source_dsn = server.create_database(f"chaos_{name}")
    execute(source_dsn, *SCHEMA)
    target_dsn = server.create_database(f"chaos_{name}_copy")
    receiver = FaultReceiver()
    data_dir = data_dir or workdir / f"{name}-data"
    retry = {"initial_delay": 0.05, "max_delay": 1.0}
    config = write_config(
        workdir / f"{name}.toml",
        data_dir,
        postgres_source(source_dsn, publication_tables=["public.items"], slot=f"chaos_{name}"),
        wal={"min_free_bytes": 0, "segment_bytes": "256KiB", **wal_options},
        destinations=[
            {"name": "hook", "type": "http", "url": receiver.url, "timeout": 1.0, "retry": retry},
            {"name": "copy", "type": "postgres", "dsn": target_dsn, "retry": retry},
        ],
    )
    return Rig(
        server,
        receiver,
        source_dsn,
        target_dsn,
        data_dir,
        config,
        ItemWorkload(source_dsn, len(name)),
        f"chaos_{name}",
    )


def verify(rig: Rig, result: Result, *, damaged_ok: int = 0) -> Result:
    """Drain, stop the agent, and check delivery and the agent's own report."""
    wait_until_caught_up(rig.source_dsn, rig.slot)
    changes = [(seq, c) for seq, c in logged_changes(str(rig.data_dir)) if c.table == "public.items"]
    keys = {idempotency_key(c, seq) for seq, c in changes}
    wait_for(
        lambda: {r["idempotency_key"] for r in rig.receiver.records} >= keys, DRAIN_TIMEOUT_S, "the receiver"
    )
    wait_for(
        lambda: certify_table(rig.source_dsn, rig.target_dsn, "public.items").equal,
        DRAIN_TIMEOUT_S,
        "the copy",
    )
    assert rig.agent is not None
    last = max(seq for seq, _ in changes) if changes else 0
    wait_for(lambda: _cursors(rig) >= last, DRAIN_TIMEOUT_S, "every cursor at the end")
    code, _ = rig.agent.stop()
    assert code == 0, rig.agent.output()
    report = json.loads(_checked(run_cli("status", "--config", str(rig.config), "--json")).stdout)
    for destination in report["destinations"]:
        assert destination["pending"] == 0, report
        assert not destination.get("dead_letters"), report
    unique = rig.receiver.unique()
    received = {r["idempotency_key"] for r in unique}
    result.records = len(changes)
    result.lost = len(keys - received)
    result.duplicated = len(rig.receiver.records) - len(unique)
    # A record damaged on disk after its delivery is no longer in the log, but is at the receiver.
    extra = received - keys
    assert result.lost == 0, f"{result.lost} changes in the log never reached the receiver"
    assert len(extra) <= damaged_ok, f"{len(extra)} delivered records are not in the log"
    return result


def _cursors(rig: Rig) -> int:
    report = json.loads(_checked(run_cli("status", "--config", str(rig.config), "--json")).stdout)
    return min(d["cursor"] for d in report["destinations"])


def _checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


# -- scenarios ------------------------------------------------------------------------------------


def sigkill_and_flapping(rig: Rig, cycles: int, rng: random.Random) -> Result:
    result = Result("SIGKILL at random moments, receiver failing and flapping")
    rig.start_agent().wait_for_event("source.streaming")
    rig.workload.start()
    for cycle in range(cycles):
        if cycle % 2:
            rig.receiver.fail(rng.randint(1, 6), status=rng.choice([500, 502, 503, 429]), retry_after=0.1)
            rig.receiver.drop(rng.randint(0, 2))
            result.faults += 1
        if cycle % 3 == 2:
            rig.receiver.outage(rng.uniform(0.5, 2.0))
            result.faults += 1
        time.sleep(rng.uniform(0.3, 1.5))
        assert rig.agent is not None
        assert rig.agent.kill() is None, rig.agent.output()
        result.faults += 1
        result.cycles += 1
        rig.start_agent()
    rig.workload.stop()
    return verify(rig, result)


def postgres_restart(rig: Rig, cycles: int, rng: random.Random) -> Result:
    result = Result("PostgreSQL restarted (fast and immediate) under the agent")
    rig.start_agent().wait_for_event("source.streaming")
    rig.workload.start()
    for cycle in range(cycles):
        time.sleep(rng.uniform(0.5, 1.5))
        rig.workload.pause()
        if cycle % 2:
            rig.server.kill()  # an immediate stop: like a crash
            rig.server.start()
        else:
            rig.server.restart()
        rig.workload.resume()
        result.faults += 1
        result.cycles += 1
    rig.workload.stop()
    return verify(rig, result)


def disk_full(rig: Rig, workdir: Path, mount: Path) -> Result:
    result = Result("data directory full (a tmpfs), then grown")
    rig.start_agent().wait_for_event("source.streaming")
    rig.workload.start()
    assert rig.agent is not None
    wait_for(
        lambda: rig.agent is not None and rig.agent.proc.poll() is not None, 120, "the log to fill the disk"
    )
    result.faults += 1
    rig.workload.stop()
    failure = rig.agent.output()
    assert "No space left on device" in failure or "ENOSPC" in failure or "space" in failure, failure
    subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)
    rig.start_agent().wait_for_event("source.streaming")
    result.cycles = 1
    result.notes.append("the agent stopped with one line naming the disk; after the disk grew it went on")
    return verify(rig, result)


def corrupted_sealed_segment(rig: Rig) -> Result:
    result = Result("a sealed, delivered segment corrupted on disk")
    rig.start_agent().wait_for_event("source.streaming")
    rig.workload.start()
    time.sleep(2.0)
    rig.workload.stop()
    wait_until_caught_up(rig.source_dsn, rig.slot)
    keys = {idempotency_key(c, seq) for seq, c in logged_changes(str(rig.data_dir))}
    wait_for(
        lambda: {r["idempotency_key"] for r in rig.receiver.records} >= keys, DRAIN_TIMEOUT_S, "delivery"
    )
    assert rig.agent is not None
    code, _ = rig.agent.stop()
    assert code == 0
    segments = sorted((rig.data_dir / "wal").glob("*.wal"))
    assert len(segments) >= 2, "the workload did not fill a segment"
    sealed = segments[0]
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sealed.write_bytes(bytes(data))
    result.faults = 1
    verify_cli = run_cli("wal", "verify", "--data-dir", str(rig.data_dir))
    assert verify_cli.returncode != 0 and "CRC" in (verify_cli.stdout + verify_cli.stderr), verify_cli.stdout
    result.notes.append(
        "`wal verify` names the damaged record (already delivered); the agent quarantines it and goes on"
    )
    rig.start_agent().wait_for_event("source.streaming")
    rig.workload = ItemWorkload(rig.source_dsn, 99, start_id=rig.workload.next_id)
    rig.workload.start()
    time.sleep(1.0)
    rig.workload.stop()
    result.cycles = 1
    return verify(rig, result, damaged_ok=5)


# -- running --------------------------------------------------------------------------------------


def run_scenarios(
    workdir: Path, *, short: bool, only: Callable[[str], bool] = lambda _: True
) -> list[Result]:
    rng = random.Random(2026)
    results = []
    server = PostgresServer()
    server.start()
    try:
        plans: list[tuple[str, Callable[[], Result]]] = [
            (
                "sigkill",
                lambda: sigkill_and_flapping(make_rig(server, workdir, "sigkill"), 4 if short else 30, rng),
            ),
            (
                "restart",
                lambda: postgres_restart(make_rig(server, workdir, "restart"), 2 if short else 8, rng),
            ),
            (
                "corrupt",
                lambda: corrupted_sealed_segment(
                    make_rig(server, workdir, "corrupt", auto_archive=False, segment_bytes="32KiB")
                ),
            ),
            (
                "disk",
                lambda: _with_tmpfs(
                    workdir,
                    lambda mount: disk_full(
                        make_rig(server, workdir, "disk", mount / "data", auto_archive=False), workdir, mount
                    ),
                ),
            ),
        ]
        for name, plan in plans:
            if only(name):
                results.append(plan())
    finally:
        server.cleanup()
    return results


def _with_tmpfs(workdir: Path, body: Callable[[Path], Result]) -> Result:
    mount = workdir / "tmpfs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert made.returncode == 0, f"the disk-full scenario needs root to mount a tmpfs: {made.stderr.strip()}"
    try:
        return body(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def markdown(results: list[Result], short: bool) -> str:
    lines = [
        "# Reliability",
        "",
        "The whole-system fault suite (`make chaos`, `tests/chaos.py`) runs the real agent, a real",
        "PostgreSQL 15 and a faulty HTTP receiver. A scenario writes inserts, updates, key changes",
        "and deletes into `public.items` while faults are injected, then checks that every change",
        "committed in PostgreSQL reached the HTTP receiver (by idempotency key) and the PostgreSQL copy",
        "(by `certify`), and that `wallaby-agent status --json` reports nothing pending.",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')}, {'short' if short else 'full'} matrix.",
        "",
        "| Scenario | Cycles | Faults injected | Records checked | Lost | Repeats dropped by key |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.cycles} | {r.faults} | {r.records:,} | {r.lost} | {r.duplicated} |"
        )
    lines.append("")
    for r in results:
        for note in r.notes:
            lines.append(f"- {r.scenario}: {note}")
    lines += [
        "",
        "Repeats are at-least-once deliveries of a batch whose confirmation a SIGKILL or a fault cut",
        "off; the receiver drops them by `idempotency_key`, and the PostgreSQL copy never sees them",
        "(its position is stored with the data).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    import tempfile

    short = "--short" in sys.argv
    pattern = next((a for a in sys.argv[1:] if not a.startswith("--")), None)
    with tempfile.TemporaryDirectory(prefix="wallaby-chaos-") as tmp:
        results = run_scenarios(
            Path(tmp), short=short, only=lambda n: pattern is None or re.search(pattern, n) is not None
        )
    text = markdown(results, short)
    print(text)
    if pattern is None:
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
