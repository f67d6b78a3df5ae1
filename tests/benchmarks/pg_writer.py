"""The writers of the PostgreSQL benchmark's many-small-transactions workload, in processes of their own.

    python -m tests.benchmarks.pg_writer DSN CLIENTS PER_CLIENT OUT_DIR

starts CLIENTS client processes (this module again, with --client) and relays to them: it prints
"ready" once every client is connected, and lets them go when a line arrives on stdin. Client i
inserts PER_CLIENT rows (ids i * PER_CLIENT + 1 on), each in its own transaction, as fast as the
server takes them, and writes the CLOCK_MONOTONIC time at which each COMMIT returned to
OUT_DIR/writer-i.json ({"started": t, "commits": [t, ...]}). That clock is shared by every process
on the machine, so the benchmark compares these times with the moments the changes were captured.

The benchmark starts this launcher in a session of its own, and the clients inherit it: where the
kernel groups CPU time by session (autogroup), the writers then share one group's time instead of
taking it from the process that captures their changes. Only psycopg is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg

TABLE = "bench_rows"  # created by pg_consumers (TABLE_DDL)
# Its columns: id, name, amount, created_at (the server's now()), active, attributes.
INSERT_ROW = f"INSERT INTO {TABLE} VALUES (%s, %s, %s, now(), %s, %s)"


def row(row_id: int) -> tuple[int, str, str, bool, str]:
    """The values of row `row_id`, like those the single large transaction inserts."""
    return (
        row_id,
        f"customer {row_id}",
        f"{row_id * 1.25:.2f}",
        row_id % 2 == 0,
        json.dumps({"id": row_id, "tags": ["a", "b"]}),
    )


def result_path(out_dir: str, client: int) -> str:
    return os.path.join(out_dir, f"writer-{client}.json")


def launch(dsn: str, clients: int, per_client: int, out_dir: str) -> int:
    command = [sys.executable, "-m", "tests.benchmarks.pg_writer", "--client", dsn, str(per_client), out_dir]
    children = [
        subprocess.Popen([*command, str(client)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for client in range(clients)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                return 1
        print("ready", flush=True)
        sys.stdin.readline()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return max(child.wait() for child in children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()


def write_rows(dsn: str, per_client: int, out_dir: str, client: int) -> int:
    first_id = 1 + client * per_client
    rows = [row(first_id + index) for index in range(per_client)]
    commits: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        print("ready", flush=True)
        sys.stdin.readline()
        clock, execute = time.monotonic, conn.execute
        started = clock()
        for values in rows:
            execute(INSERT_ROW, values, prepare=True)  # autocommit: returns once COMMIT did
            commits.append(clock())
    with open(result_path(out_dir, client), "w") as out:
        json.dump({"started": started, "commits": commits}, out)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "--client":
        dsn, per_client, out_dir, client = argv[1], int(argv[2]), argv[3], int(argv[4])
        return write_rows(dsn, per_client, out_dir, client)
    dsn, clients, per_client, out_dir = argv[0], int(argv[1]), int(argv[2]), argv[3]
    return launch(dsn, clients, per_client, out_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
