"""Backfill on demand (directly, and through a running agent) and a parallel initial snapshot."""

from __future__ import annotations

from collections import Counter

from typer.testing import CliRunner

from cli.main import app
from tests.agent_harness import agent_config, changes_of, execute, running_agent, source_config, wait_for

TABLES = (
    "CREATE TABLE orders (id int PRIMARY KEY, note text)",
    "CREATE TABLE customers (id bigint, region text, name text, PRIMARY KEY (region, id))",
    "CREATE TABLE events (payload text)",  # no primary key: read in one pass
    "INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 1200) g",
    "INSERT INTO customers SELECT g, CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, 'c' FROM generate_series(1, 700) g",
    "INSERT INTO events SELECT 'e' || g FROM generate_series(1, 300) g",
)


def _write_config(tmp_path, dsn: str, **source) -> str:
    lines = [
        f'data_dir = "{tmp_path / "data"}"',
        "[wal]",
        "min_free_bytes = 0",
        "[[sources]]",
        'name = "app"',
        'type = "postgres"',
        f'dsn = "{dsn}"',
        'slot = "wallaby_test"',
        'publication = "wallaby_test"',
        'publication_tables = ["public.orders", "public.customers", "public.events"]',
        "snapshot_chunk_rows = 250",
        "status_interval = 0.2",
    ] + [f"{key} = {value}" for key, value in source.items()]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _snapshot_keys(data_dir) -> Counter:
    return Counter(
        (c.table, tuple(sorted((c.key or c.after).items()))) for c in changes_of(data_dir, "snapshot")
    )


def test_backfill_without_a_running_agent_writes_the_rows_itself(pg_dsn, tmp_path):
    execute(pg_dsn, *TABLES)
    config = _write_config(tmp_path, pg_dsn)
    result = CliRunner().invoke(
        app, ["backfill", "--config", config, "--tables", "orders,public.customers,events"]
    )
    assert result.exit_code == 0, result.output
    assert "2200 rows from 3 table(s)" in result.output
    keys = _snapshot_keys(tmp_path / "data")
    assert len(keys) == 2200 and max(keys.values()) == 1
    customers = [c for c in changes_of(tmp_path / "data", "snapshot") if c.table == "public.customers"]
    assert customers[0].key == {"region": "north", "id": 2}  # primary-key order, composite key
    assert customers[0].after == {"id": 2, "region": "north", "name": "c"}


def test_backfill_through_the_running_agent(pg_dsn, tmp_path):
    execute(pg_dsn, *TABLES)
    config_path = _write_config(tmp_path, pg_dsn)
    from agent.config import load_config

    config = load_config(config_path, environ={})
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        result = CliRunner().invoke(app, ["backfill", "--config", config_path, "--tables", "public.orders"])
        assert result.exit_code == 0, result.output
        assert "queued for the running agent" in result.output and "done, 1200 rows" in result.output
        execute(pg_dsn, "UPDATE orders SET note = 'after' WHERE id = 1")
        wait_for(lambda: changes_of(config.data_dir, "update"), what="the stream to go on")
    assert len(_snapshot_keys(config.data_dir)) == 1200


def test_backfill_names_an_unknown_table_in_one_line(pg_dsn, tmp_path):
    execute(pg_dsn, *TABLES)
    config = _write_config(tmp_path, pg_dsn)
    result = CliRunner().invoke(app, ["backfill", "--config", config, "--tables", "public.nope"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0], result.output


def test_initial_snapshot_with_parallel_workers(pg_dsn, tmp_path):
    execute(pg_dsn, *TABLES)
    source = source_config(
        pg_dsn,
        publication_tables=["public.orders", "public.customers", "public.events"],
        snapshot="initial",
        snapshot_workers=3,
        snapshot_chunk_rows=100,
    )
    config = agent_config(str(tmp_path / "data"), source)
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (5000, 'late')")
        wait_for(lambda: changes_of(config.data_dir, "insert"), what="the stream after the snapshot")
    keys = _snapshot_keys(config.data_dir)
    assert len(keys) == 2200 and max(keys.values()) == 1
    ops = [c.op for c in changes_of(config.data_dir)]
    assert ops[-1] == "insert" and ops.count("snapshot") == 2200
