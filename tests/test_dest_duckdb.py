"""The duckdb destination on real DuckDB files: the postgres destination's semantics, the type mapping,
exactly-once positions, error classification, speed, and a capture from a real source certified equal."""

from __future__ import annotations

import duckdb
import psycopg
import pytest

from agent.certify import certify_table
from agent.change import Change
from agent.config_destinations import DuckDbDestinationConfig
from agent.delivery import Delivery, idempotency_key
from agent.destinations.base import PermanentError, RetryableError, TransactionalDestination
from agent.destinations.duckdb import DuckDbDestination, duckdb_type
from agent.errors import ConfigError
from agent.sources.postgres.catalog import describe_table
from agent.state import StateStore
from tests.agent_harness import agent_config, execute, logged_changes, running_agent, source_config, wait_for


def change(op, key=None, after=None, before=None, table="public.orders", **fields):
    return Change(table=table, op=op, source="app", key=key, after=after, before=before, lsn="0/1", **fields)


def deliveries(changes, start=1):
    return [Delivery(seq, c, idempotency_key(c, seq)) for seq, c in enumerate(changes, start)]


def destination(path, state=None, **options):
    dest = DuckDbDestination(DuckDbDestinationConfig(name="dk", type="duckdb", path=path, **options), state)
    dest.open()
    return dest


def read(dest, sql):
    return dest._conn.execute(sql).fetchall()


def test_target_mode_upserts_deletes_moves_keys_and_truncates(tmp_path):
    dest = destination(tmp_path / "out" / "copy.duckdb")
    assert isinstance(dest, TransactionalDestination)
    dest.write(
        deliveries(
            [
                change("insert", {"id": 1}, {"id": 1, "note": "one"}),
                change("insert", {"id": 2}, {"id": 2, "note": "two"}),
                change("snapshot", {"id": 3}, {"id": 3, "note": "three"}),
                change("update", {"id": 1}, {"id": 1, "note": "uno"}),
                change("update", {"id": 20}, {"id": 20, "note": "moved"}, before={"id": 2}),
                change("delete", {"id": 3}, before={"id": 3}),
                change("insert", {"id": 3}, {"id": 3, "note": "back"}),
                change("message", table="", message={"prefix": "p", "content": "c"}),
            ]
        )
    )
    assert read(dest, "SELECT id, note FROM public.orders ORDER BY id") == [
        (1, "uno"),
        (3, "back"),
        (20, "moved"),
    ]
    assert dest.position() == 8 and dest.stats["messages_ignored"] == 1
    dest.write(deliveries([change("truncate", message={"cascade": False})], 9))
    assert read(dest, "SELECT count(*) FROM public.orders") == [(0,)]
    dest.close()
    # The position survives a reopen.
    assert destination(tmp_path / "out" / "copy.duckdb").position() == 9


def test_types_are_mapped_from_the_stored_schema_and_values_round_trip(tmp_path):
    state = StateStore(tmp_path / "state")
    state.record_table_schema(
        "app",
        "public.orders",
        [
            {"name": "id", "type": "integer", "key": True},
            {"name": "amount", "type": "numeric(10,2)", "key": False},
            {"name": "big", "type": "numeric", "key": False},
            {"name": "tags", "type": "text[]", "key": False},
            {"name": "doc", "type": "jsonb", "key": False},
            {"name": "raw", "type": "bytea", "key": False},
            {"name": "at", "type": "timestamp with time zone", "key": False},
            {"name": "local", "type": "timestamp(3) without time zone", "key": False},
            {"name": "day", "type": "date", "key": False},
            {"name": "ref", "type": "uuid", "key": False},
            {"name": "price", "type": "double precision", "key": False},
            {"name": "small", "type": "smallint", "key": False},
            {"name": "ok", "type": "boolean", "key": False},
            {"name": "span", "type": "interval", "key": False},
            {"name": "custom", "type": "character varying(8)", "key": False},
        ],
    )
    dest = destination(tmp_path / "copy.duckdb", state, type_mappings={"character varying": "VARCHAR(8)"})
    after = {
        "id": 1,
        "amount": "12.50",
        "big": "123456789012345678901234567890123456789.5",
        "tags": ["a", None, 'q"uote'],
        "doc": {"k": [1, "x"]},
        "raw": "AAEC/w==",
        "at": "2024-01-02T03:04:05.250000Z",
        "local": "2024-01-01T10:00:00.500000",
        "day": "2024-02-29",
        "ref": "6f1c2a34-8b2e-4c1a-9d3e-0a1b2c3d4e5f",
        "price": "NaN",
        "small": 7,
        "ok": True,
        "span": "P1Y2M3DT4H",
    }
    dest.write(deliveries([change("insert", {"id": 1}, after)]))
    types = dict(
        read(dest, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'orders'")
    )
    assert types == {
        "id": "INTEGER",
        "amount": "DECIMAL(10,2)",
        "big": "VARCHAR",
        "tags": "VARCHAR",
        "doc": "JSON",
        "raw": "BLOB",
        "at": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "day": "DATE",
        "ref": "UUID",
        "price": "DOUBLE",
        "small": "SMALLINT",
        "ok": "BOOLEAN",
        "span": "VARCHAR",
        "custom": "VARCHAR",
    }
    dest._conn.execute("SET TimeZone = 'UTC'")
    (row,) = read(
        dest,
        'SELECT CAST(amount AS VARCHAR), big, tags, CAST(doc AS VARCHAR), raw, CAST("at" AS VARCHAR),'
        ' CAST("local" AS VARCHAR), CAST(day AS VARCHAR), CAST(ref AS VARCHAR), isnan(price), small, ok, span, custom'
        " FROM public.orders",
    )
    assert row == (
        "12.50",
        after["big"],
        '["a",null,"q\\"uote"]',
        '{"k":[1,"x"]}',
        b"\x00\x01\x02\xff",
        "2024-01-02 03:04:05.25+00",
        "2024-01-01 10:00:00.5",
        "2024-02-29",
        after["ref"],
        True,
        7,
        True,
        "P1Y2M3DT4H",
        None,
    )


def test_duckdb_type_mapping():
    assert duckdb_type("numeric(38,4)") == "DECIMAL(38,4)"
    assert duckdb_type("numeric(39,4)") == "VARCHAR"
    assert duckdb_type("numeric(5)") == "DECIMAL(5,0)"
    assert duckdb_type("integer[]") == "VARCHAR"
    assert duckdb_type("time with time zone") == "TIMETZ"
    assert duckdb_type("public.mood") == "VARCHAR"


def test_meta_columns_soft_delete_and_toast(tmp_path):
    dest = destination(tmp_path / "copy.duckdb", meta_enabled=True, soft_delete=True)
    dest.write(
        deliveries(
            [
                change("insert", {"id": 1}, {"id": 1, "big": "x" * 3000, "n": 1}),
                change("update", {"id": 1}, {"id": 1, "n": 2}, unchanged=["big"]),
                change("update", {"id": 2}, {"id": 2, "n": 3}, unchanged=["big"]),
                change("delete", {"id": 2}, before={"id": 2}),
            ]
        )
    )
    got = read(
        dest,
        "SELECT id, length(big), n, __ds_is_deleted, __ds_op, __ds_watermark, __ds_synced_at IS NOT NULL"
        " FROM public.orders ORDER BY id",
    )
    assert got == [(1, 3000, 2, False, "update", 2, True), (2, None, 3, True, "delete", 4, True)]
    with pytest.raises(ConfigError, match="needs meta_enabled"):
        DuckDbDestination(
            DuckDbDestinationConfig(name="x", type="duckdb", path=tmp_path / "x", soft_delete=True), None
        )


def test_exactly_once_in_append_mode(tmp_path):
    dest = destination(tmp_path / "copy.duckdb", write_mode="append")
    batch = deliveries([change("insert", {"id": i}, {"id": i, "v": i}) for i in range(1, 4)])
    dest.write(batch)
    dest.write(batch)  # re-sent on purpose: below the position, skipped
    dest.write([d for d in batch if d.seq > dest.position()])  # the sender's rule: nothing left
    dest.write(deliveries([change("delete", {"id": 1}, before={"id": 1})], 4))
    assert read(
        dest, "SELECT id, __ds_op, __ds_is_deleted, __ds_watermark FROM public.orders ORDER BY 4"
    ) == [
        (1, "insert", False, 1),
        (2, "insert", False, 2),
        (3, "insert", False, 3),
        (1, "delete", True, 4),
    ]
    assert dest.position() == 4


def test_errors_are_classified_and_a_failed_batch_changes_nothing(tmp_path):
    path = tmp_path / "copy.duckdb"
    dest = destination(path, create_tables=False)
    with pytest.raises(PermanentError, match="does not exist and create_tables = false"):
        dest.write(deliveries([change("insert", {"id": 1}, {"id": 1})]))
    dest._conn.execute(
        "CREATE SCHEMA public; CREATE TABLE public.orders (id BIGINT PRIMARY KEY, v VARCHAR NOT NULL)"
    )
    with pytest.raises(PermanentError, match="NOT NULL") as failure:
        dest.write(
            deliveries(
                [
                    change("insert", {"id": 1}, {"id": 1, "v": "a"}),
                    change("insert", {"id": 2}, {"id": 2, "v": None}),
                ]
            )
        )
    assert "\n" not in str(failure.value)
    assert dest.position() == 0 and read(dest, "SELECT count(*) FROM public.orders") == [(0,)]
    with pytest.raises(PermanentError, match="Conversion Error"):
        dest.write(deliveries([change("insert", {"id": "x"}, {"id": "x", "v": "a"})]))
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1, "v": "a"})]))
    assert dest.position() == 1
    # Another process holding the file: retryable.
    holder = duckdb.connect(str(tmp_path / "held.duckdb"))
    try:
        import subprocess
        import sys

        code = (
            "import sys; from agent.config_destinations import DuckDbDestinationConfig as C;"
            "from agent.destinations.duckdb import DuckDbDestination as D; from agent.destinations.base import RetryableError;"
            f"d = D(C(name='x', type='duckdb', path={str(tmp_path / 'held.duckdb')!r}), None)\n"
            "try: d.open()\nexcept RetryableError as e: print('retryable', e); sys.exit(0)\nsys.exit(1)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "lock" in result.stdout
    finally:
        holder.close()
    assert issubclass(RetryableError, Exception)


def test_ddl_adds_columns_from_the_stored_schema(tmp_path):
    state = StateStore(tmp_path / "state")
    state.record_table_schema("app", "public.orders", [{"name": "id", "type": "bigint", "key": True}])
    dest = destination(tmp_path / "copy.duckdb", state)
    dest.write(deliveries([change("insert", {"id": 1}, {"id": 1})]))
    state.record_table_schema(
        "app",
        "public.orders",
        [
            {"name": "id", "type": "bigint", "key": True},
            {"name": "amount", "type": "numeric(8,2)", "key": False},
        ],
    )
    ddl = change(
        "ddl",
        table="public.orders",
        message={"statement": "ALTER TABLE orders ADD amount numeric(8,2)", "command_tag": "ALTER TABLE"},
    )
    dest.write(deliveries([ddl, change("insert", {"id": 2}, {"id": 2, "amount": "1.25"})], 2))
    assert read(dest, "SELECT id, CAST(amount AS VARCHAR) FROM public.orders ORDER BY id") == [
        (1, None),
        (2, "1.25"),
    ]
    assert (
        dict(read(dest, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'orders'"))[
            "amount"
        ]
        == "DECIMAL(8,2)"
    )
    assert dest.stats["ddl_applied"] == 1


def test_changes_captured_from_a_real_source_apply_to_an_equal_copy(pg_dsn, tmp_path):
    execute(
        pg_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric(12,3), price float8, ratio real,"
        " tags text[], doc jsonb, raw bytea, at timestamptz, day date, local timestamp, span interval, ok boolean,"
        " ref uuid, clock timetz)",
    )
    state = StateStore(tmp_path / "state")
    with psycopg.connect(pg_dsn) as conn:
        state.record_table_schema("app", "public.orders", describe_table(conn, "public", "orders"))
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(
            pg_dsn,
            "INSERT INTO orders SELECT g, 'n' || g, g * 1.125, g / 3.0, g / 7.0, ARRAY['a', NULL], "
            " jsonb_build_object('g', g), '\\x00ff', '2024-01-02 03:04:05.25+02'::timestamptz + g * interval '1 s',"
            " '2024-02-29', '2024-01-01 10:00:00.5', 'P1Y2M3DT4H', g % 2 = 0, gen_random_uuid(), '03:04:05.25+05:30'"
            " FROM generate_series(1, 200) g",
            "UPDATE orders SET note = 'changed', price = 'Infinity' WHERE id <= 10",
            "UPDATE orders SET id = id + 1000 WHERE id BETWEEN 11 AND 20",
            "DELETE FROM orders WHERE id BETWEEN 21 AND 40",
        )
        wait_for(lambda: len(logged_changes(config.data_dir)) == 240, what="240 changes")
    dest = destination(tmp_path / "copy.duckdb", state)
    dest.write([Delivery(s, c, idempotency_key(c, s)) for s, c in logged_changes(config.data_dir)])
    dest.close()
    result = certify_table(pg_dsn, str(tmp_path / "copy.duckdb"), "public.orders", dest_kind="duckdb")
    assert result.equal, result
    assert result.source_rows == result.dest_rows == 180


def test_a_10000_row_insert_batch_applies_whole(tmp_path):
    dest = destination(tmp_path / "copy.duckdb", meta_enabled=True)
    batch = deliveries(
        [
            change(
                "insert",
                {"id": i},
                {"id": i, "note": f"note {i}", "amount": "12.50", "at": "2024-01-02T03:04:05Z"},
            )
            for i in range(10_000)
        ]
    )
    dest.write(batch[:1])
    dest.write(batch[1:])
    assert read(dest, "SELECT count(*) FROM public.orders") == [(10_000,)]
