"""The admin API: health, Prometheus metrics, status, dead letters and where a record stands.

    GET /health            200 {"status": "ok"} or 503 {"status": "unavailable", "reasons": [...]}
    GET /metrics           Prometheus text format
    GET /status            agent.status.live_status
    GET /dlq[?destination=D]   dead letters, without their payloads
    GET /records/{seq}     where record seq lives, its change, and each destination's view of it

Every route but /health needs `Authorization: Bearer <token>` when a token is configured. Errors
are JSON `{"error": "<one line>"}`. The server is the standard library's threading HTTP server:
it answers a handful of operators and one Prometheus, and needs nothing more.
"""

from __future__ import annotations

import datetime
import errno
import hmac
import http.server
import socket
import threading
from contextlib import closing
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

import wal

from .change import ChangeFormatError, decode_change
from .errors import AgentError, first_line
from .status import live_status

if TYPE_CHECKING:
    from .runtime import Agent
    from .telemetry import Telemetry

__all__ = ["PROMETHEUS_CONTENT_TYPE", "AdminServer", "health", "parse_listen", "record_report"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READY_SOURCE_STATES = ("streaming", "paused")  # paused: held by the DDL gate, still healthy
_ROUTES = ("/health", "/metrics", "/status", "/dlq")
_DLQ_LIMIT = 1000


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8180`) as (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"admin_listen must be host:port, not {listen!r}")
    return host.strip("[]"), int(port)


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def _because(error: BaseException | str | None) -> str:
    if not error:
        return ""
    return ": " + first_line(error if isinstance(error, BaseException) else Exception(error))


def health(agent: Agent) -> tuple[bool, dict[str, Any]]:
    """(healthy, body): the log writable, every source streaming, no sender failed."""
    reasons = []
    log_ = agent.log
    if log_._state is not None:
        reasons.append(f"log: {first_line(log_._state)}")
    elif log_._closing:
        reasons.append(f"log: {log_.root}: the log is closing")
    for source in agent.sources:
        status = source.status
        if status.state not in READY_SOURCE_STATES:
            error = agent.errors.get(status.name) or status.last_error
            reasons.append(f"source {status.name}: {status.state}" + _because(error))
    for sender in agent.senders:
        if sender.stats.state == "failed":
            error = agent.errors.get(f"destination {sender.name}") or sender.stats.last_error
            reasons.append(f"destination {sender.name}: failed" + _because(error))
    body: dict[str, Any] = {
        "status": "ok" if not reasons else "unavailable",
        "durable_seq": log_.durable_seq,
        "sources": {source.status.name: source.status.state for source in agent.sources},
        "destinations": {sender.name: sender.stats.state for sender in agent.senders},
    }
    if reasons:
        body["reasons"] = reasons
    return not reasons, body


def dead_letter_summary(letter: Any) -> dict[str, Any]:
    return letter.summary(_when)


def record_report(agent: Agent, seq: int) -> dict[str, Any] | None:
    """Where record `seq` lives, its change, and per destination whether it is delivered; None
    when the record is not on disk (never written, or its archive was cleaned up)."""
    with closing(wal.read_log(agent.log.root, seq)) as records:
        record = next(records, None)
    if record is None or record.seq != seq:
        return None
    report: dict[str, Any] = {
        "seq": record.seq,
        "timestamp_ms": record.timestamp_ms,
        "size": len(record.payload),
        "location": {"path": record.path, "offset": record.offset, "archived": record.archived},
    }
    table = None
    try:
        change = decode_change(record.payload)
        report["change"] = change.to_dict()
        table = change.table
    except ChangeFormatError as exc:
        report["change"] = None
        report["change_error"] = first_line(exc)
    letters = agent.dead_letters.list(include_replayed=True) if agent.dead_letters else []
    destinations = {}
    for sender in agent.senders:
        position = sender.cursor.position
        entry: dict[str, Any] = {"cursor": position}
        mine = [x for x in letters if x.seq == seq and x.destination == sender.name]
        if mine:
            letter = mine[-1]
            entry["status"] = "replayed" if letter.replayed_at else "dead_lettered"
            entry.update(
                dlq_id=letter.id,
                attempts=letter.attempts,
                error=letter.error,
                failed_at=_when(letter.failed_at),
                replayed_at=_when(letter.replayed_at),
            )
        elif position >= seq:
            skipped = bool(sender.tables) and table not in sender.tables
            entry["status"] = "skipped" if skipped else "delivered"
        else:
            entry["status"] = "pending"
            entry["last_error"] = sender.stats.last_error
        destinations[sender.name] = entry
    report["destinations"] = destinations
    return report


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the agent logs what matters
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own errors (bad request line, unknown method) as JSON too."""
        self.close_connection = True
        self._json(
            code, {"error": message or http.server.BaseHTTPRequestHandler.responses.get(code, ("error",))[0]}
        )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        server = self.server.admin
        known = path in _ROUTES or path.startswith("/records/")
        if method != "GET" and self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))  # keep the connection usable
        if path != "/health" and not self._authorized(server.token):
            self._json(401, {"error": "a valid bearer token is required"}, {"WWW-Authenticate": "Bearer"})
            return
        if not known:
            self._json(404, {"error": f"no such endpoint: {path}"})
            return
        if method != "GET":
            self._json(405, {"error": f"{method} is not allowed on {path}: use GET"}, {"Allow": "GET"})
            return
        try:
            self._route(server, path, parse_qs(url.query))
        except Exception as exc:  # a bug or a store closed under us: say so, keep serving
            self._json(500, {"error": first_line(exc)})

    def _authorized(self, token: str | None) -> bool:
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _route(self, server: AdminServer, path: str, query: dict[str, list[str]]) -> None:
        agent = server.agent
        if path == "/health":
            healthy, body = health(agent)
            self._json(200 if healthy else 503, body)
        elif path == "/metrics":
            self._send(200, server.telemetry.render_prometheus(), PROMETHEUS_CONTENT_TYPE)
        elif path == "/status":
            self._json(200, live_status(agent))
        elif path == "/dlq":
            destination = query.get("destination", [None])[0]
            letters = agent.dead_letters.list(destination, limit=_DLQ_LIMIT) if agent.dead_letters else []
            count = agent.dead_letters.count(destination) if agent.dead_letters else 0
            self._json(200, {"count": count, "dead_letters": [dead_letter_summary(x) for x in letters]})
        else:
            text = path[len("/records/") :]
            if not text.isdigit() or int(text) < 1:
                self._json(400, {"error": f"a record sequence is a positive integer, not {text!r}"})
                return
            report = record_report(agent, int(text))
            if report is None:
                self._json(404, {"error": f"record {int(text)} is not in the log at {agent.log.root}"})
            else:
                self._json(200, report)

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, orjson.dumps(body), "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    admin: AdminServer


class AdminServer:
    """The admin API of one agent; `start()` binds and serves in a daemon thread."""

    def __init__(self, agent: Agent, telemetry: Telemetry, *, listen: str, token: str | None) -> None:
        self.agent = agent
        self.telemetry = telemetry
        self.listen = listen
        self.token = token or None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind `listen` (port 0: any free port) and serve; AgentError (one line) when it cannot."""
        try:
            host, port = parse_listen(self.listen)
        except ValueError as exc:
            raise AgentError(f"admin API: {exc}") from None
        server_class = (
            type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        )
        try:
            server = server_class((host, port), _Handler)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise AgentError(f"admin API: cannot listen on {self.listen}: {reason}") from None
        server.admin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="admin-api", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """`host:port` actually bound (the chosen port when listen asked for port 0)."""
        if self._server is None:
            raise AgentError("admin API: not started")
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        """Stop serving and close the socket (requests in progress finish on their threads)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
