"""A real PostgreSQL 15 that the test suite starts for itself, and the fixtures that share it.

`PostgresServer` runs initdb and pg_ctl as the `postgres` user (the server refuses to run as root) in
a private directory under /tmp that also holds the log and the Unix socket. Settings favour speed
(no fsync) and logical decoding (wal_level=logical). Anything that goes wrong raises RuntimeError
with the tail of the server log: a test that needs PostgreSQL fails with a reason, it never skips.

Fixtures: `pg_server` (one server for the session), `pg_dsn` (a fresh database per test, dropped
afterwards together with its replication slots) and `pg_private_server` (a server of the test's own,
for tests that crash or reconfigure it).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.sql import SQL, Composable, Identifier

PG_BINDIR = "/usr/lib/postgresql/15/bin"
SERVER_USER = "postgres"
PG_CTL_TIMEOUT_S = 30
PROCESS_EXIT_TIMEOUT_S = 10.0
SLOT_RELEASE_TIMEOUT_S = 10.0

# fsync, synchronous_commit and full_page_writes are off because a test's data need not survive a
# power cut, and they cost most of the time of small transactions.
BASE_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "100",
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_sender_timeout": "60s",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat ('Z' for a zombie), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name is in parentheses and may hold spaces; the state follows the last ')'.
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are neither gone nor zombies."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the command: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


_pristine_clusters: dict[str, str] = {}


def _pristine_cluster(bindir: str, run_as_server: Callable[..., None]) -> str:
    """A data directory fresh from initdb, made once per process and copied by every server."""
    if bindir not in _pristine_clusters:
        base = _private_directory("wallaby-pg-initdb-")
        atexit.register(shutil.rmtree, base, True)
        data_dir = os.path.join(base, "data")
        _initdb(bindir, data_dir, run_as_server)
        _pristine_clusters[bindir] = data_dir
    return _pristine_clusters[bindir]


def _initdb(bindir: str, data_dir: str, run_as_server: Callable[..., None]) -> None:
    # --no-sync: nothing here must survive a power cut, and syncing is most of initdb's time.
    # 1 MB WAL segments (not 16) make a cluster quicker to create and copy, and let a test that
    # needs WAL removed (an invalidated slot) get there by writing little.
    run_as_server(
        os.path.join(bindir, "initdb"),
        "-D", data_dir, "-U", SERVER_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        "--wal-segsize=1",
    )  # fmt: skip


def _private_directory(prefix: str) -> str:
    """A new directory under /tmp that only the server's user can enter."""
    base = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            shutil.rmtree(base)
            raise RuntimeError(
                f"running as root, but there is no {SERVER_USER!r} user to run PostgreSQL as"
            ) from None
        os.chown(base, owner.pw_uid, owner.pw_gid)
    os.chmod(base, 0o700)
    return base


class PostgresServer:
    """One PostgreSQL cluster in a private temporary directory, listening on 127.0.0.1."""

    host = "127.0.0.1"

    def __init__(
        self, settings: dict[str, str] | None = None, *, own_initdb: bool = False, bindir: str = PG_BINDIR
    ) -> None:
        """`settings` add to or override BASE_SETTINGS.

        Servers normally start from a copy of one initdb run, so they share a system identifier;
        `own_initdb=True` pays for a separate initdb and gets an identifier of its own.
        """
        self.bindir = bindir
        self.own_initdb = own_initdb
        self.settings = {**BASE_SETTINGS, **(settings or {})}
        self.base_dir: str | None = None
        self.port: int | None = None

    # Paths, valid once start() has created the directory.
    @property
    def data_dir(self) -> str:
        return os.path.join(self._base(), "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self._base(), "server.log")

    def _base(self) -> str:
        if self.base_dir is None:
            raise RuntimeError("PostgresServer has not been started")
        return self.base_dir

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI for `dbname` as the superuser `postgres` over TCP."""
        if self.port is None:
            raise RuntimeError("PostgresServer has not been started")
        return f"postgresql://{SERVER_USER}@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections.

        A server that is running already is left alone.
        """
        if self.base_dir is None:
            self._initialise()
        elif self.is_running():
            return
        self._pg_ctl("start", "-l", self.log_path, "-t", str(PG_CTL_TIMEOUT_S))

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (`smart`, `fast` or `immediate`); a stopped server is left alone.

        A fast shutdown waits for each logical walsender until its client confirms everything it was
        sent: a test that streams while it stops the server must keep reading and answering
        keepalives, or the stop takes wal_sender_timeout (60 s) and then fails.
        """
        if self.is_running():
            self._pg_ctl("stop", "-m", mode, "-t", str(PG_CTL_TIMEOUT_S))

    def restart(self) -> None:
        """A clean shutdown followed by a start on the same directory and port."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, as a crash would, and wait for them to go.

        The whole process group dies at once (pg_ctl makes the postmaster a group leader), so no
        backend outlives the postmaster and the next start() runs crash recovery.
        """
        pid = self.postmaster_pid()
        if pid is None:
            return
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT_S
        while _live_group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _live_group_members(pid):
            raise RuntimeError(f"PostgreSQL processes of group {pid} survived SIGKILL")
        # Nobody may reap the dead postmaster (pid 1 of a container often does not), and a zombie
        # still answers kill(pid, 0), which makes the next postmaster think its lock files are live.
        if _process_state(pid) == "Z":
            for lock in (
                os.path.join(self.data_dir, "postmaster.pid"),
                os.path.join(self._base(), f".s.PGSQL.{self.port}.lock"),
            ):
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, or None when the server is not running."""
        if self.base_dir is None:
            return None
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as pid_file:
                pid = int(pid_file.readline())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _process_state(pid) not in (None, "Z") else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def execute(
        self, sql: str | Composable, params: tuple | None = None, *, dbname: str = "postgres"
    ) -> list[tuple]:
        """Run one statement in autocommit mode and return its rows (empty for statements without any)."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str) -> str:
        """Create database `name` and return its DSN."""
        self.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop `name` together with its replication slots, ending whatever still uses them."""
        self.drop_slots(name)
        self.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))

    def drop_slots(self, dbname: str) -> None:
        """Drop every replication slot of `dbname`, terminating the walsenders that hold them."""
        deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT_S
        while True:
            self.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (dbname,),
            )
            # A terminated walsender releases its slot (and drops its temporary ones) only as it
            # exits, so a drop can lose that race: retry until no slot of the database is left.
            try:
                self.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE database = %s AND active_pid IS NULL AND NOT temporary",
                    (dbname,),
                )
            except psycopg.errors.ObjectInUse:
                pass
            left = self.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,))
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slots {left} of database {dbname!r} could not be dropped")
            time.sleep(0.02)

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of the server log, for error messages."""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-n:])
        except (FileNotFoundError, RuntimeError):
            return "(no server log)"

    def cleanup(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if self.base_dir is None:
            return
        try:
            self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def _initialise(self) -> None:
        for program in ("initdb", "pg_ctl", "postgres"):
            if not os.access(os.path.join(self.bindir, program), os.X_OK):
                raise RuntimeError(f"PostgreSQL server binary {program!r} not found in {self.bindir}")
        base = _private_directory("wallaby-pg-")
        self.base_dir = base
        self.port = free_port()
        if self.own_initdb:
            _initdb(self.bindir, self.data_dir, self._run_as_server)
        else:
            # initdb takes a second or two; a copy of a cluster it made takes a tenth of that.
            self._run_as_server(
                "cp", "-a", _pristine_cluster(self.bindir, self._run_as_server), self.data_dir
            )
        settings = {**self.settings, "port": str(self.port), "unix_socket_directories": f"'{base}'"}
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write("\n# tests/pg.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run_as_server(os.path.join(self.bindir, "pg_ctl"), "-D", self.data_dir, "-w", *args)

    def _run_as_server(self, *command: str) -> None:
        if os.geteuid() == 0:
            command = ("runuser", "-u", SERVER_USER, "--", *command)
        # The postmaster gets the log file, not our pipes (pg_ctl redirects it), so run() returns.
        result = subprocess.run(command, cwd=self.base_dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed with exit code {result.returncode}\n"
                f"{result.stdout}{result.stderr}\n--- server log tail ---\n{self.log_tail()}"
            )


_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; a test that stops it must start it again."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh database, dropped after the test together with its replication slots."""
    if not pg_server.is_running():
        pg_server.start()
    name = f"test_{next(_database_numbers)}"
    dsn = pg_server.create_database(name)
    yield dsn
    if not pg_server.is_running():
        pg_server.start()
    pg_server.drop_database(name)


@pytest.fixture
def pg_private_server() -> Iterator[PostgresServer]:
    """A started server of the test's own, for tests that kill, stop or reconfigure it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
