"""The pgstream destination, its stream store and the `stream` CLI, against the test PostgreSQL server:
exactly-once writes, dedupe by idempotency key, consumer groups, visibility timeouts, concurrent
consumers, replay, retention and the CLI's output, exit codes and one-line errors."""

from __future__ import annotations

import threading
import time

import orjson
import psycopg
import pytest
import typer
from typer.testing import CliRunner

from agent import pgstream
from agent.change import Change
from agent.config_destinations import PgStreamDestinationConfig
from agent.delivery import Delivery, envelope, idempotency_key
from agent.destinations.base import PermanentError, RetryableError, TransactionalDestination
from agent.destinations.factory import build_destination
from agent.destinations.pgstream import PgStreamDestination
from cli.stream import app as stream_app
from tests.agent_harness import execute, query
from tests.pg import free_port

STREAM = "orders"


def change(i: int, **fields) -> Change:
    values = {"table": "public.orders", "op": "insert", "source": "app", "key": {"id": i}, "lsn": f"0/{i:X}"}
    values.update(fields)
    values.setdefault("after", {"id": i, "note": f"n{i}"})
    return Change(**values)


def deliveries(first: int, last: int) -> list[Delivery]:
    return [Delivery(seq, change(seq), idempotency_key(change(seq), seq)) for seq in range(first, last + 1)]


def destination(dsn: str, name: str = "stream1", **options) -> PgStreamDestination:
    config = PgStreamDestinationConfig(name=name, type="pgstream", dsn=dsn, stream=STREAM, **options)
    dest = PgStreamDestination(config)
    dest.open()
    return dest


@pytest.fixture
def conn(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        pgstream.ensure_schema(connection)
        yield connection


def stored_seqs(dsn: str, stream: str = STREAM) -> list[int]:
    return [
        row[0]
        for row in query(
            dsn, "SELECT seq FROM wallaby_stream.entries WHERE stream = %s ORDER BY id", (stream,)
        )
    ]


def ids_of(entries: list[pgstream.Entry]) -> list[int]:
    return [entry.id for entry in entries]


def wait_until_db_time_passes(connection: psycopg.Connection, moment) -> None:
    """Block until the server's clock is past `moment` (the guard deadline only stops a hang)."""
    deadline = time.monotonic() + 60
    while not connection.execute("SELECT clock_timestamp() > %s", (moment,)).fetchone()[0]:
        assert time.monotonic() < deadline, f"the server clock never passed {moment}"
        time.sleep(0.05)


# -- the destination ------------------------------------------------------------------------------


def test_destination_appends_envelopes_and_stores_its_position(pg_dsn):
    dest = destination(pg_dsn)
    assert isinstance(dest, TransactionalDestination)
    assert dest.position() == 0
    batch = deliveries(1, 3)
    dest.write(batch)
    rows = query(
        pg_dsn,
        "SELECT seq, idempotency_key, table_name, op, envelope, size_bytes FROM wallaby_stream.entries ORDER BY id",
    )
    assert [row[:4] for row in rows] == [(d.seq, d.idempotency_key, "public.orders", "insert") for d in batch]
    assert [row[4] for row in rows] == [envelope(d) for d in batch]
    assert all(row[5] == len(orjson.dumps(envelope(d))) for row, d in zip(rows, batch, strict=True))
    assert dest.position() == 3
    dest.close()
    # The factory builds the same destination from a config.
    built = build_destination(PgStreamDestinationConfig(name="x", type="pgstream", dsn=pg_dsn, stream=STREAM))
    assert isinstance(built, PgStreamDestination)


def test_a_batch_sent_again_adds_nothing_past_the_position(pg_dsn):
    dest = destination(pg_dsn)
    dest.write(deliveries(1, 3))
    dest.write(deliveries(1, 3))  # the same batch after a crash
    dest.write(deliveries(2, 5))  # overlapping
    assert stored_seqs(pg_dsn) == [1, 2, 3, 4, 5]
    assert dest.position() == 5
    assert dest.stats["skipped"] == 3 + 2
    # A new instance (a restart) resumes from the stored position.
    dest.close()
    assert destination(pg_dsn).position() == 5


def test_records_already_in_the_stream_are_dropped_by_idempotency_key(pg_dsn, conn):
    first = destination(pg_dsn, "first")
    first.write(deliveries(1, 4))
    # Another destination name has its own position (0), so only the key can stop the repeats.
    second = destination(pg_dsn, "second")
    second.write(deliveries(3, 6))
    assert stored_seqs(pg_dsn) == [1, 2, 3, 4, 5, 6]
    assert second.stats["duplicates"] == 2
    assert pgstream.stream_position(conn, STREAM, "first") == 4
    assert pgstream.stream_position(conn, STREAM, "second") == 6
    assert pgstream.append(conn, STREAM, deliveries(1, 6)) == 0
    # Streams are separate: the same records go into another stream.
    assert pgstream.append(conn, "other", deliveries(1, 2)) == 2


def test_a_refused_batch_stores_neither_entries_nor_position(pg_dsn):
    dest = destination(pg_dsn)
    dest.write(deliveries(1, 2))
    bad = change(4, after={"id": 4, "note": "nul \x00 byte"})  # jsonb cannot hold \u0000
    batch = [*deliveries(3, 3), Delivery(4, bad, idempotency_key(bad, 4))]
    with pytest.raises(PermanentError, match="SQLSTATE 22"):
        dest.write(batch)
    assert stored_seqs(pg_dsn) == [1, 2]
    assert dest.position() == 2
    dest.write(deliveries(3, 3))  # the connection is usable again
    assert stored_seqs(pg_dsn) == [1, 2, 3]


def test_an_unreachable_database_is_retryable():
    config = PgStreamDestinationConfig(
        name="s", type="pgstream", dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/x", stream=STREAM
    )
    with pytest.raises(RetryableError, match="destination s"):
        PgStreamDestination(config).open()


def test_the_destination_applies_retention_after_a_write(pg_dsn):
    destination(pg_dsn).write(deliveries(1, 3))
    execute(pg_dsn, "UPDATE wallaby_stream.entries SET created_at = now() - interval '2 hours'")
    dest = destination(pg_dsn, retention="1h")
    dest.write(deliveries(4, 5))
    assert stored_seqs(pg_dsn) == [4, 5]


# -- pull, ack, visibility ------------------------------------------------------------------------


def test_an_unacked_entry_comes_back_after_its_timeout_and_an_acked_one_never(conn):
    pgstream.append(conn, STREAM, deliveries(1, 3))
    first = pgstream.pull(conn, STREAM, "g", 2, 1.0)
    assert [(e.seq, e.delivery_count) for e in first] == [(1, 1), (2, 1)]
    assert first[0].envelope == envelope(deliveries(1, 1)[0])
    # Hidden while in flight: the next pull gets only the third.
    assert [e.seq for e in pgstream.pull(conn, STREAM, "g", 10, 3600)] == [3]
    assert pgstream.pull(conn, STREAM, "g", 10, 3600) == []
    assert pgstream.ack(conn, STREAM, "g", [first[0].id]) == 1
    wait_until_db_time_passes(conn, max(e.visible_at for e in first))
    again = pgstream.pull(conn, STREAM, "g", 10, 3600)
    assert [(e.id, e.delivery_count) for e in again] == [(first[1].id, 2)]
    assert pgstream.pull(conn, STREAM, "g", 10, 3600) == []


def test_ack_reports_acked_already_acked_and_unknown_ids(conn):
    pgstream.append(conn, STREAM, deliveries(1, 3))
    pulled = ids_of(pgstream.pull(conn, STREAM, "g", 2, 60))
    never_pulled = ids_of(pgstream.pull(conn, STREAM, "other", 3, 60))[2]
    result = pgstream.ack_ids(conn, STREAM, "g", [pulled[0], pulled[0]])
    assert (result.acked, result.already_acked, result.unknown) == ([pulled[0]], [], [])
    result = pgstream.ack_ids(conn, STREAM, "g", [pulled[0], pulled[1], never_pulled, 999_999])
    assert result.acked == [pulled[1]]
    assert result.already_acked == [pulled[0]]
    assert result.unknown == [never_pulled, 999_999]  # the third was pulled by "other" only
    assert pgstream.ack(conn, STREAM, "g", [999_999]) == 0


def test_groups_see_every_entry_independently_and_start_at_the_beginning(conn):
    pgstream.append(conn, STREAM, deliveries(1, 5))
    a = pgstream.pull(conn, STREAM, "a", 100, 3600)
    assert [e.seq for e in a] == [1, 2, 3, 4, 5]
    assert pgstream.ack(conn, STREAM, "a", ids_of(a)) == 5
    b = pgstream.pull(conn, STREAM, "b", 100, 3600)
    assert ids_of(b) == ids_of(a) and all(e.delivery_count == 1 for e in b)
    pgstream.append(conn, STREAM, deliveries(6, 7))
    assert [e.seq for e in pgstream.pull(conn, STREAM, "a", 100, 3600)] == [6, 7]
    assert [e.seq for e in pgstream.pull(conn, STREAM, "b", 100, 3600)] == [6, 7]
    assert [e.seq for e in pgstream.pull(conn, STREAM, "late", 3, 3600)] == [1, 2, 3]


def test_concurrent_consumers_of_one_group_never_get_the_same_entry(pg_dsn, conn):
    total = 1500  # more than one materialization chunk (1000)
    pgstream.append(conn, STREAM, deliveries(1, total))
    consumers = 4
    start = threading.Barrier(consumers)
    got: list[list[pgstream.Entry]] = [[] for _ in range(consumers)]
    errors: list[BaseException] = []

    def consume(index: int) -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as own:
                start.wait()
                while batch := pgstream.pull(own, STREAM, "workers", 25, 3600):
                    got[index].extend(batch)
                    pgstream.ack(own, STREAM, "workers", ids_of(batch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [entry.id for entries in got for entry in entries]
    assert len(every) == len(set(every)) == total
    assert sorted(entry.seq for entries in got for entry in entries) == list(range(1, total + 1))
    assert all(entry.delivery_count == 1 for entries in got for entry in entries)
    assert sum(1 for entries in got if entries) >= 2, "the consumers did not run side by side"


def test_replay_makes_entries_since_a_time_visible_again(conn):
    pgstream.append(conn, STREAM, deliveries(1, 3))
    since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    pgstream.append(conn, STREAM, deliveries(4, 5))
    everything = pgstream.pull(conn, STREAM, "g", 100, 3600)
    pgstream.ack(conn, STREAM, "g", ids_of(everything[:4]))  # the fifth stays in flight
    assert pgstream.pull(conn, STREAM, "g", 100, 3600) == []
    assert pgstream.replay(conn, STREAM, "g", since) == 2
    again = pgstream.pull(conn, STREAM, "g", 100, 3600)
    assert [(e.seq, e.delivery_count) for e in again] == [(4, 2), (5, 2)]
    assert pgstream.pull(conn, STREAM, "other", 100, 3600) != []  # other groups are untouched
    assert pgstream.replay(conn, STREAM, "nobody", since) == 0


def test_trim_drops_old_entries_then_the_oldest_beyond_the_size_limit(pg_dsn, conn):
    pgstream.append(conn, STREAM, deliveries(1, 10))
    pgstream.pull(conn, STREAM, "g", 10, 3600)  # deliveries rows that must go with their entries
    execute(
        pg_dsn, "UPDATE wallaby_stream.entries SET created_at = now() - interval '2 hours' WHERE seq <= 4"
    )
    assert pgstream.trim(conn, STREAM, 3600, None) == 4
    assert stored_seqs(pg_dsn) == [5, 6, 7, 8, 9, 10]
    sizes = [row[0] for row in query(pg_dsn, "SELECT size_bytes FROM wallaby_stream.entries ORDER BY id")]
    assert pgstream.trim(conn, STREAM, None, sum(sizes[-3:])) == 3
    assert stored_seqs(pg_dsn) == [8, 9, 10]
    assert pgstream.trim(conn, STREAM, 3600, sum(sizes[-3:])) == 0
    assert query(pg_dsn, "SELECT count(*) FROM wallaby_stream.deliveries") == [(3,)]


def test_bad_arguments_are_value_errors(conn):
    with pytest.raises(ValueError, match="max_entries"):
        pgstream.pull(conn, STREAM, "g", 0, 10)
    with pytest.raises(ValueError, match="visibility"):
        pgstream.pull(conn, STREAM, "g", 1, -1)
    with pytest.raises(ValueError, match="group name"):
        pgstream.pull(conn, STREAM, " ", 1, 1)


# -- the CLI --------------------------------------------------------------------------------------

root = typer.Typer()
root.add_typer(stream_app, name="stream")


def cli(*args: str):
    return CliRunner().invoke(root, ["stream", *args])


def one_error_line(result, code: int, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_pull_ack_and_replay(pg_dsn, conn):
    pgstream.append(conn, STREAM, deliveries(1, 3))
    since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    pgstream.append(conn, STREAM, deliveries(4, 4))
    common = ["--dsn", pg_dsn, "--stream", STREAM, "--group", "g"]
    pulled = cli("pull", *common, "--max", "3", "--visibility", "3600", "--json")
    assert pulled.exit_code == 0, pulled.output
    records = [orjson.loads(line) for line in pulled.stdout.splitlines()]
    assert [(r["seq"], r["table"], r["op"], r["delivery_count"]) for r in records] == [
        (1, "public.orders", "insert", 1),
        (2, "public.orders", "insert", 1),
        (3, "public.orders", "insert", 1),
    ]
    assert records[0]["envelope"] == envelope(deliveries(1, 1)[0])
    text = cli("pull", *common, "--max", "5", "--visibility", "3600")
    assert text.exit_code == 0, text.output
    (line,) = text.stdout.splitlines()
    assert line.startswith(f"id={records[-1]['id'] + 1} seq=4 table=public.orders op=insert deliveries=1 {{")
    empty = cli("pull", *common, "--visibility", "3600")
    assert empty.exit_code == 0 and empty.stdout == "" and "no entries" in empty.stderr
    ids = ",".join(str(r["id"]) for r in records)
    acked = cli("ack", *common, "--ids", f"{ids},{records[0]['id']}")
    assert acked.exit_code == 0 and acked.stdout.strip() == "acked 3 entries", acked.output
    again = cli("ack", *common, "--ids", str(records[0]["id"]))
    assert again.exit_code == 0 and "already acked: " + str(records[0]["id"]) in again.stdout
    unknown = cli("ack", *common, "--ids", "999999")
    one_error_line(unknown, 1, "999999")
    replayed = cli("replay", *common, "--since", since.isoformat())
    assert replayed.exit_code == 0 and replayed.stdout.strip() == "replayed 1 entry for group g"
    back = cli("pull", *common, "--json", "--visibility", "3600")
    assert [
        (orjson.loads(x)["seq"], orjson.loads(x)["delivery_count"]) for x in back.stdout.splitlines()
    ] == [(4, 2)]


def test_cli_takes_the_dsn_and_stream_from_the_config(pg_dsn, conn, tmp_path):
    pgstream.append(conn, STREAM, deliveries(1, 2))
    config = tmp_path / "agent.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[[destinations]]\nname = "events"\ntype = "pgstream"\ndsn = "{pg_dsn}"\nstream = "{STREAM}"\n'
        f'[[destinations]]\nname = "hook"\ntype = "http"\nurl = "http://127.0.0.1:9/"\n'
    )
    by_config = ["--config", str(config), "--group", "g"]
    pulled = cli("pull", *by_config, "--destination", "events", "--json")
    assert pulled.exit_code == 0, pulled.output
    assert [orjson.loads(line)["seq"] for line in pulled.stdout.splitlines()] == [1, 2]
    one_error_line(cli("pull", *by_config, "--destination", "nowhere"), 2, "no destination named 'nowhere'")
    one_error_line(cli("pull", *by_config, "--destination", "hook"), 2, "not pgstream")
    one_error_line(
        cli("pull", "--config", str(tmp_path / "missing.toml"), "--destination", "events", "--group", "g"),
        2,
        "missing.toml",
    )


def test_cli_bad_input_is_one_error_line_with_exit_code_2(pg_dsn, pg_server):
    common = ["--dsn", pg_dsn, "--stream", STREAM, "--group", "g"]
    one_error_line(cli("ack", *common, "--ids", "1,x,3"), 2, "'x' is not an entry id")
    one_error_line(cli("ack", *common, "--ids", ","), 2, "at least one entry id")
    one_error_line(cli("replay", *common, "--since", "yesterday"), 2, "not an ISO 8601 time")
    one_error_line(cli("pull", *common, "--max", "0"), 2, "--max must be at least 1")
    one_error_line(cli("pull", *common, "--visibility", "-1"), 2, "--visibility")
    one_error_line(cli("pull", "--group", "g", "--stream", STREAM), 2, "give --dsn")
    one_error_line(cli("pull", "--group", "g", "--dsn", pg_dsn), 2, "give --stream")
    # No destination has written to this database: no tables.
    one_error_line(cli("pull", *common), 2, "no wallaby_stream tables")
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    one_error_line(cli("pull", "--dsn", unreachable, "--stream", STREAM, "--group", "g"), 2, "PostgreSQL:")
    one_error_line(
        cli("ack", "--dsn", unreachable, "--stream", STREAM, "--group", "g", "--ids", "1"), 2, "PostgreSQL:"
    )
