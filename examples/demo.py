"""`make demo`: wallaby-agent end to end on this machine, in about a minute.

It starts a throwaway PostgreSQL with logical replication (from the system's binaries, through
the test suite's `tests/pg.py`), creates a demo table and a write workload, and runs
`wallaby-agent run` into a local file destination and a local HTTP receiver. Then it cuts the
receiver off for a few seconds, so the backlog grows in the agent's log and drains once the
receiver is back. At the end it prints a summary (changes committed, captured, delivered, lost)
and stops everything. Nothing is left behind but what `--keep` asks for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import wal  # noqa: E402
from agent.change import decode_change, is_change_payload  # noqa: E402
from tests.agent_process import postgres_source, write_config  # noqa: E402
from tests.fault_receiver import FaultReceiver  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402

WORKLOAD_S = 12.0
OUTAGE_AT_S = 3.0
OUTAGE_S = 5.0


class Workload:
    """Inserts and updates on public.orders; counts every committed change."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.committed = 0
        self.stop = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                order = 0
                while not self.stop.is_set():
                    order += 1
                    conn.execute(
                        "INSERT INTO orders (id, customer, amount) VALUES (%s, %s, %s)",
                        (order, f"customer {order % 17}", f"{order % 500}.99"),
                    )
                    self.committed += 1
                    if order % 3 == 0:
                        conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order - 1,))
                        self.committed += 1
                    time.sleep(0.004)
        except Exception as exc:  # shown in the summary
            self.error = str(exc)


def captured(data_dir: Path) -> int:
    count = 0
    for record in wal.read_log(str(data_dir)):
        if is_change_payload(record.payload) and decode_change(record.payload).table == "public.orders":
            count += 1
    return count


def file_records(directory: Path) -> int:
    count = 0
    if directory.exists():
        for name in os.listdir(directory):
            if name.endswith(".jsonl") and not name.startswith("."):
                count += sum(1 for line in (directory / name).read_bytes().splitlines() if line.strip())
    return count


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the working directory (data, files, logs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wallaby-demo-"))
    data_dir, out_dir, agent_log = workdir / "data", workdir / "files", workdir / "agent.log"
    server = PostgresServer()
    agent: subprocess.Popen[bytes] | None = None
    try:
        say("starting a throwaway PostgreSQL 15 with wal_level = logical ...")
        server.start()
        dsn = server.create_database("demo")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2),"
                " status text DEFAULT 'new')"
            )
        with FaultReceiver() as receiver:
            config = write_config(
                workdir / "agent.toml",
                data_dir,
                postgres_source(
                    dsn, publication_tables=["public.orders"], slot="wallaby_demo", publication="wallaby_demo"
                ),
                destinations=[
                    {
                        "name": "files",
                        "type": "file",
                        "path": str(out_dir),
                        "format": "jsonl",
                        "rotate_seconds": 2.0,
                    },
                    {
                        "name": "receiver",
                        "type": "http",
                        "url": receiver.url,
                        "timeout": 1.0,
                        "retry": {"initial_delay": 0.2, "max_delay": 1.0},
                    },
                ],
            )
            say(f"running the agent: wallaby-agent run --config {config}")
            with open(agent_log, "wb") as log_file:
                agent = subprocess.Popen(
                    [str(Path(sys.executable).with_name("wallaby-agent")), "run", "--config", str(config)],
                    cwd=REPO,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            _wait_for_slot(dsn)
            workload = Workload(dsn)
            workload.thread.start()
            say(
                f"writing orders for {WORKLOAD_S:.0f} s; the receiver goes away at {OUTAGE_AT_S:.0f} s for {OUTAGE_S:.0f} s"
            )
            started = time.monotonic()
            comeback = None
            while time.monotonic() - started < WORKLOAD_S:
                elapsed = time.monotonic() - started
                if comeback is None and elapsed >= OUTAGE_AT_S:
                    comeback = receiver.outage(OUTAGE_S)
                    say("receiver cut off: the agent keeps capturing into its log")
                in_log = captured(data_dir)
                sent = len(receiver.unique())
                state = "DOWN" if comeback is not None and comeback.is_alive() else "up"
                say(
                    f"t={elapsed:4.1f}s committed {workload.committed:5d}  in log {in_log:5d}  "
                    f"at receiver ({state:4}) {sent:5d}  backlog {in_log - sent:5d}"
                )
                time.sleep(1.0)
            workload.stop.set()
            workload.thread.join(10)
            say("workload stopped; waiting for both destinations to drain ...")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (
                    len(receiver.unique()) >= workload.committed
                    and file_records(out_dir) >= workload.committed
                ):
                    break
                time.sleep(0.5)
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(30)
            in_log = captured(data_dir)
            unique = receiver.unique()
            lost = workload.committed - len(unique)
            print()
            print("  summary")
            print(f"    changes committed in PostgreSQL   {workload.committed:6d}")
            print(f"    changes captured in the log       {in_log:6d}")
            print(
                f"    delivered to the HTTP receiver    {len(unique):6d}  ({len(receiver.records) - len(unique)} repeats dropped by idempotency key)"
            )
            print(f"    delivered to files ({out_dir.name}/)       {file_records(out_dir):6d}")
            print(f"    lost                              {max(lost, 0):6d}")
            print(f"    agent exit code                   {code:6d}")
            print()
            ok = code == 0 and lost == 0 and in_log == workload.committed and workload.error is None
            if workload.error:
                say(f"the workload failed: {workload.error}")
            say("none lost." if ok else f"something is off: see {agent_log}")
            first = orjson.dumps(unique[0], option=orjson.OPT_INDENT_2).decode() if unique else "{}"
            say(f"a delivered record looks like this:\n{first}")
            return 0 if ok else 1
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        server.cleanup()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_slot(dsn: str) -> None:
    """Until the agent's slot exists: every later commit is captured."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'wallaby_demo' AND active"
            ).fetchone():
                return
        time.sleep(0.2)
    raise SystemExit("demo: the agent did not start streaming within 60 s")


if __name__ == "__main__":
    sys.exit(main())
