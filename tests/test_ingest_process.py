"""`wallaby-agent run` with an http_ingest source: records POSTed locally reach a destination."""

from __future__ import annotations

import socket

import httpx

from tests.agent_harness import wait_for
from tests.agent_process import AgentProcess, write_config
from tests.fault_receiver import FaultReceiver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_posted_records_are_durable_then_delivered(tmp_path):
    port = free_port()
    with FaultReceiver() as receiver:
        config = write_config(
            tmp_path / "agent.toml",
            tmp_path / "data",
            {"name": "apps", "type": "http_ingest", "listen": f"127.0.0.1:{port}", "table": "app.events"},
            destinations=[{"name": "hook", "type": "http", "url": receiver.url}],
        )
        agent = AgentProcess(config)
        try:
            agent.wait_for_event("agent.started")
            url = f"http://127.0.0.1:{port}/ingest"
            wait_for(lambda: _reachable(url), 30, "the ingest port")
            answer = httpx.post(
                url,
                content=b'{"event": "signup", "user": 1}\n{"event": "login", "user": 1}\n',
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert answer.status_code == 202, answer.text
            assert answer.json()["accepted"] == 2
            bad = httpx.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
            assert bad.status_code == 422 and bad.json()["error"] == "INVALID_JSON"
            wait_for(lambda: len(receiver.records) == 2, 30, "delivery")
            assert [r["message"]["event"] for r in receiver.records] == ["signup", "login"]
            assert {r["table"] for r in receiver.records} == {"app.events"}
            code, _ = agent.stop()
            assert code == 0, agent.output()
        finally:
            agent.kill()


def _reachable(url: str) -> bool:
    try:
        httpx.get(url.replace("/ingest", "/ingest/decisions"), timeout=1)
        return True
    except httpx.TransportError:
        return False
