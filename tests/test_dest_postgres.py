"""The postgres destination against the test server: upserts, deletes, key changes, truncates, TOAST,
soft delete, append mode, exactly-once positions, DDL, table creation from stored schemas, error
classification, speed, a real capture from a source database certified equal to its copy, and
inserts written by COPY (values, metadata, falling back to the upsert)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from agent.certify import certify_table
from agent.change import Change, encode_change
from agent.config_destinations import PostgresDestinationConfig
from agent.delivery import Delivery, LogBatch, idempotency_key
from agent.destinations import postgres as postgres_destination
from agent.destinations.base import PermanentError, RetryableError, TransactionalDestination
from agent.destinations.postgres import COPY_MIN_ROWS, STORED_CHUNK_ROWS, PostgresDestination
from agent.errors import ConfigError
from agent.sources.postgres.catalog import describe_relation, describe_table, record_relation_schema
from agent.sources.postgres.pgoutput import Column, Relation
from agent.state import StateStore
from tests.agent_harness import (
    agent_config,
    execute,
    logged_changes,
    query,
    running_agent,
    source_config,
    wait_for,
)


@pytest.fixture
def target_dsn(pg_server):
    name = f"target_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    yield dsn
    if not pg_server.is_running():
        pg_server.start()
    pg_server.drop_database(name)


def change(op, key=None, after=None, before=None, table="public.orders", **fields):
    return Change(table=table, op=op, source="app", key=key, after=after, before=before, lsn="0/1", **fields)


def deliveries(changes, start=1):
    return [Delivery(seq, c, idempotency_key(c, seq)) for seq, c in enumerate(changes, start)]


def destination(dsn, state=None, **options):
    config = PostgresDestinationConfig(name="pg", type="postgres", dsn=dsn, **options)
    dest = PostgresDestination(config, state)
    dest.open()
    return dest


def rows(dsn, sql):
    return query(dsn, sql)


def test_target_mode_upserts_deletes_moves_keys_and_truncates(target_dsn):
    dest = destination(target_dsn)
    assert isinstance(dest, TransactionalDestination)
    dest.write(
        deliveries(
            [
                change("insert", {"id": 1}, {"id": 1, "note": "one", "n": 1}),
                change("insert", {"id": 2}, {"id": 2, "note": "two", "n": 2}),
                change("snapshot", {"id": 3}, {"id": 3, "note": "three", "n": 3}),
                change("update", {"id": 1}, {"id": 1, "note": "uno", "n": 10}),
                change("update", {"id": 20}, {"id": 20, "note": "moved", "n": 2}, before={"id": 2}),
                change("delete", {"id": 3}, before={"id": 3}),
                change("message", message={"prefix": "x", "content": "y"}, table=""),
            ]
        )
    )
    assert rows(target_dsn, "SELECT id, note, n FROM public.orders ORDER BY id") == [
        (1, "uno", 10),
        (20, "moved", 2),
    ]
    assert dest.position() == 7
    assert dest.stats["messages_ignored"] == 1
    # The key of the created table is the change's key.
    assert describe_table(psycopg.connect(target_dsn, autocommit=True), "public", "orders")[0] == {
        "name": "id",
        "type": "bigint",
        "key": True,
    }
    dest.write(deliveries([change("truncate", message={"cascade": False, "restart_identity": False})], 8))
    assert rows(target_dsn, "SELECT count(*) FROM public.orders") == [(0,)]
    dest.close()


def test_unchanged_toast_columns_keep_the_target_value_and_are_null_on_a_new_row(target_dsn):
    dest = destination(target_dsn)
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1, "big": "x" * 5000, "n": 1})]))
    dest.write(
        deliveries(
            [
                change("update", {"id": 1}, {"id": 1, "n": 2}, unchanged=["big"]),
                change("update", {"id": 2}, {"id": 2, "n": 3}, unchanged=["big"]),
            ],
            2,
        )
    )
    assert rows(target_dsn, "SELECT id, length(big), n FROM public.orders ORDER BY id") == [
        (1, 5000, 2),
        (2, None, 3),
    ]


def test_meta_columns_and_soft_delete(target_dsn):
    dest = destination(target_dsn, meta_enabled=True, soft_delete=True)
    dest.write(
        deliveries(
            [
                change("insert", {"id": 1}, {"id": 1, "v": "a"}),
                change("insert", {"id": 2}, {"id": 2, "v": "b"}),
                change("delete", {"id": 2}, before={"id": 2}),
            ]
        )
    )
    got = rows(
        target_dsn,
        "SELECT id, v, __ds_is_deleted, __ds_op, __ds_watermark, __ds_synced_at > now() - interval '1 minute'"
        " FROM public.orders ORDER BY id",
    )
    assert got == [(1, "a", False, "insert", 1, True), (2, "b", True, "delete", 3, True)]
    dest.write(deliveries([change("truncate")], 4))
    assert rows(target_dsn, "SELECT id, __ds_is_deleted, __ds_op FROM public.orders ORDER BY id") == [
        (1, True, "truncate"),
        (2, True, "delete"),
    ]
    # Re-inserting a deleted key revives the row.
    dest.write(deliveries([change("insert", {"id": 2}, {"id": 2, "v": "again"})], 5))
    assert rows(target_dsn, "SELECT v, __ds_is_deleted FROM public.orders WHERE id = 2") == [("again", False)]


def test_soft_delete_without_meta_columns_is_a_configuration_error(target_dsn):
    config = PostgresDestinationConfig(name="pg", type="postgres", dsn=target_dsn, soft_delete=True)
    with pytest.raises(ConfigError, match="soft_delete = true needs meta_enabled = true"):
        PostgresDestination(config, None)


def test_exactly_once_a_resent_batch_adds_nothing_in_append_mode(target_dsn):
    dest = destination(target_dsn, write_mode="append")
    batch = deliveries([change("insert", {"id": i}, {"id": i, "v": str(i)}) for i in range(1, 5)])
    dest.write(batch)
    assert dest.position() == 4
    # The sender's rule: nothing past the position is left, nothing is sent.
    assert [d for d in batch if d.seq > dest.position()] == []
    # A batch re-sent on purpose (and one overlapping it) is skipped up to the stored position.
    dest.write(batch)
    more = deliveries([change("update", {"id": i}, {"id": i, "v": "new"}) for i in range(3, 7)], 3)
    dest.write(more)
    got = rows(target_dsn, "SELECT id, v, __ds_op, __ds_watermark FROM public.orders ORDER BY __ds_watermark")
    assert got == [
        (1, "1", "insert", 1),
        (2, "2", "insert", 2),
        (3, "3", "insert", 3),
        (4, "4", "insert", 4),
        (5, "new", "update", 5),
        (6, "new", "update", 6),
    ]
    assert dest.position() == 6 and dest.stats["records_skipped"] == 6
    # A delete is appended as a row too, marked deleted.
    dest.write(deliveries([change("delete", {"id": 1}, before={"id": 1})], 7))
    assert rows(target_dsn, "SELECT id, __ds_is_deleted FROM public.orders WHERE __ds_watermark = 7") == [
        (1, True)
    ]


def test_a_failed_batch_leaves_neither_rows_nor_position_and_not_null_is_permanent(target_dsn):
    execute(target_dsn, "CREATE TABLE public.orders (id bigint PRIMARY KEY, v text NOT NULL)")
    dest = destination(target_dsn)
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1, "v": "a"})]))
    bad = deliveries(
        [change("insert", {"id": 2}, {"id": 2, "v": "b"}), change("insert", {"id": 3}, {"id": 3, "v": None})],
        2,
    )
    with pytest.raises(PermanentError, match="null value in column") as failure:
        dest.write(bad)
    assert "\n" not in str(failure.value)
    assert dest.position() == 1
    assert rows(target_dsn, "SELECT id FROM public.orders ORDER BY id") == [(1,)]
    with pytest.raises(PermanentError, match="invalid input syntax"):
        dest.write(deliveries([change("insert", {"id": "x"}, {"id": "x", "v": "b"})], 2))
    # The destination goes on after a refused batch.
    dest.write(deliveries([change("insert", {"id": 2}, {"id": 2, "v": "b"})], 2))
    assert dest.position() == 2


def test_a_stopped_server_is_retryable_and_the_next_batch_reconnects(pg_private_server):
    dsn = pg_private_server.create_database("target")
    dest = destination(dsn)
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1})]))
    pg_private_server.stop()
    with pytest.raises(RetryableError):
        dest.write(deliveries([change("insert", {"id": 2}, {"id": 2})], 2))
    with pytest.raises(RetryableError):
        destination(dsn)
    pg_private_server.start()
    dest.write(deliveries([change("insert", {"id": 2}, {"id": 2})], 2))
    assert dest.position() == 2 and rows(dsn, "SELECT count(*) FROM public.orders") == [(2,)]


def test_a_confirmed_batch_survives_a_crash_of_a_target_with_asynchronous_commit(pg_private_server):
    """The suite's servers run synchronous_commit=off; a confirmed batch must still outlive a crash.

    The sender moves its cursor once write() returns, so write() may return only once the target
    has the batch on its disk: with asynchronous commit a crash right after would lose it for good.
    """
    dsn = pg_private_server.create_database("target")
    assert query(dsn, "SHOW synchronous_commit") == [("off",)]
    for batch in range(1, 4):
        dest = destination(dsn)
        dest.write(deliveries([change("insert", {"id": batch}, {"id": batch})], batch))
        pg_private_server.kill()  # at once, before the WAL writer's next round
        pg_private_server.start()
        with pytest.raises(RetryableError):
            dest.write(deliveries([change("insert", {"id": 99}, {"id": 99})], 99))
        assert destination(dsn).position() == batch
        assert rows(dsn, "SELECT max(id) FROM public.orders") == [(batch,)]


def test_tables_are_created_from_the_stored_schema_with_type_mappings(target_dsn, tmp_path):
    state = StateStore(tmp_path / "state")
    columns = [
        {"name": "id", "type": "integer", "key": True},
        {"name": "amount", "type": "numeric(10,2)", "key": False},
        {"name": "tags", "type": "text[]", "key": False},
        {"name": "doc", "type": "jsonb", "key": False},
        {"name": "raw", "type": "bytea", "key": False},
        {"name": "at", "type": "timestamp with time zone", "key": False},
        {"name": "mood", "type": "public.mood", "key": False},  # an enum the target lacks
        {"name": "note", "type": "character varying(20)", "key": False},
    ]
    assert state.record_table_schema("app", "public.orders", columns) is True
    assert state.record_table_schema("app", "public.orders", columns) is False  # unchanged: not rewritten
    assert [s.table for s in state.table_schemas()] == ["public.orders"]
    dest = destination(target_dsn, state, schema="copy", type_mappings={"character varying": "text"})
    after = {
        "id": 1,
        "amount": "12.50",
        "tags": ["a", 'b "q"', None],
        "doc": "just a string",
        "raw": "AAEC",
        "at": "2024-01-02T03:04:05.250000Z",
        "mood": "happy",
    }
    dest.write(deliveries([change("insert", {"id": 1}, after)]))
    types = {c["name"]: c["type"] for c in describe_table(psycopg.connect(target_dsn), "copy", "orders")}
    assert types == {
        "id": "integer",
        "amount": "numeric(10,2)",
        "tags": "text[]",
        "doc": "jsonb",
        "raw": "bytea",
        "at": "timestamp with time zone",
        "mood": "text",
        "note": "text",
    }
    got = rows(
        target_dsn,
        "SELECT amount::text, tags, doc #>> '{}', raw, at = '2024-01-02 03:04:05.25Z', note FROM copy.orders",
    )
    assert got == [("12.50", ["a", 'b "q"', None], "just a string", b"\x00\x01\x02", True, None)]


def test_ddl_adds_columns_creates_tables_and_runs_a_safe_alter_table(target_dsn, tmp_path):
    state = StateStore(tmp_path / "state")
    dest = destination(target_dsn, state)
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1, "v": "a"})]))
    alter = change(
        "ddl",
        table="public.orders",
        message={
            "statement": "ALTER TABLE orders ADD COLUMN extra integer DEFAULT 7;",
            "command_tag": "ALTER TABLE",
        },
    )
    state.record_table_schema(
        "app",
        "public.items",
        [{"name": "sku", "type": "text", "key": True}, {"name": "price", "type": "numeric", "key": False}],
    )
    create = change(
        "ddl",
        table="public.items",
        message={"statement": "CREATE TABLE items (...)", "command_tag": "CREATE TABLE"},
    )
    dest.write(deliveries([alter, create], 2))
    assert rows(target_dsn, "SELECT id, v, extra FROM public.orders") == [(1, "a", 7)]
    assert [c["name"] for c in describe_table(psycopg.connect(target_dsn), "public", "items")] == [
        "sku",
        "price",
    ]
    assert dest.stats["ddl_applied"] == 2
    # A column that appears in the rows is added on the fly.
    dest.write(deliveries([change("insert", {"id": 2}, {"id": 2, "v": "b", "more": 1.5})], 4))
    assert rows(target_dsn, "SELECT id, more FROM public.orders ORDER BY id") == [(1, None), (2, 1.5)]
    # With apply_ddl = false, it is refused instead.
    strict = destination(target_dsn, state, apply_ddl=False, position_table="strict_positions")
    with pytest.raises(PermanentError, match="lacks column"):
        strict.write(deliveries([change("insert", {"id": 3}, {"id": 3, "newer": 1})], 5))


def test_record_relation_schema_uses_the_message_types_and_the_primary_key(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), tags text[], at timestamptz)")
    oids = dict(
        query(
            pg_dsn,
            "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0",
        )
    )
    relation = Relation(
        1,
        "public",
        "t",
        "f",  # replica identity full: every column flagged, the primary key is the key
        (
            Column(True, "id", oids["id"], -1),
            Column(True, "amount", oids["amount"], (10 << 16 | 2) + 4),
            Column(True, "tags", oids["tags"], -1),
            Column(True, "at", oids["at"], -1),
        ),
    )
    state = StateStore(tmp_path / "state")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert describe_relation(conn, relation) == describe_table(conn, "public", "t")
        assert record_relation_schema(state, "app", conn, relation) is True
        assert record_relation_schema(state, "app", conn, relation) is False
    assert state.table_schema("app", "public.t") == [
        {"name": "id", "type": "integer", "key": True},
        {"name": "amount", "type": "numeric(10,2)", "key": False},
        {"name": "tags", "type": "text[]", "key": False},
        {"name": "at", "type": "timestamp with time zone", "key": False},
    ]


SOURCE_TABLE = (
    "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric(12,3), price float8, ratio real,"
    " tags text[], nums int[], doc jsonb, raw bytea, at timestamptz, day date, local timestamp, span interval,"
    " ok boolean, ref uuid)"
)


def test_changes_captured_from_a_real_source_apply_to_an_equal_copy(pg_dsn, target_dsn, tmp_path):
    execute(pg_dsn, SOURCE_TABLE)
    state = StateStore(tmp_path / "state")
    with psycopg.connect(pg_dsn) as conn:
        state.record_table_schema("app", "public.orders", describe_table(conn, "public", "orders"))
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(
            pg_dsn,
            "INSERT INTO orders SELECT g, 'note ' || g, g * 1.125, g / 3.0, g / 7.0, ARRAY['a', NULL, 'c\"d'],"
            " ARRAY[g, g + 1], jsonb_build_object('g', g, 'list', jsonb_build_array(1, 'x')), '\\x00ff'::bytea,"
            " '2024-01-02 03:04:05.25+02'::timestamptz + g * interval '1 hour', '2024-02-29', '2024-01-01 10:00:00.5',"
            " 'P1Y2M3DT4H', g % 2 = 0, gen_random_uuid() FROM generate_series(1, 300) g",
            "UPDATE orders SET note = 'changed', price = 'NaN' WHERE id <= 10",
            "UPDATE orders SET id = id + 1000 WHERE id BETWEEN 11 AND 20",  # key changes
            "DELETE FROM orders WHERE id BETWEEN 21 AND 40",
            "TRUNCATE orders",
            "INSERT INTO orders (id, note, doc, tags) VALUES (1, 'after truncate', '\"a json string\"', '{}')",
            "INSERT INTO orders SELECT g, 'again', g FROM generate_series(2, 50) g",
            "UPDATE orders SET id = 5000 WHERE id = 2",
            "DELETE FROM orders WHERE id = 3",
        )
        wait_for(
            lambda: len(logged_changes(config.data_dir)) == 300 + 10 + 10 + 20 + 1 + 1 + 49 + 1 + 1,
            what="all changes",
        )
    captured = logged_changes(config.data_dir)
    assert {c.op for _s, c in captured} == {"insert", "update", "delete", "truncate"}
    dest = destination(target_dsn, state)
    # Two batches, the first one sent twice: the position keeps it from applying again.
    batches = [captured[:200], captured[200:]]
    for batch in [batches[0], batches[0], batches[1]]:
        sendable = [Delivery(s, c, idempotency_key(c, s)) for s, c in batch if s > dest.position()]
        dest.write(sendable)
    assert dest.position() == captured[-1][0]
    result = certify_table(pg_dsn, target_dsn, "public.orders")
    assert result.equal, result
    assert result.source_rows == 49 and result.dest_rows == 49


def test_a_10000_row_insert_batch_applies_whole(target_dsn):
    dest = destination(target_dsn, meta_enabled=True)
    batch = deliveries(
        [
            change(
                "insert",
                {"id": i},
                {"id": i, "note": f"note {i}", "amount": "12.50", "at": "2024-01-02T03:04:05.000000Z"},
            )
            for i in range(10_000)
        ]
    )
    dest.write(batch[:1])  # the table exists before the clock starts
    dest.write(batch[1:])
    assert rows(target_dsn, "SELECT count(*) FROM public.orders") == [(10_000,)]


# -- inserts by COPY --------------------------------------------------------------------------

KINDS = [
    {"name": "id", "type": "integer", "key": True},
    {"name": "amount", "type": "numeric(10,2)", "key": False},
    {"name": "at", "type": "timestamp with time zone", "key": False},
    {"name": "doc", "type": "jsonb", "key": False},
    {"name": "tags", "type": "text[]", "key": False},
    {"name": "nums", "type": "integer[]", "key": False},
    {"name": "raw", "type": "bytea", "key": False},
    {"name": "ok", "type": "boolean", "key": False},
    {"name": "ratio", "type": "double precision", "key": False},
    {"name": "note", "type": "text", "key": False},
    {"name": "mood", "type": "public.mood", "key": False},  # an enum the target lacks: text there
]
KIND_VALUES = {
    "amount": ["12.50", "-0.005", "NaN", "99999999.99", 7],
    "at": ["2024-01-02T03:04:05.250000Z", "infinity", "2024-02-29T23:59:59.999999Z"],
    "doc": [{"a": [1, {"b": None}], "s": "x\ty\\z"}, "just a string", 5, True, [1, "2"], {}],
    "tags": [["a", 'b "q"', None, "c,d", "e\\f", "{}", "NULL"], [], ["ü"]],
    "nums": [[1, None, 3], [[1, 2], [3, 4]], []],
    "raw": ["AAEC", "", "/w==", "XAkK"],  # 00 01 02, nothing, ff, backslash tab newline
    "ok": [True, False],
    "ratio": [0.1, 1e-7, 1e16, -2.5],
    "note": ["héllo ✓ 😀", "tab\there", "new\nline\r", "back\\slash", "\\N", "", True, 1e16, {"k": "v"}],
    "mood": ["happy", False],
}


def kind_rows(count):
    """Rows of every kind of value, with a NULL now and then; key i."""
    made = []
    for i in range(count):
        row = {"id": i}
        for column, values in KIND_VALUES.items():
            row[column] = None if (i + len(column)) % 7 == 0 else values[i % len(values)]
        made.append(row)
    return made


def table_text(dsn, table):
    """Each row as PostgreSQL prints it: equal texts are equal values, types and all."""
    return rows(dsn, f"SELECT t::text FROM (SELECT * FROM {table} ORDER BY id) AS t")


def test_an_insert_batch_is_copied_and_every_kind_of_value_arrives_as_the_upsert_writes_it(
    target_dsn, tmp_path
):
    state = StateStore(tmp_path / "state")
    state.record_table_schema("app", "public.kinds", KINDS)
    copied = destination(target_dsn, state, schema="via_copy", position_table="copy_positions")
    upserted = destination(target_dsn, state, schema="via_upsert", position_table="upsert_positions")
    values = kind_rows(3 * COPY_MIN_ROWS)
    copied.write(deliveries([change("insert", {"id": r["id"]}, r, table="public.kinds") for r in values]))
    # An update of a key nobody wrote yet is an insert too, but it always goes by the statement.
    upserted.write(deliveries([change("update", {"id": r["id"]}, r, table="public.kinds") for r in values]))
    assert copied.stats["rows_copied"] == len(values) and copied.stats["rows_upserted"] == len(values)
    assert upserted.stats["rows_copied"] == 0 and upserted.stats["rows_upserted"] == len(values)
    got = table_text(target_dsn, "via_copy.kinds")
    assert got == table_text(target_dsn, "via_upsert.kinds")
    assert len(got) == len(values)
    # Spot checks that the equal texts are the right ones.
    assert rows(
        target_dsn,
        "SELECT doc, doc #>> '{}', raw, note, tags, nums, amount::text FROM via_copy.kinds WHERE id IN (0, 1)"
        " ORDER BY id",
    ) == [
        (
            {"a": [1, {"b": None}], "s": "x\ty\\z"},
            '{"a": [1, {"b": null}], "s": "x\\ty\\\\z"}',
            b"\x00\x01\x02",
            "héllo ✓ 😀",
            ["a", 'b "q"', None, "c,d", "e\\f", "{}", "NULL"],
            [1, None, 3],
            "12.50",
        ),
        ("just a string", "just a string", b"", "tab\there", [], [[1, 2], [3, 4]], None),
    ]


def test_meta_columns_by_copy_are_those_of_the_upsert(target_dsn):
    dest = destination(target_dsn, meta_enabled=True)
    count = COPY_MIN_ROWS + 1
    synced_at_is_the_batch_start = (
        "SELECT bool_and(t.__ds_synced_at = p.updated_at) FROM public.orders t, wallaby_positions p"
        " WHERE t.__ds_watermark > %s"
    )  # now() of the batch's transaction, which the position was written with too
    dest.write(
        deliveries(
            [
                change("insert" if i % 2 else "snapshot", {"id": i}, {"id": i, "v": str(i)})
                for i in range(count)
            ]
        )
    )
    assert dest.stats["rows_copied"] == count
    assert query(target_dsn, synced_at_is_the_batch_start, (0,)) == [(True,)]
    updates = [change("update", {"id": i + 100}, {"id": i + 100, "v": "u"}) for i in range(count)]
    dest.write(deliveries(updates, 50))
    assert dest.stats["rows_copied"] == count  # updates are never copied
    assert query(target_dsn, synced_at_is_the_batch_start, (count,)) == [(True,)]
    assert rows(
        target_dsn,
        "SELECT id, __ds_op, __ds_is_deleted, __ds_watermark FROM public.orders WHERE id IN (0, 1, 100) ORDER BY id",
    ) == [(0, "snapshot", False, 1), (1, "insert", False, 2), (100, "update", False, 50)]


def test_an_insert_of_a_key_that_exists_falls_back_to_the_upsert_once(target_dsn, monkeypatch):
    monkeypatch.setattr(postgres_destination, "COPY_PAUSE_STEPS", 2)
    dest = destination(target_dsn, meta_enabled=True)
    count = COPY_MIN_ROWS
    dest.write(deliveries([change("insert", {"id": i}, {"id": i, "v": "first"}) for i in range(count)]))
    assert dest.stats["rows_copied"] == count
    # A replay: rows for a new table (copied, then rolled back with the rest), then the same
    # keys inserted again with new values, and one new key.
    replay = deliveries(
        [change("insert", {"id": i}, {"id": i}, table="public.other") for i in range(count)]
        + [change("insert", {"id": i}, {"id": i, "v": "again"}) for i in range(count + 1)],
        count + 1,
    )
    dest.write(replay)
    assert dest.position() == replay[-1].seq
    assert rows(target_dsn, "SELECT count(*), min(v), max(v), min(__ds_watermark) FROM public.orders") == [
        (count + 1, "again", "again", 2 * count + 1)
    ]
    assert rows(target_dsn, "SELECT count(*) FROM public.other") == [(count,)]
    assert dest.stats["copy_fallbacks"] == 1
    # The batch was applied once, by statements: what the refused attempt counted is gone.
    assert dest.stats["rows_copied"] == count
    assert dest.stats["rows_upserted"] == count + count + count + 1
    assert dest.stats["batches"] == 2
    # The next steps into that table skip the COPY; then it is tried again.
    for batch in range(2):
        start = 100 * (batch + 1)
        dest.write(
            deliveries([change("insert", {"id": start + i}, {"id": start + i}) for i in range(count)], start)
        )
        assert dest.stats["rows_copied"] == count
    dest.write(deliveries([change("insert", {"id": 500 + i}, {"id": 500 + i}) for i in range(count)], 500))
    assert dest.stats["rows_copied"] == 2 * count and dest.stats["copy_fallbacks"] == 1


def test_values_a_copy_refuses_get_the_statements_answer(target_dsn, tmp_path):
    state = StateStore(tmp_path / "state")
    state.record_table_schema(
        "app",
        "public.short",
        [
            {"name": "id", "type": "integer", "key": True},
            {"name": "code", "type": "character varying(3)", "key": False},
        ],
    )
    state.record_table_schema(
        "app",
        "public.blobs",
        [{"name": "id", "type": "integer", "key": True}, {"name": "raw", "type": "bytea", "key": False}],
    )
    dest = destination(target_dsn, state)
    count = COPY_MIN_ROWS
    # A cast to varchar(3) cuts a longer value short, where COPY refuses it: the outcome is the cast's.
    dest.write(
        deliveries(
            [
                change("insert", {"id": i}, {"id": i, "code": "abcdef"}, table="public.short")
                for i in range(count)
            ]
        )
    )
    assert rows(target_dsn, "SELECT count(*), min(code), max(code) FROM public.short") == [
        (count, "abc", "abc")
    ]
    assert dest.stats["copy_fallbacks"] == 1 and dest.stats["rows_copied"] == 0
    assert dest.position() == count
    # Base64 that does not decode stops the COPY in the client; the statement refuses it as before.
    bad = [
        change("insert", {"id": i}, {"id": i, "raw": "AAEC" if i else "not base64!"}, table="public.blobs")
        for i in range(count)
    ]
    with pytest.raises(PermanentError, match="base64"):
        dest.write(deliveries(bad, count + 1))
    assert dest.stats["copy_fallbacks"] == 2 and dest.stats["rows_copied"] == 0
    assert dest.position() == count
    assert rows(target_dsn, "SELECT to_regclass('public.blobs')") == [(None,)]  # its CREATE went too


def test_a_target_without_a_unique_key_is_not_copied_into(target_dsn):
    execute(target_dsn, "CREATE TABLE public.orders (id bigint, v text)")
    dest = destination(target_dsn)
    with pytest.raises(PermanentError, match="no unique or exclusion constraint"):
        dest.write(
            deliveries([change("insert", {"id": i}, {"id": i, "v": "x"}) for i in range(COPY_MIN_ROWS)])
        )
    assert dest.stats["rows_copied"] == 0
    assert rows(target_dsn, "SELECT count(*) FROM public.orders") == [(0,)]
    # With a unique index on the key, in any column order, the COPY is used.
    execute(
        target_dsn,
        "ALTER TABLE public.orders ADD COLUMN k int",
        "CREATE UNIQUE INDEX ON public.orders (k, id)",
    )
    dest = destination(target_dsn)
    dest.write(
        deliveries(
            [change("insert", {"id": i, "k": 1}, {"id": i, "k": 1, "v": "x"}) for i in range(COPY_MIN_ROWS)]
        )
    )
    assert dest.stats["rows_copied"] == COPY_MIN_ROWS


def test_a_target_with_rules_is_not_copied_into(target_dsn):
    dest = destination(target_dsn, write_mode="append")
    batch = [change("insert", {"id": i}, {"id": i}) for i in range(COPY_MIN_ROWS)]
    dest.write(deliveries(batch))
    assert dest.stats["rows_copied"] == COPY_MIN_ROWS
    execute(
        target_dsn,
        "CREATE TABLE public.audit (id bigint)",
        "CREATE RULE audit AS ON INSERT TO public.orders DO ALSO INSERT INTO public.audit VALUES (NEW.id)",
    )
    dest = destination(target_dsn, write_mode="append")
    dest.write(deliveries(batch, COPY_MIN_ROWS + 1))
    assert dest.stats["rows_copied"] == 0  # COPY would skip the rule
    assert rows(target_dsn, "SELECT count(*) FROM public.audit") == [(COPY_MIN_ROWS,)]


def test_append_mode_copies_inserts_and_deletes(target_dsn):
    dest = destination(target_dsn, write_mode="append")
    count = COPY_MIN_ROWS
    inserts = [change("insert", {"id": i}, {"id": i, "v": f"v{i}"}) for i in range(count)]
    deletes = [change("delete", {"id": i}, before={"id": i, "v": f"v{i}"}) for i in range(count)]
    dest.write(deliveries(inserts + deletes + inserts))  # the same keys twice: no key, no conflict
    assert dest.stats["rows_copied"] == 3 * count and dest.stats["rows_appended"] == 3 * count
    assert rows(
        target_dsn,
        "SELECT __ds_op, __ds_is_deleted, count(*), min(__ds_watermark), max(__ds_watermark)"
        " FROM public.orders GROUP BY 1, 2 ORDER BY 1",
    ) == [("delete", True, count, count + 1, 2 * count), ("insert", False, 2 * count, 1, 3 * count)]
    assert query(
        target_dsn, "SELECT id, v FROM public.orders WHERE __ds_watermark = %s", (2 * count + 3,)
    ) == [(2, "v2")]


# -- inserts copied straight from the stored records (agent._copy) --------------------------------


def stored(changes, start=1):
    """The batch as the sender hands it over when every record is a version 2 change."""
    return LogBatch([(seq, 0, encode_change(c)) for seq, c in enumerate(changes, start)])


# Every kind of KINDS but bytea and arrays, which only the general path converts.
STORED_KINDS = [kind for kind in KINDS if kind["name"] not in ("tags", "nums", "raw")]


def stored_kind_rows(count):
    return [{k: v for k, v in row.items() if k not in ("tags", "nums", "raw")} for row in kind_rows(count)]


@pytest.mark.parametrize("meta", [False, True])
def test_stored_inserts_are_copied_undecoded_and_equal_what_the_general_path_writes(
    target_dsn, tmp_path, meta
):
    state = StateStore(tmp_path / "state")
    state.record_table_schema("app", "public.kinds", STORED_KINDS)
    count = 2 * STORED_CHUNK_ROWS + 7  # three chunks
    values = stored_kind_rows(count)
    changes = [
        change("insert" if i % 3 else "snapshot", {"id": r["id"]}, r, table="public.kinds")
        for i, r in enumerate(values)
    ]
    fast = destination(target_dsn, state, schema="via_stored", position_table="p1", meta_enabled=meta)
    general = destination(target_dsn, state, schema="via_general", position_table="p2", meta_enabled=meta)
    fast.write(stored(changes))
    general.write(deliveries(changes))
    assert fast.stats["stored_batches"] == 1 and general.stats["stored_batches"] == 0
    assert fast.stats["rows_copied"] == count == general.stats["rows_copied"]
    assert fast.position() == count
    columns = "id, amount, at, doc, ok, ratio, note, mood" + (
        ", __ds_op, __ds_is_deleted, __ds_watermark" if meta else ""
    )
    got = rows(target_dsn, f"SELECT ({columns})::text FROM via_stored.kinds ORDER BY id")
    assert got == rows(target_dsn, f"SELECT ({columns})::text FROM via_general.kinds ORDER BY id")
    assert len(got) == count
    assert rows(
        target_dsn,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'via_stored.kinds'::regclass AND attname = 'amount'",
    ) == [("numeric(10,2)",)]
    if meta:  # __ds_synced_at is now() of the batch's transaction, which wrote the position too
        synced = "SELECT bool_and(t.__ds_synced_at = p.updated_at) FROM via_stored.kinds t, public.p1 p"
        assert query(target_dsn, synced) == [(True,)]


def test_a_stored_batch_with_columns_only_the_general_path_converts_takes_it(target_dsn, tmp_path):
    state = StateStore(tmp_path / "state")
    state.record_table_schema("app", "public.kinds", KINDS)
    values = kind_rows(3 * COPY_MIN_ROWS)
    dest = destination(target_dsn, state)
    dest.write(stored([change("insert", {"id": r["id"]}, r, table="public.kinds") for r in values]))
    assert dest.stats["stored_batches"] == 0 and dest.stats["rows_copied"] == len(values)
    assert rows(target_dsn, "SELECT raw, nums FROM public.kinds WHERE id = 0") == [
        (b"\x00\x01\x02", [1, None, 3])
    ]


def test_a_stored_batch_that_stops_fitting_after_its_first_chunk_is_applied_by_the_general_path(target_dsn):
    dest = destination(target_dsn)
    dest.write(stored([change("insert", {"id": i}, {"id": i, "v": "first"}) for i in range(COPY_MIN_ROWS)]))
    assert dest.stats["stored_batches"] == 1
    n = STORED_CHUNK_ROWS + 5
    later = [change("insert", {"id": 100 + i}, {"id": 100 + i, "v": "new"}) for i in range(n)]
    later.append(change("update", {"id": 0}, {"id": 0, "v": "updated"}))
    later += [
        change("insert", {"id": 10_000 + i}, {"id": 10_000 + i, "v": "after"}) for i in range(COPY_MIN_ROWS)
    ]
    dest.write(stored(later, COPY_MIN_ROWS + 1))
    # The second batch went by plan(): one upsert step (it holds an update), and what the first
    # attempt copied was rolled back and is not counted.
    assert dest.stats["stored_batches"] == 1 and dest.stats["copy_fallbacks"] == 0
    assert dest.stats["rows_copied"] == COPY_MIN_ROWS
    assert dest.stats["rows_upserted"] == COPY_MIN_ROWS + len(later)
    assert dest.position() == COPY_MIN_ROWS + len(later)
    assert rows(target_dsn, "SELECT v, count(*) FROM public.orders GROUP BY v ORDER BY v") == [
        ("after", COPY_MIN_ROWS),
        ("first", COPY_MIN_ROWS - 1),
        ("new", n),
        ("updated", 1),
    ]


def test_a_stored_replay_of_keys_already_there_gets_the_upserts_answer(target_dsn):
    dest = destination(target_dsn)
    count = 3 * COPY_MIN_ROWS
    dest.write(stored([change("insert", {"id": i}, {"id": i, "v": "first"}) for i in range(count)]))
    replay = [change("insert", {"id": i}, {"id": i, "v": "again"}) for i in range(count + 1)]
    dest.write(stored(replay, count + 1))
    assert dest.stats["copy_fallbacks"] == 1 and dest.stats["stored_batches"] == 1
    assert rows(target_dsn, "SELECT count(*), min(v), max(v) FROM public.orders") == [
        (count + 1, "again", "again")
    ]
    assert dest.position() == 2 * count + 1


def test_records_already_applied_are_skipped_on_the_stored_path_too(target_dsn):
    dest = destination(target_dsn)
    first = [change("insert", {"id": i}, {"id": i, "v": "a"}) for i in range(COPY_MIN_ROWS)]
    dest.write(stored(first))
    # A resend that overlaps what the destination holds (a crash between its commit and the cursor's).
    more = first[-3:] + [
        change("insert", {"id": 100 + i}, {"id": 100 + i, "v": "b"}) for i in range(COPY_MIN_ROWS)
    ]
    dest.write(stored(more, COPY_MIN_ROWS - 2))
    assert dest.stats["records_skipped"] == 3 and dest.stats["stored_batches"] == 2
    assert dest.stats["copy_fallbacks"] == 0
    assert rows(target_dsn, "SELECT count(*) FROM public.orders") == [(2 * COPY_MIN_ROWS,)]
    assert dest.position() == 2 * COPY_MIN_ROWS


def test_a_new_table_whose_first_row_has_a_null_is_created_by_the_general_path(target_dsn):
    dest = destination(target_dsn)  # no stored schema: types come from the values
    rows_ = [{"id": i, "n": None if i == 0 else i} for i in range(COPY_MIN_ROWS)]
    dest.write(stored([change("insert", {"id": r["id"]}, r) for r in rows_]))
    assert dest.stats["stored_batches"] == 0  # its first value says nothing of the column's type
    assert rows(
        target_dsn,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.orders'::regclass"
        " AND attname = 'n'",
    ) == [("bigint",)]
    more = [change("insert", {"id": 100 + i}, {"id": 100 + i, "n": i}) for i in range(COPY_MIN_ROWS)]
    dest.write(stored(more, 100))
    assert dest.stats["stored_batches"] == 1
    assert rows(target_dsn, "SELECT count(*), sum(n) FROM public.orders") == [
        (2 * COPY_MIN_ROWS, sum(range(1, COPY_MIN_ROWS)) + sum(range(COPY_MIN_ROWS)))
    ]
