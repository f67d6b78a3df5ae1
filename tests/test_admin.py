"""The admin API, the metrics and `wallaby-agent status`, against a real agent.

Each test builds an agent with `build_agent` (no sources; an http destination pointing at a real
FaultReceiver, or a file destination), appends change records to its log, starts its senders and
an AdminServer on a free port, and asks over real HTTP.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import orjson
import pytest
import typer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from agent import telemetry as telemetry_module
from agent.admin import AdminServer
from agent.change import Change, encode_change
from agent.config import AgentConfig
from agent.delivery import idempotency_key
from agent.errors import AgentError
from agent.metrics import INSTRUMENTS
from agent.runtime import Agent, build_agent
from agent.sources.postgres.lsn import parse_lsn
from agent.sources.postgres.slot import SlotInfo, describe_lag
from agent.telemetry import Telemetry, install_telemetry
from cli.status import status_command
from tests.fault_receiver import FaultReceiver
from wal.status import read_status

WAIT_S = 60.0
TOKEN_ENV = "ADMIN_TOKEN_FOR_TEST"  # not WALLABY_*: load_config would take it for an option
FAST_RETRY = {"initial_delay": 0.05, "multiplier": 2.0, "max_delay": 0.3, "jitter": 0.5}


def _reset_metrics_globals() -> None:
    """Let this module's provider be the global one whatever ran before, and leave none behind.

    OpenTelemetry sets the global meter provider once per process; another test module (the
    PostgreSQL source's) installs its own in-memory reader, and each must see its own counters.
    """
    from opentelemetry.metrics import _internal as otel_metrics
    from opentelemetry.util._once import Once

    if telemetry_module._SHARED is not None:
        telemetry_module._SHARED.provider.shutdown()
    telemetry_module._SHARED = None
    otel_metrics._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics._METER_PROVIDER = None


@pytest.fixture(scope="module", autouse=True)
def _own_metrics_provider() -> Iterator[None]:
    _reset_metrics_globals()
    yield
    _reset_metrics_globals()


def change(i: int) -> Change:
    return Change(
        table="public.orders",
        op="insert",
        source="app",
        key={"id": i},
        after={"id": i, "note": f"row {i}"},
        lsn=f"0/{0x1000 + i:X}",
        commit_lsn=f"0/{0x1000 + i:X}",
        xid=700 + i,
        commit_ts="2026-11-23T10:00:00.000000Z",
    )


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def http_destination(receiver: FaultReceiver, **extra: object) -> dict[str, object]:
    return {"name": "hook", "type": "http", "url": receiver.url, "timeout": 0.5, "retry": FAST_RETRY, **extra}


@dataclass
class Running:
    agent: Agent
    telemetry: Telemetry
    server: AdminServer
    client: httpx.Client

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.get(path, **kwargs)  # type: ignore[arg-type]

    def json(self, path: str, status: int = 200) -> dict:
        response = self.get(path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@contextmanager
def running_agent(
    tmp_path,
    destinations: list[dict],
    *,
    sources: list[dict] | None = None,
    token: str | None = None,
    start: bool = True,
) -> Iterator[Running]:
    config = AgentConfig(
        data_dir=tmp_path / "data",
        destinations=destinations,
        sources=sources or [],
        admin_listen="127.0.0.1:0",
        wal={"segment_bytes": 1024},
    )
    agent = build_agent(config)
    telemetry = server = None
    try:
        telemetry = install_telemetry(agent)
        # The runtime passes this hook to wal.open; build_agent opened the log without one.
        agent.log._on_sync = telemetry.on_sync
        if start:
            agent.start()
        server = AdminServer(agent, telemetry, listen="127.0.0.1:0", token=token)
        server.start()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
            yield Running(agent, telemetry, server, client)
    finally:
        if server is not None:
            server.stop()
        if start:
            agent.stop()
            agent.wait()
        if telemetry is not None:
            telemetry.close()
        agent.close()


def test_a_delivering_agent_health_metrics_status_and_records(tmp_path):
    with FaultReceiver() as receiver, running_agent(tmp_path, [http_destination(receiver)]) as run:
        agent = run.agent
        wait_until(lambda: agent.senders[0].stats.state == "running", "the sender to start")
        before = run.metrics()
        syncs_before = agent.log.stats().syncs
        seqs = [agent.log.append(encode_change(change(i))) for i in range(1, 21)]
        wait_until(lambda: agent.senders[0].cursor.position == seqs[-1], "the cursor to pass every record")
        syncs = agent.log.stats().syncs - syncs_before
        # Every sealed segment is archived once the cursor passed it (in the background).
        wait_until(lambda: read_status(agent.log.root).live_segments == 1, "sealed segments to be archived")
        run.telemetry.archive_cache_s = 0
        INSTRUMENTS.ddl_gated("app")

        health = run.json("/health")
        assert health["status"] == "ok" and "reasons" not in health
        assert health["destinations"] == {"hook": "running"} and health["durable_seq"] == 20

        m = run.metrics()
        assert m[("wal_appends_total", ())] == 20
        assert m[("sender_records_sent_total", (("destination", "hook"),))] == 20
        assert m[("wal_pending_events", (("destination", "hook"),))] == 0
        assert m[("wal_retries_total", (("destination", "hook"),))] == 0
        assert m[("wal_failures_total", (("destination", "hook"),))] == 0
        assert m[("wal_corruptions_total", ())] == 0
        disk = read_status(agent.log.root)
        assert disk.archive_bytes > 0 and m[("wal_archive_size_bytes", ())] == disk.archive_bytes
        gated = ("wallaby_ddl_gated_total", (("source", "app"),))
        assert m[gated] == before.get(gated, 0) + 1
        for histogram in ("wal_fsync_duration_milliseconds", "wal_append_duration_milliseconds"):
            count = (f"{histogram}_count", ())
            assert syncs >= 20 and m[count] - before.get(count, 0) == syncs
            assert m[(f"{histogram}_bucket", (("le", "+Inf"),))] == m[count]
            assert m[(f"{histogram}_bucket", (("le", "0.1"),))] <= m[count]

        status = run.json("/status")
        assert status["running"] is True and status["flow"] == {"state": "running", "reason": None}
        assert status["log"]["last_seq"] == 20 and status["log"]["durable_seq"] == 20
        assert status["log"]["live_segments"] == 1 and status["log"]["archives"] == disk.archives >= 2
        assert status["log"]["archive_bytes"] == disk.archive_bytes and status["log"]["compression_ratio"] > 0
        [dest] = status["destinations"]
        assert dest == {
            "name": "hook",
            "cursor": 20,
            "pending": 0,
            "state": "running",
            "delivered": 20,
            "retries": 0,
            "dead_letters": 0,
            "last_error": None,
        }

        record = run.json("/records/5")
        assert record["seq"] == 5 and record["change"]["after"] == {"id": 5, "note": "row 5"}
        assert record["destinations"] == {"hook": {"cursor": 20, "status": "delivered"}}
        archives = sorted(os.listdir(os.path.join(agent.log.root, "archive")))
        holding = max(name for name in archives if int(name.split(".")[0]) <= 5)
        assert record["location"] == {
            "path": os.path.join(agent.log.root, "archive", holding),
            "offset": record["location"]["offset"],
            "archived": True,
        }
        # After the header, and after the records before it in that segment.
        assert (record["location"]["offset"] > 16) == (int(holding.split(".")[0]) < 5)
        last = run.json("/records/20")["location"]
        assert last["archived"] is False and os.path.dirname(last["path"]) == os.path.join(
            agent.log.root, "wal"
        )

        assert run.json("/records/21", 404)["error"].startswith("record 21 is not in the log")
        assert "positive integer" in run.json("/records/abc", 400)["error"]
        assert run.json("/dlq") == {"count": 0, "dead_letters": []}
        assert run.json("/nope", 404)["error"] == "no such endpoint: /nope"
        refused = run.client.post("/status")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET"
        assert "use GET" in refused.json()["error"]


def test_pending_and_dead_lettered_records(tmp_path):
    with FaultReceiver() as receiver, running_agent(tmp_path, [http_destination(receiver)]) as run:
        agent, sender = run.agent, run.agent.senders[0]
        receiver.poison_keys = {idempotency_key(change(2), 2)}
        agent.log.append_batch([encode_change(change(i)) for i in (1, 2, 3)])
        wait_until(lambda: sender.cursor.position == 3, "the first three records to be settled")
        receiver.fail(10**6, status=503)  # the destination is down from now on
        agent.log.append(encode_change(change(4)))
        wait_until(lambda: sender.stats.retries >= 2, "the sender to retry")

        delivered = run.json("/records/1")["destinations"]["hook"]
        assert delivered["status"] == "delivered"
        dead = run.json("/records/2")["destinations"]["hook"]
        assert dead["status"] == "dead_lettered" and dead["attempts"] == 1 and "400" in dead["error"]
        pending = run.json("/records/4")["destinations"]["hook"]
        assert pending["status"] == "pending" and pending["cursor"] == 3 and "503" in pending["last_error"]

        dlq = run.json("/dlq")
        assert dlq["count"] == 1
        [letter] = dlq["dead_letters"]
        assert letter["seq"] == 2 and letter["destination"] == "hook" and "payload" not in letter
        assert letter["idempotency_key"] == idempotency_key(change(2), 2) and letter["failed_at"].endswith(
            "Z"
        )
        assert run.json("/dlq?destination=elsewhere") == {"count": 0, "dead_letters": []}
        assert run.json("/dlq?destination=hook")["count"] == 1

        m = run.metrics()
        retries_after = sender.stats.retries
        assert m[("wal_pending_events", (("destination", "hook"),))] == 1
        assert m[("wal_failures_total", (("destination", "hook"),))] == 1
        assert m[("sender_records_sent_total", (("destination", "hook"),))] == 2
        assert 2 <= m[("wal_retries_total", (("destination", "hook"),))] <= retries_after

        [dest] = run.json("/status")["destinations"]
        assert dest["pending"] == 1 and dest["dead_letters"] == 1 and dest["cursor"] == 3
        assert dest["state"] == "retrying" and "503" in dest["last_error"]
        assert run.json("/health")["status"] == "ok"  # retrying is not failing


def test_health_is_503_when_a_sender_fails_and_when_the_log_closes(tmp_path):
    files = {"name": "files", "type": "file", "path": str(tmp_path / "out")}
    with running_agent(tmp_path, [files]) as run:
        agent = run.agent
        wait_until(lambda: agent.senders[0].stats.state == "running", "the sender to start")
        assert run.get("/health").status_code == 200
        # A record that is not a change goes to the dead-letter store; with the store gone the
        # sender cannot settle it and fails.
        assert agent.dead_letters is not None
        agent.dead_letters.close()
        agent.log.append(b"not a change record")
        wait_until(lambda: agent.senders[0].stats.state == "failed", "the sender to fail")
        health = run.json("/health", 503)
        assert health["status"] == "unavailable"
        assert [r for r in health["reasons"] if r.startswith("destination files: failed: ")]
        assert not [r for r in health["reasons"] if r.startswith("log:")]

        agent.log.close()
        reasons = run.json("/health", 503)["reasons"]
        assert f"log: {agent.log.root}: the log is closed" in reasons


def test_sources_lag_and_readiness(tmp_path):
    source = {
        "name": "app",
        "type": "postgres",
        "dsn": "postgresql://127.0.0.1:1/app",
        "slot": "s",
        "publication": "p",
    }
    with (
        FaultReceiver() as receiver,
        running_agent(tmp_path, [http_destination(receiver)], sources=[source], start=False) as run,
    ):
        status = run.agent.sources[0].status
        assert run.json("/health", 503)["reasons"] == ["source app: starting"]
        # What the source records as it streams: positions, then the slot as PostgreSQL shows it.
        status.state, status.received_lsn, status.flushed_lsn = (
            "streaming",
            parse_lsn("0/3000"),
            parse_lsn("0/1000"),
        )
        assert run.metrics()[("source_lag_bytes", (("source", "app"),))] == 0x2000
        info = SlotInfo(
            "s",
            "pgoutput",
            "app",
            1,
            parse_lsn("0/1000"),
            parse_lsn("0/2000"),
            "reserved",
            parse_lsn("0/2500"),
        )
        status.slot = describe_lag(info)
        assert run.metrics()[("source_lag_bytes", (("source", "app"),))] == 0x500
        [src] = run.json("/status")["sources"]
        assert src == {
            "name": "app",
            "state": "streaming",
            "received_lsn": "0/3000",
            "flushed_lsn": "0/1000",
            "lag_bytes": 0x500,
            "last_error": None,
        }
        assert run.json("/health")["sources"] == {"app": "streaming"}


def test_token_is_required_everywhere_but_health(tmp_path):
    files = {"name": "files", "type": "file", "path": str(tmp_path / "out")}
    with running_agent(tmp_path, [files], token="s3cret", start=False) as run:
        bare = httpx.Client(base_url=run.server.url, timeout=10)
        with bare:
            assert bare.get("/health").status_code == 200
            for path in ("/metrics", "/status", "/dlq", "/records/1", "/nope"):
                response = bare.get(path)
                assert response.status_code == 401, path
                assert response.json() == {"error": "a valid bearer token is required"}
                assert response.headers["www-authenticate"] == "Bearer"
            wrong = bare.get("/status", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        assert run.get("/status").status_code == 200
        assert run.get("/metrics").status_code == 200


def test_start_reports_an_address_in_use_in_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with running_agent(tmp_path, [], start=False) as run:
            server = AdminServer(run.agent, run.telemetry, listen=f"127.0.0.1:{port}", token=None)
            with pytest.raises(AgentError) as error:
                server.start()
            assert str(error.value) == f"admin API: cannot listen on 127.0.0.1:{port}: address already in use"
            with pytest.raises(AgentError, match="admin_listen must be host:port"):
                AdminServer(run.agent, run.telemetry, listen="8180", token=None).start()
    finally:
        taken.close()


def _status_cli() -> typer.Typer:
    app = typer.Typer()
    app.command("status")(status_command)
    app.command("other")(lambda: None)  # two commands: "status" stays a subcommand, as in cli.main
    return app


def test_status_command_live_then_offline(tmp_path, monkeypatch):
    runner = CliRunner()
    app = _status_cli()
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    with FaultReceiver() as receiver:
        receiver.poison_keys = {idempotency_key(change(2), 2)}
        with running_agent(tmp_path, [http_destination(receiver)], token="s3cret") as run:
            agent = run.agent
            agent.log.append_batch([encode_change(change(i)) for i in (1, 2, 3)])
            wait_until(lambda: agent.senders[0].cursor.position == 3, "every record to be settled")
            config = tmp_path / "agent.toml"
            config.write_text(
                f'data_dir = "{agent.log.root}"\nadmin_listen = "{run.server.address}"\n'
                f'admin_token_env = "{TOKEN_ENV}"\n'
            )
            text = runner.invoke(app, ["status", "--config", str(config)])
            assert text.exit_code == 0, text.output
            lines = text.output.splitlines()
            assert lines[0] == "agent running (from the admin API)"
            assert lines[1].startswith(f"log          {agent.log.root}  seq 1..3  durable 3")
            assert lines[2].split()[:9] == [
                "destination",
                "hook",
                "running",
                "cursor",
                "3",
                "pending",
                "0",
                "delivered",
                "2",
            ]
            assert "dead letters 1" in lines[2]
            assert lines[-1] == "flow         running"
            live = runner.invoke(app, ["status", "--config", str(config), "--json"])
            document = orjson.loads(live.output)
            assert document["from"] == "admin API" and document["running"] is True
            assert document["log"]["durable_seq"] == 3 and document["destinations"][0]["delivered"] == 2

            monkeypatch.setenv(TOKEN_ENV, "wrong")
            refused = runner.invoke(app, ["status", "--config", str(config)])
            assert refused.exit_code == 0
            assert (
                "answered 401" in refused.output
                and "agent running, admin API not reachable" in refused.output
            )

    offline = runner.invoke(app, ["status", "--config", str(config)])
    assert offline.exit_code == 0, offline.output
    lines = offline.output.splitlines()
    assert lines[0] == "agent not running (from the data directory)"
    assert lines[1].startswith(f"log          {agent.log.root}  seq 1..3  live")
    assert lines[2].split()[:7] == ["destination", "hook", "stopped", "cursor", "3", "pending", "0"]
    assert "delivered -" in lines[2] and "dead letters 1" in lines[2]
    document = orjson.loads(runner.invoke(app, ["status", "--data-dir", agent.log.root, "--json"]).output)
    assert document["from"] == "data directory" and document["running"] is False
    assert document["log"]["durable_seq"] is None and document["log"]["last_seq"] == 3
    assert document["destinations"][0]["dead_letters"] == 1 and document["destinations"][0]["cursor"] == 3
    assert document["flow"] == {"state": "running", "reason": None}
