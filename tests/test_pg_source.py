"""The PostgreSQL source end to end, in-process, against the test server: streaming into the log,
the durability contract, restarts without doubles or gaps, idle slots, slot loss, snapshot, DDL
gating and TOAST."""

from __future__ import annotations

import logging

import psycopg
import pytest

from agent.ddl import decide
from agent.sources.postgres.lsn import format_lsn, parse_lsn
from agent.state import StateStore
from tests.agent_harness import (
    agent_config,
    changes_of,
    current_lsn,
    execute,
    query,
    running_agent,
    slot_confirmed_lsn,
    source_config,
    wait_for,
)

ORDERS = "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric(10,2), tags text[], doc jsonb)"


def _rows(data_dir, op=None):
    return [(c.op, c.key, c.after) for c in changes_of(data_dir, op)]


def test_changes_stream_into_the_log_and_the_slot_advances_only_past_durable_commits(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(
            pg_dsn,
            "INSERT INTO orders VALUES (1, 'one', 1.50, '{a,b}', '{\"k\": [1, 2]}')",
            "INSERT INTO orders VALUES (2, 'two', 2.00, NULL, NULL)",
            "UPDATE orders SET note = 'uno' WHERE id = 1",
            "DELETE FROM orders WHERE id = 2",
        )
        commit_end = current_lsn(pg_dsn)
        wait_for(lambda: len(changes_of(config.data_dir)) == 4, what="4 changes in the log")
        wait_for(
            lambda: (slot_confirmed_lsn(pg_dsn, "wallaby_test") or 0) >= commit_end, what="slot to advance"
        )
        # Nothing past what the log holds durably was confirmed.
        assert agent.log.durable_seq == agent.log.last_seq
    changes = changes_of(config.data_dir)
    assert [c.op for c in changes] == ["insert", "insert", "update", "delete"]
    first = changes[0]
    assert first.table == "public.orders" and first.source == "app"
    assert first.key == {"id": 1}
    assert first.after == {"id": 1, "note": "one", "amount": "1.50", "tags": ["a", "b"], "doc": {"k": [1, 2]}}
    assert first.commit_ts.endswith("Z") and parse_lsn(first.lsn) <= parse_lsn(first.commit_lsn)
    assert changes[2].after["note"] == "uno" and changes[2].key == {"id": 1}
    assert changes[3].before == {"id": 2} and changes[3].key == {"id": 2} and changes[3].after is None
    # Each transaction's changes are numbered from 0.
    assert [c.txn_index for c in changes] == [0, 0, 0, 0]


def test_a_restart_neither_doubles_nor_skips_a_transaction(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 50) g")
        wait_for(lambda: len(changes_of(config.data_dir)) == 50, what="first 50")
    # Written while the agent is down, and a multi-statement transaction across the restart.
    execute(pg_dsn, "INSERT INTO orders SELECT g, 'b' FROM generate_series(51, 80) g")
    with running_agent(config) as agent:
        execute(
            pg_dsn,
            "BEGIN; INSERT INTO orders VALUES (81, 'c'); UPDATE orders SET note = 'd' WHERE id < 5; COMMIT",
        )
        wait_for(lambda: len(changes_of(config.data_dir)) == 85, what="85 changes")
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming again")
    changes = changes_of(config.data_dir)
    inserted = [c.key["id"] for c in changes if c.op == "insert"]
    assert inserted == list(range(1, 82))
    assert len(changes) == 85
    last_txn = [c for c in changes if c.commit_lsn == changes[-1].commit_lsn]
    assert [c.txn_index for c in last_txn] == [0, 1, 2, 3, 4]


def test_connection_lost_inside_a_large_transaction_completes_it_without_doubles(pg_dsn, tmp_path):
    """The walsender is killed while a large transaction streams: PostgreSQL sends it again from
    its start, and the source skips the changes the log already holds and appends the rest."""
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    total = 60_000
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, f"INSERT INTO orders SELECT g, 'n' FROM generate_series(1, {total}) g")
        wait_for(lambda: agent.sources[0].status.changes_written > 2_000, what="part of the transaction")
        killed = query(
            pg_dsn,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'wallaby_test'",
        )
        assert killed == [(True,)]
        wait_for(lambda: agent.sources[0].status.reconnects >= 1, what="a reconnect")
        wait_for(lambda: agent.log.durable_seq >= total, timeout=60, what="the whole transaction")
        written_before_kill = agent.sources[0].status.changes_written
    changes = changes_of(config.data_dir)
    assert len(changes) == total
    assert [c.key["id"] for c in changes] == list(range(1, total + 1))
    assert [c.txn_index for c in changes] == list(range(total))
    assert written_before_kill == total  # each change appended once, across both sessions


def test_an_idle_flow_still_advances_the_slot(pg_dsn, pg_server, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "CREATE TABLE unpublished (x int)")
        for _ in range(3):
            execute(pg_dsn, "INSERT INTO unpublished SELECT generate_series(1, 1000)")
        target = current_lsn(pg_dsn)
        wait_for(
            lambda: (slot_confirmed_lsn(pg_dsn, "wallaby_test") or 0) >= target, what="idle slot to advance"
        )
        # Slot health as the source reports it: the lag behind the server's WAL, in bytes.
        health = wait_for(lambda: agent.sources[0].status.slot, what="slot health")
        assert health["slot"] == "wallaby_test" and health["wal_status"] in ("reserved", "extended")
        assert health["confirmed_lag_bytes"] >= 0 and health["restart_lag_bytes"] >= 0
    assert changes_of(config.data_dir) == []


def test_a_dropped_slot_stops_the_source_loudly_and_is_not_recreated(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
    execute(pg_dsn, "SELECT pg_drop_replication_slot('wallaby_test')")
    with running_agent(config) as agent:
        wait_for(lambda: agent.errors, what="the source to fail")
        error = str(agent.errors["app"])
    assert "no longer exists" in error and "source reset" in error
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wallaby_test'") == [
        (0,)
    ]


def test_start_lsn_before_the_slot_position_is_a_clear_error(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (1)")
        wait_for(lambda: changes_of(config.data_dir), what="a change")
    with running_agent(config, start_lsn="0/10") as agent:
        wait_for(lambda: agent.errors, what="the source to fail")
        assert "no longer holds it" in str(agent.errors["app"])


def test_initial_snapshot_then_stream_without_gap_or_double(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS, "INSERT INTO orders SELECT g, 'old' FROM generate_series(1, 2500) g")
    source = source_config(
        pg_dsn, publication_tables=["public.orders"], snapshot="initial", snapshot_chunk_rows=1000
    )
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(
            pg_dsn,
            "INSERT INTO orders VALUES (3000, 'new')",
            "UPDATE orders SET note = 'changed' WHERE id = 1",
        )
        wait_for(lambda: len(changes_of(config.data_dir)) == 2502, what="snapshot and stream")
    changes = changes_of(config.data_dir)
    snapshot = [c for c in changes if c.op == "snapshot"]
    assert sorted(c.key["id"] for c in snapshot) == list(range(1, 2501))
    assert all(c.after["note"] == "old" for c in snapshot)
    assert [c.op for c in changes[2500:]] == ["insert", "update"]
    state = StateStore(config.data_dir)
    try:
        progress = state.snapshot_progress("app")
    finally:
        state.close()
    assert progress["public.orders"][2:] == (2500, True)


@pytest.fixture(scope="session")
def metric_reader():
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from agent.metrics import configure_metrics

    reader = InMemoryMetricReader()
    configure_metrics([reader])
    return reader


def _counter(reader, name: str, **attributes) -> int:
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        if all(point.attributes.get(k) == v for k, v in attributes.items()):
                            total += point.value
    return total


def test_ddl_gate_pauses_the_flow_until_approved(pg_dsn, tmp_path, metric_reader, caplog):
    caplog.set_level(logging.INFO, logger="agent")
    gated_before = _counter(metric_reader, "wallaby.ddl.gated_total", source="app")
    execute(pg_dsn, ORDERS)
    source = source_config(pg_dsn, publication_tables=["public.orders"], capture_ddl=True, ddl={"gate": True})
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "ALTER TABLE orders ADD COLUMN extra int")
        wait_for(lambda: agent.sources[0].status.state == "paused", what="the flow to pause")
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'held back')")
        state = agent.state
        pending = state.ddl_events("pending")
        assert len(pending) == 1 and pending[0].command_tag == "ALTER TABLE"
        assert state.flow().reason == "ddl_pending"
        assert _counter(metric_reader, "wallaby.ddl.gated_total", source="app") == gated_before + 1
        gate_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ddl gate:")]
        assert len(gate_lines) == 1 and "ddl_pending" in gate_lines[0]
        assert [c.op for c in changes_of(config.data_dir)] == ["ddl"]
        ddl = changes_of(config.data_dir)[0]
        assert ddl.table == "public.orders" and "ADD COLUMN extra" in ddl.message["statement"]
        decide(state, pending[0].id, "approve")
        wait_for(lambda: len(changes_of(config.data_dir)) == 2, what="the held-back insert")
    assert [c.op for c in changes_of(config.data_dir)] == ["ddl", "insert"]


def test_the_agents_own_ddl_is_not_captured(pg_dsn, tmp_path):
    """Reinstalling the trigger and adding a table to the publication, at every start, are DDL too."""
    execute(pg_dsn, ORDERS, "CREATE TABLE more (id int PRIMARY KEY)")
    data_dir = str(tmp_path / "data")
    for run, tables in enumerate((["public.orders"], ["public.orders", "public.more"]), 1):
        source = source_config(pg_dsn, publication_tables=tables, capture_ddl=True)
        with running_agent(agent_config(data_dir, source)) as agent:
            wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("SET synchronous_commit = on")  # decoded at once: nothing before it is missed
                conn.execute("INSERT INTO orders (id) VALUES (%s)", (run,))
            wait_for(lambda run=run: len(changes_of(data_dir, "insert")) == run, what="the marker insert")
    assert [c.op for c in changes_of(data_dir)] == ["insert", "insert"]
    execute(pg_dsn, "ALTER TABLE more ADD COLUMN note text")  # an application's DDL still is
    source = source_config(pg_dsn, publication_tables=["public.orders", "public.more"], capture_ddl=True)
    with running_agent(agent_config(data_dir, source)) as agent:
        wait_for(lambda: changes_of(data_dir, "ddl"), what="the application's DDL")
    assert [c.op for c in changes_of(data_dir)] == ["insert", "insert", "ddl"]


@pytest.mark.parametrize("mode", ["none", "source", "full"])
def test_unchanged_toast_values_are_marked_or_fetched(pg_dsn, tmp_path, mode):
    execute(pg_dsn, "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    execute(pg_dsn, "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")  # TOASTed, uncompressed
    big = "x" * 100_000
    source = source_config(pg_dsn, publication_tables=["public.docs"], toast_fetch=mode)
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO docs VALUES (1, %s, 1)", (big,))
            conn.execute("UPDATE docs SET n = 2 WHERE id = 1")
        wait_for(lambda: len(changes_of(config.data_dir)) == 2, what="2 changes")
    update = changes_of(config.data_dir, "update")[0]
    assert update.after["n"] == 2
    if mode == "none":
        assert update.unchanged == ["body"] and "body" not in update.after
    else:
        assert update.unchanged == [] and update.after["body"] == big


def test_flushed_position_survives_in_state(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (1)")
        wait_for(lambda: changes_of(config.data_dir), what="a change")
    state = StateStore(config.data_dir)
    try:
        position = state.source_position("app")
    finally:
        state.close()
    assert position is not None and position.slot == "wallaby_test"
    assert parse_lsn(position.flushed_lsn) == slot_confirmed_lsn(pg_dsn, "wallaby_test")
    assert position.last_seq == 1
    assert format_lsn(parse_lsn(position.flushed_lsn)) == position.flushed_lsn


def test_a_slot_postgresql_invalidated_stops_the_source_with_that_reason(tmp_path):
    from tests.pg import PostgresServer

    server = PostgresServer({"max_slot_wal_keep_size": "1MB"})
    try:
        server.start()
        dsn = server.create_database("lost")
        execute(dsn, ORDERS, "CREATE TABLE filler (x text)")
        config = agent_config(
            str(tmp_path / "data"), source_config(dsn, publication_tables=["public.orders"])
        )
        with running_agent(config) as agent:
            wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        # With the agent away, push more WAL than the slot may keep, and let a checkpoint drop it.
        for _ in range(4):
            execute(dsn, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
            execute(dsn, "SELECT pg_switch_wal()", "CHECKPOINT")
        wait_for(
            lambda: (
                query(dsn, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'wallaby_test'")
                == [("lost",)]
            ),
            what="PostgreSQL to invalidate the slot",
        )
        with running_agent(config) as agent:
            wait_for(lambda: agent.errors, what="the source to fail")
            error = str(agent.errors["app"])
        assert "invalidated" in error and "wal_status = lost" in error
    finally:
        server.cleanup()


def test_publication_by_schema_is_created_and_missing_tables_are_added(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS, "CREATE SCHEMA sales", "CREATE TABLE sales.invoices (id int PRIMARY KEY)")
    source = source_config(pg_dsn, publication_schemas=["sales"])
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO sales.invoices VALUES (7)", "INSERT INTO orders VALUES (1)")
        wait_for(lambda: changes_of(config.data_dir), what="a change")
    assert [(c.table, c.key) for c in changes_of(config.data_dir)] == [("sales.invoices", {"id": 7})]
    # The same publication, now also asked for public.orders: the table is added, nothing else changes.
    source = source_config(pg_dsn, publication_schemas=["sales"], publication_tables=["public.orders"])
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (2)")
        wait_for(lambda: len(changes_of(config.data_dir)) == 2, what="the orders insert")
    assert changes_of(config.data_dir)[-1].table == "public.orders"
    published = query(pg_dsn, "SELECT schemaname || '.' || tablename FROM pg_publication_tables ORDER BY 1")
    assert published == [("public.orders",), ("sales.invoices",)]


def test_a_server_without_logical_wal_is_refused_with_what_to_change(tmp_path):
    from tests.pg import PostgresServer

    server = PostgresServer({"wal_level": "replica"})
    try:
        server.start()
        dsn = server.create_database("plain")
        execute(dsn, ORDERS)
        config = agent_config(
            str(tmp_path / "data"), source_config(dsn, publication_tables=["public.orders"])
        )
        with running_agent(config) as agent:
            wait_for(lambda: agent.errors, what="the source to fail")
            error = str(agent.errors["app"])
        assert "wal_level is 'replica'" in error and "wal_level = logical" in error and "restart" in error
    finally:
        server.cleanup()


def test_start_lsn_streams_from_that_position_where_the_slot_holds_it(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=["public.orders"]))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
    # With the agent away: transaction A, then B; start at the position between them.
    execute(pg_dsn, "INSERT INTO orders VALUES (1, 'A')")
    between = parse_lsn(query(pg_dsn, "SELECT pg_current_wal_insert_lsn()::text")[0][0])
    execute(pg_dsn, "INSERT INTO orders VALUES (2, 'B')")
    with running_agent(config, start_lsn=format_lsn(between)) as agent:
        wait_for(lambda: changes_of(config.data_dir), what="a change")
        wait_for(lambda: agent.log.durable_seq == agent.log.last_seq, what="durability")
    assert [c.key["id"] for c in changes_of(config.data_dir)] == [2]
