"""The replication connection against a real PostgreSQL, LSN text, and the test server harness itself."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from agent.sources.postgres.errors import (
    ConnectionFailed,
    ReplicationError,
    ReplicationSetupError,
    SlotLost,
    SourceError,
)
from agent.sources.postgres.lsn import format_lsn, parse_lsn
from agent.sources.postgres.pgoutput import Commit, Insert, Relation, decode_message
from agent.sources.postgres.replication import Keepalive, ReplicationConnection, XLogData, quote_identifier
from tests.pg import PostgresServer, free_port

# LSN text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16_B374D848),
        ("0/1", 1),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
        ("a/b", 0xA_0000000B),
    ],
)
def test_parse_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize(
    "text", ["", "16", "16/", "/1", "16/B374D848/1", "G/1", "1/-1", " 1/1", "1/1 ", "123456789/0"]
)
def test_parse_lsn_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0/0"), (0x16_B374D848, "16/B374D848"), (0x1_00000001, "1/1")]
)
def test_format_lsn_writes_like_postgresql(value: int, text: str) -> None:
    assert format_lsn(value) == text
    assert parse_lsn(format_lsn(value)) == value


def test_format_lsn_rejects_out_of_range() -> None:
    for value in (-1, 2**64):
        with pytest.raises(ValueError):
            format_lsn(value)


def test_lsn_text_matches_the_server(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        text, numeric = conn.execute(
            "SELECT pg_current_wal_lsn()::text, pg_current_wal_lsn() - '0/0'"
        ).fetchone()
    assert parse_lsn(text) == int(numeric)
    assert format_lsn(int(numeric)) == text


# Commands


def _prepare(dsn: str, publication: str = "pub") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute(f"CREATE PUBLICATION {quote_identifier(publication)} FOR ALL TABLES")


def _run(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def _read_until(repl: ReplicationConnection, want: type, timeout_s: float = 10.0) -> list[object]:
    """Decoded stream messages up to and including the first of type `want`."""
    seen: list[object] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = repl.read(timeout_s=0.5)
        if isinstance(message, XLogData):
            seen.append(decode_message(message.data))
            if isinstance(seen[-1], want):
                return seen
    raise AssertionError(f"no {want.__name__} within {timeout_s} s; saw {seen}")


def test_identify_system(pg_dsn: str) -> None:
    with ReplicationConnection(pg_dsn) as repl:
        system = repl.identify_system()
        assert repl.server_version >= 150000
    with psycopg.connect(pg_dsn) as conn:
        systemid, current = conn.execute(
            "SELECT system_identifier::text, pg_current_wal_lsn() - '0/0' FROM pg_control_system()"
        ).fetchone()
    assert system["systemid"] == systemid
    assert system["timeline"] == 1
    assert system["dbname"] == pg_dsn.rsplit("/", 1)[1]
    assert 0 < system["xlogpos"] <= int(current)


def test_created_slot_exports_a_snapshot_at_its_consistent_point(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    _run(pg_dsn, "INSERT INTO t VALUES (1, 'before')")
    with ReplicationConnection(pg_dsn) as repl:
        consistent, snapshot = repl.create_slot("exported", export_snapshot=True)
        assert snapshot is not None
        _run(pg_dsn, "INSERT INTO t VALUES (2, 'after')")
        # The snapshot lives only while the slot's connection runs no other command: use it now.
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            assert conn.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,)]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT plugin, confirmed_flush_lsn::text, temporary FROM pg_replication_slots WHERE slot_name = 'exported'"
        ).fetchone()
    assert row == ("pgoutput", format_lsn(consistent), False)
    # The stream then starts exactly after the snapshot: row 2, not row 1.
    with ReplicationConnection(pg_dsn) as repl:
        repl.start("exported", 0, "pub")
        inserts = [m for m in _read_until(repl, Commit) if isinstance(m, Insert)]
    assert [insert.new for insert in inserts] == [("2", "after")]


def test_slot_without_snapshot_and_temporary_slot(pg_dsn: str) -> None:
    with ReplicationConnection(pg_dsn) as repl:
        consistent, snapshot = repl.create_slot("passing", temporary=True)
        assert snapshot is None and consistent > 0
        assert _slots(pg_dsn) == [("passing", True)]
    deadline = time.monotonic() + 5
    while _slots(pg_dsn) and time.monotonic() < deadline:
        time.sleep(0.02)  # the walsender drops its temporary slot as it exits
    assert _slots(pg_dsn) == []


def _slots(dsn: str) -> list[tuple[str, bool]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT slot_name, temporary FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall()


def test_duplicate_slot_is_a_replication_error_with_the_sqlstate(pg_dsn: str) -> None:
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("twice")
        with pytest.raises(ReplicationError, match='replication slot "twice" already exists') as caught:
            repl.create_slot("twice")
    assert caught.value.sqlstate == "42710"


def test_starting_a_missing_slot_is_slot_lost(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl, pytest.raises(SlotLost, match='"missing" does not exist'):
        repl.start("missing", 0, "pub")


def test_commands_are_refused_while_streaming(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("busy")
        repl.start("busy", 0, "pub")
        with pytest.raises(ReplicationError, match="streaming"):
            repl.identify_system()


def test_connection_refused_is_connection_failed() -> None:
    with pytest.raises(ConnectionFailed, match="Connection refused"):
        ReplicationConnection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout_s=2)


def test_errors_form_one_tree() -> None:
    assert issubclass(ConnectionFailed, ReplicationError)
    for error in (ReplicationError, SlotLost, ReplicationSetupError):
        assert issubclass(error, SourceError)


def test_wal_level_below_logical_is_a_setup_error() -> None:
    server = PostgresServer({"wal_level": "replica"})
    try:
        server.start()
        with (
            ReplicationConnection(server.dsn()) as repl,
            pytest.raises(ReplicationSetupError, match="wal_level"),
        ):
            repl.create_slot("never")
    finally:
        server.cleanup()


# The stream


def test_publication_names_are_quoted(pg_dsn: str) -> None:
    odd = 'Pub "odd", name'
    _prepare(pg_dsn, publication=odd)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("quoted")
        _run(pg_dsn, "INSERT INTO t VALUES (1, 'x')")
        repl.start("quoted", 0, odd)
        seen = _read_until(repl, Commit)
    assert isinstance(seen[1], Relation) and seen[2] == Insert(seen[1].oid, ("1", "x"))


def test_start_from_a_later_lsn_skips_earlier_transactions(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("later")
    _run(pg_dsn, "INSERT INTO t VALUES (1, 'first')")
    with ReplicationConnection(pg_dsn) as repl:
        repl.start("later", 0, "pub")
        first_commit = _read_until(repl, Commit)[-1]
    _run(pg_dsn, "INSERT INTO t VALUES (2, 'second')")
    with ReplicationConnection(pg_dsn) as repl:
        repl.start("later", first_commit.end_lsn, "pub")
        inserts = [m.new for m in _read_until(repl, Commit) if isinstance(m, Insert)]
    assert inserts == [("2", "second")]


def test_read_times_out_with_none_and_without_spinning(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("quiet")
        repl.start("quiet", 0, "pub")
        while repl.read(timeout_s=0.3) is not None:
            pass  # the keepalives a new stream starts with
        assert repl.read(timeout_s=0) is None
        # WAL written by other databases on the shared server makes the walsender send an
        # occasional keepalive; a quiet window is one in which nothing at all arrived.
        for _attempt in range(20):
            wall, cpu = time.monotonic(), time.process_time()
            message = repl.read(timeout_s=0.5)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            if message is None:
                break
            assert isinstance(message, Keepalive), message
        else:
            raise AssertionError("no quiet half second in 20 tries: something keeps writing")
    assert wall >= 0.45  # it waited out the timeout
    assert cpu < 0.25  # it slept on the socket, it did not poll in a loop (that would burn ~0.5 s)


def test_buffered_messages_are_read_without_waiting_on_the_socket(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("burst")
        _run(pg_dsn, "INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 2000) AS i")
        repl.start("burst", 0, "pub")
        time.sleep(0.5)  # let the server send while nobody reads, so whole batches wait in the socket
        polls = _CountingPoll(repl._poll)
        repl._poll = polls
        seen = _read_until(repl, Commit)
    assert sum(isinstance(m, Insert) for m in seen) == 2000
    # One wait per socket read of many messages, not one per message (about 10 in practice).
    assert polls.calls < 100, f"{polls.calls} polls for {len(seen)} messages"


class _CountingPoll:
    """The real poll object, counting how often read() waits on it."""

    def __init__(self, poll: object) -> None:
        self._poll = poll
        self.calls = 0

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        self.calls += 1
        return self._poll.poll(timeout_ms)  # type: ignore[attr-defined]


def test_status_updates_move_the_slots_confirmed_position(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("confirm")
        _run(pg_dsn, "INSERT INTO t VALUES (1, 'x')")
        repl.start("confirm", 0, "pub")
        commit = _read_until(repl, Commit)[-1]
        repl.send_status(commit.end_lsn, commit.end_lsn, commit.end_lsn)
        deadline = time.monotonic() + 5
        confirmed = None
        while time.monotonic() < deadline:
            with psycopg.connect(pg_dsn) as conn:
                (confirmed,) = conn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'confirm'"
                ).fetchone()
            if confirmed == format_lsn(commit.end_lsn):
                break
            repl.read(timeout_s=0.05)
    assert confirmed == format_lsn(commit.end_lsn)


def test_keepalives_ask_for_replies_and_replies_keep_the_stream_alive(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    short = {"wal_sender_timeout": "500ms"}  # the server asks for a reply after half of it
    with ReplicationConnection(pg_dsn, session_options=short) as repl:
        repl.create_slot("alive")
        repl.start("alive", 0, "pub")
        deadline = time.monotonic() + 1.2  # well past the timeout
        requests: list[Keepalive] = []
        while time.monotonic() < deadline:
            message = repl.read(timeout_s=0.1)
            if isinstance(message, Keepalive) and message.reply_requested:
                requests.append(message)
                repl.send_status(message.wal_end, message.wal_end, message.wal_end)
    assert len(requests) >= 2
    # The server's clock arrives in UNIX-epoch microseconds.
    assert requests[-1].send_time_us == pytest.approx(time.time_ns() // 1000, abs=60_000_000)


def test_silence_past_wal_sender_timeout_ends_the_stream(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn, session_options={"wal_sender_timeout": "300ms"}) as repl:
        repl.create_slot("silent")
        repl.start("silent", 0, "pub")
        with pytest.raises(ReplicationError, match="server closed the connection"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                repl.read(timeout_s=0.2)  # never answering


def test_server_error_in_the_stream_carries_its_message(pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("nopub")
        _run(pg_dsn, "INSERT INTO t VALUES (1, 'x')")
        # The publication is looked up only when the first change is decoded.
        repl.start("nopub", 0, "no_such_publication")
        with pytest.raises(
            ReplicationError, match='publication "no_such_publication" does not exist'
        ) as caught:
            _read_until(repl, Commit)
    assert caught.value.sqlstate == "42704"


def test_terminated_walsender_is_a_replication_error(pg_server: PostgresServer, pg_dsn: str) -> None:
    _prepare(pg_dsn)
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("doomed")
        repl.start("doomed", 0, "pub")
        repl.read(timeout_s=1)
        pg_server.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'doomed'"
        )
        with pytest.raises(
            ReplicationError, match="terminating connection due to administrator command"
        ) as caught:
            for _ in range(100):
                repl.read(timeout_s=0.1)
    assert caught.value.sqlstate == "57P01"


def test_session_options_make_text_output_canonical(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # A database whose own defaults would print values differently.
        dbname = pg_dsn.rsplit("/", 1)[1]
        conn.execute(f"ALTER DATABASE {dbname} SET TimeZone = 'America/New_York'")
        conn.execute(f"ALTER DATABASE {dbname} SET DateStyle = 'SQL, DMY'")
        conn.execute(f"ALTER DATABASE {dbname} SET IntervalStyle = 'postgres_verbose'")
        conn.execute("CREATE TABLE v (ts timestamptz, d date, i interval, f float8)")
        conn.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    with ReplicationConnection(pg_dsn) as repl:
        repl.create_slot("canonical")
        _run(pg_dsn, "INSERT INTO v VALUES ('2024-01-02 03:04:05+00', '2024-01-02', '1 day 2 hours', 0.1)")
        repl.start("canonical", 0, "pub")
        (insert,) = [m for m in _read_until(repl, Commit) if isinstance(m, Insert)]
    assert insert.new == ("2024-01-02 03:04:05+00", "2024-01-02", "P1DT2H", "0.1")


def test_server_shutdown_ends_the_stream_once_the_client_confirms(pg_private_server: PostgresServer) -> None:
    """A fast shutdown waits until a logical walsender's client has confirmed everything sent."""
    dsn = pg_private_server.dsn()
    _prepare(dsn)
    with ReplicationConnection(dsn) as repl:
        repl.create_slot("shutdown")
        repl.start("shutdown", 0, "pub")
        stopper = threading.Thread(target=pg_private_server.stop)
        stopper.start()
        with pytest.raises(ReplicationError, match="ended the replication stream"):
            for _ in range(200):
                message = repl.read(timeout_s=0.1)
                if isinstance(message, Keepalive):
                    repl.send_status(message.wal_end, message.wal_end, message.wal_end)
        stopper.join(timeout=10)
    assert not pg_private_server.is_running()


# The harness


def test_server_survives_kill_and_restart(pg_private_server: PostgresServer) -> None:
    server = pg_private_server
    port = server.port
    dsn = server.create_database("survivor")
    _prepare(dsn)
    _run(dsn, "INSERT INTO t VALUES (1, 'committed')")
    with ReplicationConnection(dsn) as repl:
        repl.create_slot("kept")
        repl.start("kept", 0, "pub")
        server.kill()
        assert not server.is_running()
        with pytest.raises(ReplicationError, match="closed the connection"):
            for _ in range(100):
                repl.read(timeout_s=0.1)
    with pytest.raises(ConnectionFailed):
        ReplicationConnection(dsn, connect_timeout_s=2)
    server.start()  # crash recovery
    assert server.port == port
    assert server.execute("SELECT v FROM t", dbname="survivor") == [("committed",)]
    assert server.execute("SELECT slot_name FROM pg_replication_slots") == [("kept",)]
    server.restart()
    assert server.execute("SELECT count(*) FROM t", dbname="survivor") == [(1,)]
    assert "database system is ready" in server.log_tail(50)
    server.drop_database("survivor")
    assert server.execute("SELECT slot_name FROM pg_replication_slots") == []


def test_drop_database_ends_active_slots(pg_private_server: PostgresServer) -> None:
    dsn = pg_private_server.create_database("busy")
    _prepare(dsn)
    with ReplicationConnection(dsn) as repl:
        repl.create_slot("held")
        repl.create_slot("temp", temporary=True)
        repl.start("held", 0, "pub")
        pg_private_server.drop_database("busy")
    assert pg_private_server.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert pg_private_server.execute("SELECT count(*) FROM pg_database WHERE datname = 'busy'") == [(0,)]


def test_own_initdb_gives_a_distinct_system_identifier(pg_server: PostgresServer) -> None:
    copied, separate = PostgresServer(), PostgresServer(own_initdb=True)
    try:
        identifiers = []
        for server in (pg_server, copied, separate):
            server.start()  # pg_server is running already: a no-op
            identifiers.append(server.execute("SELECT system_identifier FROM pg_control_system()"))
    finally:
        copied.cleanup()
        separate.cleanup()
    assert identifiers[0] == identifiers[1] != identifiers[2]


def test_failed_start_raises_with_the_server_log() -> None:
    server = PostgresServer({"shared_buffers": "'lots'"})
    try:
        with pytest.raises(RuntimeError, match=r"(?s)could not start server.*invalid value for parameter"):
            server.start()
    finally:
        server.cleanup()
