"""The admin API of a real `wallaby-agent run`, and `wallaby-agent status` live and offline."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import threading
import time
from typing import ClassVar

import httpx

import wal
from agent.change import Change, encode_change
from tests.agent_process import AgentProcess, run_cli, write_config
from tests.fault_receiver import FaultReceiver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_admin_api_and_status_of_a_running_agent(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    with wal.open(str(data_dir)) as log:
        log.append_batch(
            [
                encode_change(
                    Change(
                        table="public.t",
                        op="insert",
                        source="app",
                        key={"id": i},
                        after={"id": i},
                        lsn=f"0/{i + 16:X}",
                    )
                )
                for i in range(20)
            ]
        )
    port = free_port()
    monkeypatch.setenv("ADMIN_TOKEN", "t0ken")
    with FaultReceiver() as receiver:
        config = write_config(
            tmp_path / "agent.toml",
            data_dir,
            admin_listen=f"127.0.0.1:{port}",
            admin_token_env="ADMIN_TOKEN",
            destinations=[{"name": "hook", "type": "http", "url": receiver.url}],
        )
        agent = AgentProcess(config)
        try:
            agent.wait_for_event("agent.started")
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": "Bearer t0ken"}
            for _ in range(200):
                try:
                    if (
                        len(receiver.records) == 20
                        and httpx.get(f"{base}/health", timeout=2).status_code == 200
                    ):
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            assert httpx.get(f"{base}/health", timeout=2).status_code == 200
            assert httpx.get(f"{base}/status", timeout=2).status_code == 401
            metrics = httpx.get(f"{base}/metrics", headers=headers, timeout=5).text
            assert 'sender_records_sent_total{destination="hook"} 20.0' in metrics, metrics[:2000]
            status = httpx.get(f"{base}/status", headers=headers, timeout=5).json()
            assert status["running"] is True
            live = run_cli("status", "--config", str(config), "--json")
            assert live.returncode == 0, live.stderr
            assert json.loads(live.stdout)["running"] is True
            code, _ = agent.stop()
            assert code == 0, agent.output()
        finally:
            agent.kill()
    offline = run_cli("status", "--config", str(config))
    assert offline.returncode == 0, offline.stderr
    assert "not running" in offline.stdout and "hook" in offline.stdout


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        _Collector.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_metrics_are_exported_over_otlp_when_an_endpoint_is_set(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")  # ms
    data_dir = tmp_path / "data"
    with wal.open(str(data_dir)) as log:
        log.append(
            encode_change(Change(table="public.t", op="insert", source="app", key={"id": 1}, after={"id": 1}))
        )
    config = write_config(
        tmp_path / "agent.toml",
        data_dir,
        destinations=[{"name": "files", "type": "file", "path": str(tmp_path / "out")}],
    )
    agent = AgentProcess(config)
    try:
        agent.wait_for_event("agent.started")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(
                path == "/v1/metrics" and b"sender.records.sent.total" in body
                for path, body in _Collector.bodies
            ):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no OTLP export with the sender's metrics arrived:\n{agent.output()}")
        assert any(b"wal.appends.total" in body for _, body in _Collector.bodies)
        code, _ = agent.stop()
        assert code == 0, agent.output()
    finally:
        agent.kill()
        server.shutdown()
