"""A real HTTP receiver on loopback that injects faults on a schedule, for sender tests.

It accepts JSON arrays (or one JSON object) of change envelopes, gzip or not, and keeps every
record it accepted. Faults are queued and consumed one request at a time:

    receiver.fail(3, status=500)                  # the next 3 requests answer 500
    receiver.fail(1, status=429, retry_after=1)   # then one 429 with Retry-After: 1
    receiver.slow(2, seconds=1.5)                 # answer after 1.5 s (beyond the client timeout)
    receiver.drop(2)                              # close the connection without an answer
    receiver.poison_keys = {"..."}                # 400 for any request holding these records
    receiver.outage(30)                           # stop listening for 30 s, then come back

`records` holds what was accepted, duplicates included; `unique()` drops repeats by
idempotency_key, keeping the first.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
from collections import deque
from typing import Any

import orjson


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.receiver.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.receiver.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        fault = receiver._next_fault()
        receiver.requests += 1
        if fault is not None:
            kind, value, retry_after = fault
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "slow":
                time.sleep(value)
            elif kind == "status":
                self._answer(int(value), b"injected failure", retry_after)
                return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._answer(422, b"invalid JSON")
            return
        records = value if isinstance(value, list) else [value]
        if any(record.get("idempotency_key") in receiver.poison_keys for record in records):
            receiver.refused += 1
            self._answer(400, b"poison record")
            return
        with receiver.lock:
            receiver.records.extend(records)
            receiver.headers.append(dict(self.headers))
        self._answer(200, b"ok")

    do_PUT = do_POST

    def _answer(self, status: int, body: bytes, retry_after: float | None = None) -> None:
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: FaultReceiver
    connections: set[socket.socket]


class FaultReceiver:
    """The receiver; `url` is where to send. Use as a context manager or call close()."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.poison_keys: set[str] = set()
        self.requests = 0
        self.refused = 0
        self._faults: deque[tuple[str, float, float | None]] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self._listen()
        self.url = f"http://127.0.0.1:{self.port}/ingest"

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        server.connections = set()
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            # An outage cuts kept-alive connections too, not only the listening socket.
            with self.lock:
                connections = list(self._server.connections)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server = None

    # -- faults ----------------------------------------------------------------------------------

    def fail(self, count: int, *, status: int, retry_after: float | None = None) -> None:
        with self.lock:
            self._faults.extend([("status", status, retry_after)] * count)

    def slow(self, count: int, *, seconds: float) -> None:
        with self.lock:
            self._faults.extend([("slow", seconds, None)] * count)

    def drop(self, count: int) -> None:
        with self.lock:
            self._faults.extend([("drop", 0, None)] * count)

    def outage(self, seconds: float) -> threading.Thread:
        """Stop listening now and come back after `seconds` (in the background)."""
        self._stop_listening()

        def come_back() -> None:
            time.sleep(seconds)
            self._listen()

        thread = threading.Thread(target=come_back, daemon=True)
        thread.start()
        return thread

    def _next_fault(self) -> tuple[str, float, float | None] | None:
        with self.lock:
            return self._faults.popleft() if self._faults else None

    @property
    def faults_left(self) -> int:
        with self.lock:
            return len(self._faults)

    # -- what arrived ----------------------------------------------------------------------------

    def unique(self) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out = []
        with self.lock:
            for record in self.records:
                if record["idempotency_key"] not in seen:
                    seen.add(record["idempotency_key"])
                    out.append(record)
        return out

    def close(self) -> None:
        self._stop_listening()

    def __enter__(self) -> FaultReceiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
