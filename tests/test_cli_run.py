"""`wallaby-agent run --config FILE` as a real process: a signal stops it cleanly with its final
position reported to PostgreSQL, its log lines are JSON on a pipe, a bad configuration or option
is one line and exit code 2 before anything starts, a dropped slot stops it loudly until
`source reset`, and the `flow` and `ddl` commands act on it while it runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from agent.sources.postgres.lsn import format_lsn, parse_lsn
from tests.agent_harness import changes_of, current_lsn, execute, query, slot_confirmed_lsn, wait_for
from tests.agent_process import AgentProcess, postgres_source, run_cli, wait_until_caught_up, write_config

ORDERS = "CREATE TABLE orders (id int PRIMARY KEY, note text)"
SLOT = "wallaby_cli_slot"
STOP_LIMIT_S = 10.0  # a clean stop waits for durability and one status update, not for a timeout
PAUSED_WINDOW_S = 2.0  # four times the paused source's poll: long enough for a leak to show
WAL_SEGMENT_BYTES = 16 * 1024 * 1024  # PostgreSQL's default


def _config(tmp_path: Path, dsn: str, **source: object) -> Path:
    table = postgres_source(dsn, slot=SLOT, publication_tables=["public.orders"], **source)
    return write_config(tmp_path / "agent.toml", tmp_path / "data", table)


def _commit_end_lsn(dsn: str, commit_lsn: str) -> int:
    """Where the commit record starting at `commit_lsn` ends: what pgoutput reports as its end."""
    execute(dsn, "CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    (row,) = query(dsn, "SELECT end_lsn::text FROM pg_get_wal_record_info(%s)", (commit_lsn,))
    return parse_lsn(row[0])


def _run_committed(dsn: str, *statements: str) -> None:
    """One transaction, committed with synchronous_commit on so its WAL is written at once."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = on")
        for statement in statements:
            conn.execute(statement)


def _assert_one_error_line(stderr: str, *expected: str) -> str:
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for text in expected:
        assert text in error_lines[0], error_lines[0]
    return error_lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_agent_cleanly_and_confirms_the_last_commit(pg_dsn, tmp_path, signum):
    execute(pg_dsn, ORDERS)
    # No status updates while running: only the one sent at the stop can move the slot.
    config = _config(tmp_path, pg_dsn, status_interval=600, heartbeat_interval=600)
    data_dir = tmp_path / "data"
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        _run_committed(pg_dsn, "INSERT INTO orders VALUES (1, 'a')")
        _run_committed(
            pg_dsn, "INSERT INTO orders VALUES (2, 'b')", "UPDATE orders SET note = 'c' WHERE id = 1"
        )
        wait_for(lambda: len(changes_of(data_dir)) == 3, what="3 changes in the log")
        last_commit = changes_of(data_dir)[-1].commit_lsn
        assert last_commit is not None
        commit_end = _commit_end_lsn(pg_dsn, last_commit)
        assert (slot_confirmed_lsn(pg_dsn, SLOT) or 0) < commit_end, "confirmed before the stop"
        code, elapsed = agent.stop(signum)
    assert code == 0, agent.output()
    assert elapsed < STOP_LIMIT_S, f"the stop took {elapsed:.1f} s"
    assert agent.find_events("agent.stopping")[0]["signal"] == signum.name
    (stopped,) = agent.find_events("source.stopped")
    assert stopped["flushed_lsn"] == format_lsn(commit_end)
    assert slot_confirmed_lsn(pg_dsn, SLOT) == commit_end
    assert [event["event"] for event in agent.events][-1] == "agent.stopped"


def test_log_lines_on_a_pipe_are_json(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    with AgentProcess(_config(tmp_path, pg_dsn)) as agent:
        agent.wait_for_event("source.streaming")
        code, _elapsed = agent.stop()
    assert code == 0, agent.output()
    assert agent.stdout_lines == []
    assert len(agent.stderr_lines) >= 4  # wal.opened, agent.started, ..., agent.stopped
    for line in agent.stderr_lines:
        event = orjson.loads(line)
        assert isinstance(event, dict) and event.get("event"), line
        assert {"timestamp", "level", "logger"} <= set(event), line


BAD_CONFIGS = {
    "bad TOML": ('[wal]\nfsync = "always"\nsegment_bytes = \n', ["line 4", "invalid TOML"]),
    "unknown option": ('[wal]\nfsnyc = "always"\n', ["wal.fsnyc", "unknown option"]),
    "bad value": (None, ["sources[0].snapshot_chunk_rows"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_an_invalid_config_is_one_line_and_exit_2_before_anything_starts(tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    data_dir = tmp_path / "data"
    config = tmp_path / "agent.toml"
    if text is None:
        source = postgres_source("postgresql://127.0.0.1:1/none", snapshot_chunk_rows=0)
        write_config(config, data_dir, source)
    else:
        config.write_text(f'data_dir = "{data_dir}"\n{text}')
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr
    _assert_one_error_line(result.stderr, str(config), *expected)
    assert not data_dir.exists()


def test_a_bad_start_lsn_is_one_line_and_exit_2(pg_dsn, tmp_path):
    config = _config(tmp_path, pg_dsn)
    result = run_cli("run", "--config", str(config), "--start-lsn", "garbage")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr
    _assert_one_error_line(result.stderr, "--start-lsn", "garbage")
    assert not (tmp_path / "data").exists()


def _drop_slot(dsn: str) -> bool:
    try:
        execute(dsn, f"SELECT pg_drop_replication_slot('{SLOT}')")
    except psycopg.errors.ObjectInUse:  # the killed walsender has not let go of it yet
        return False
    return True


def test_a_dropped_slot_stops_the_agent_until_the_source_is_reset(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = _config(tmp_path, pg_dsn)
    data_dir = tmp_path / "data"
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'before')")
        wait_for(lambda: changes_of(data_dir), what="the first change")
        assert agent.stop()[0] == 0, agent.output()
    wait_for(lambda: _drop_slot(pg_dsn), what="the slot to be dropped")

    with AgentProcess(config) as agent:
        code = agent.wait()
    stderr = "".join(agent.stderr_lines)
    assert code == 1, stderr
    error = _assert_one_error_line(stderr, f"'{SLOT}'", "source reset app")
    assert agent.stderr_lines[-1].rstrip("\n") == error
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)) == [(0,)]

    reset = run_cli("source", "reset", "app", "--config", str(config))
    assert reset.returncode == 0, reset.stderr
    assert "saved position removed" in reset.stdout

    with AgentProcess(config) as agent:
        agent.wait_for_event("source.slot.created")
        agent.wait_for_event("source.streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (2, 'after')")
        wait_for(lambda: len(changes_of(data_dir)) == 2, what="the change after the reset")
        assert agent.stop()[0] == 0, agent.output()
    assert [c.key for c in changes_of(data_dir)] == [{"id": 1}, {"id": 2}]


def _cli_ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def test_flow_and_ddl_commands_act_on_the_running_agent(pg_dsn, tmp_path):
    execute(pg_dsn, ORDERS)
    config = _config(tmp_path, pg_dsn, capture_ddl=True)
    path = str(config)
    data_dir = tmp_path / "data"
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        execute(pg_dsn, "ALTER TABLE orders ADD COLUMN extra int", "INSERT INTO orders VALUES (1, 'a', 1)")
        wait_for(lambda: len(changes_of(data_dir)) == 2, what="the DDL and the insert")
        listed = _cli_ok("ddl", "list", "--config", path)
        assert "applied" in listed and "ALTER TABLE orders ADD COLUMN extra int" in listed
        assert _cli_ok("flow", "show", "--config", path).strip() == "flow running"

        assert _cli_ok("flow", "pause", "--config", path).strip() == "flow paused (operator)"
        assert agent.wait_for_event("source.paused")["reason"] == "operator"
        execute(pg_dsn, "INSERT INTO orders VALUES (2, 'held back', 2)")
        deadline = time.monotonic() + PAUSED_WINDOW_S
        while time.monotonic() < deadline:
            assert len(changes_of(data_dir)) == 2, "the log grew while the flow was paused"
            time.sleep(0.1)
        assert _cli_ok("flow", "show", "--config", path).strip() == "flow paused (operator)"

        assert _cli_ok("flow", "resume", "--config", path).strip() == "flow running"
        agent.wait_for_event("source.resumed")
        wait_for(lambda: len(changes_of(data_dir)) == 3, what="the held-back insert")
        assert agent.stop()[0] == 0, agent.output()
    assert [c.op for c in changes_of(data_dir)] == ["ddl", "insert", "insert"]


def test_a_reset_source_captures_a_new_server_whose_wal_is_behind_the_old_one(
    pg_dsn, pg_private_server, tmp_path
):
    new_dsn = pg_private_server.create_database("moved")
    for dsn in (pg_dsn, new_dsn):
        execute(dsn, ORDERS)
    # The old server's WAL well ahead of the new one's: each switch moves it to the next 16 MiB
    # file, if anything was written since the last one.
    execute(pg_dsn, "CREATE TABLE filler (n int)")
    for _ in range(100):
        if current_lsn(pg_dsn) > current_lsn(new_dsn) + 2 * WAL_SEGMENT_BYTES:
            break
        execute(pg_dsn, "INSERT INTO filler VALUES (1)", "SELECT pg_switch_wal()")
    else:
        pytest.fail("the old server's WAL did not get ahead")
    data_dir = tmp_path / "data"
    config = _config(tmp_path, pg_dsn)
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'old server')")
        wait_for(lambda: changes_of(data_dir), what="the change on the old server")
        assert agent.stop()[0] == 0, agent.output()

    config = _config(tmp_path, new_dsn)
    reset = run_cli("source", "reset", "app", "--config", str(config))
    assert reset.returncode == 0, reset.stderr
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        execute(new_dsn, "INSERT INTO orders VALUES (2, 'new server')")
        wait_until_caught_up(new_dsn, SLOT)
        assert agent.stop()[0] == 0, agent.output()
    assert [c.key for c in changes_of(data_dir)] == [{"id": 1}, {"id": 2}]
