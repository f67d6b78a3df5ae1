"""The HTTP side of the ingest source: a ThreadingHTTPServer with keep-alive, one thread per connection.

A request is answered only after its records are durable, with one `append_batch(wait=True)`
(see source.py), so concurrent connections share the log's fsyncs. Every answer is written with
one send and carries Content-Length, so connections stay open between requests. The request head
is parsed here rather than by `BaseHTTPRequestHandler.parse_request`, whose trip through the
email package cost more than half of a request's CPU time (measured: 200 µs down to 130 µs a
request, client included).
"""

from __future__ import annotations

import email.utils
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

from .body import body_format, declared_length, read_body
from .decisions import Rejection

if TYPE_CHECKING:
    from .source import HttpIngestSource

log = logging.getLogger("agent.source.ingest")

INGEST_PATH = "/ingest"
DECISIONS_PATH = "/ingest/decisions"
IDLE_TIMEOUT_S = 30.0  # a connection silent this long (between or inside requests) is closed
SEQS_LISTED_UP_TO = 1000  # a 202 lists every sequence number up to this many records
_MAX_LINE = 65536  # bytes in the request line or in one header line
_MAX_HEADERS = 100
_PROTOCOL_CODES = {
    400: "BAD_REQUEST",
    414: "URI_TOO_LONG",
    431: "HEADERS_TOO_LARGE",
    505: "HTTP_VERSION_NOT_SUPPORTED",
}
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class IngestServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 32 clients connecting at once must not overflow the backlog

    def __init__(
        self, address: tuple[str, int], family: socket.AddressFamily, source: HttpIngestSource
    ) -> None:
        self.address_family = family
        self.source = source
        super().__init__(address, IngestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can wait on DNS: skip that.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="ingest-connection",
            daemon=True,
        )
        self.source._track_thread(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.source._untrack_thread(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer: not worth a traceback on stderr.
        log.debug("ingest.connection.error", exc_info=True, extra={"client": str(client_address)})


class IngestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wallaby-ingest"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    server: IngestServer

    def setup(self) -> None:
        super().setup()
        self.busy = False  # inside a request: stop() lets it finish
        self.shut = False  # stop() shut the read side while it was idle
        self.body_read = False
        self.command = None  # type: ignore[assignment]
        self.source = self.server.source
        self.source._track(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.source._untrack(self)

    def shut_idle(self) -> None:
        """Wake the thread blocked reading the next request (called under the source's lock)."""
        self.shut = True
        try:
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: rejections are logged as ingest.rejected

    def handle_one_request(self) -> None:
        self.body_read = False
        self.command = None  # type: ignore[assignment]
        try:
            self.raw_requestline = self.rfile.readline(_MAX_LINE + 1)
        except OSError:  # idle timeout, or the client reset the connection
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.source._begin(self):
            self.close_connection = True
            self._reject(Rejection(503, "SHUTTING_DOWN", "the source is stopping", close=True))
            return
        try:
            if self._read_head():
                self._dispatch()
        finally:
            self.source._end(self)

    def _read_head(self) -> bool:
        """Parse the request line and the headers (names lower-cased, into a dict)."""
        if len(self.raw_requestline) > _MAX_LINE:
            self.send_error(414, "the request line is too long")
            return False
        self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(400, f"bad request line {self.requestline[:100]!r}")
            return False
        self.command, self.path, self.request_version = words
        if words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(505, f"{words[2][:20]} is not supported; use HTTP/1.1")
            return False
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            try:
                raw = self.rfile.readline(_MAX_LINE + 1)
            except OSError:
                self.close_connection = True
                return False
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:  # the client went away mid-head
                self.close_connection = True
                return False
            if len(raw) > _MAX_LINE:
                self.send_error(431, "a header line is too long")
                return False
            name, colon, value = raw.decode("latin-1").partition(":")
            name = name.lower()
            if not colon or not name or name != name.strip():
                self.send_error(400, f"bad header line {raw[:100]!r}")
                return False
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        else:
            self.send_error(431, f"more than {_MAX_HEADERS} header lines")
            return False
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        if self.request_version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in connection
        else:
            self.close_connection = "close" in connection
            if headers.get("expect", "").lower() == "100-continue" and not self._too_large():
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # else the 413 comes without it
        return True

    def _too_large(self) -> bool:
        try:
            return int(self.headers.get("content-length") or 0) > self.source.config.max_body_bytes
        except ValueError:
            return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (a bad request line or header), as JSON; the connection closes."""
        status = HTTPStatus(code)
        reason = message or status.phrase
        self._reject(Rejection(status.value, _PROTOCOL_CODES.get(code, status.name), reason, close=True))

    def _dispatch(self) -> None:
        path = self.path.partition("?")[0]
        try:
            if path == INGEST_PATH:
                allowed: tuple[str, ...] = ("POST",)
            elif path == DECISIONS_PATH:
                allowed = ("GET", "HEAD")
            else:
                raise Rejection(
                    404, "NOT_FOUND", f"no endpoint at {path[:200]!r}; records go to POST {INGEST_PATH}"
                )
            if self.command not in allowed:
                raise Rejection(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"{self.command[:20]} is not allowed on {path}; use {' or '.join(allowed)}",
                    headers=(("Allow", ", ".join(allowed)),),
                )
            if path == INGEST_PATH:
                self._ingest()
            else:
                self.source._authorize(self.headers)
                self._answer(200, orjson.dumps(self.source.decisions()))
        except Rejection as rejection:
            self._reject(rejection)

    def _ingest(self) -> None:
        source = self.source
        source._check_rate(self.client_address[0])
        source._authorize(self.headers)
        fmt = body_format(self.headers.get("content-type"))
        limit = source.config.max_body_bytes
        length = declared_length(self.headers, limit)
        body = read_body(self.rfile, length, limit)
        self.body_read = True
        seqs = source._append(source._records.payloads(body, fmt))
        answer: dict[str, Any] = {"accepted": len(seqs), "first_seq": seqs[0], "last_seq": seqs[-1]}
        if len(seqs) <= SEQS_LISTED_UP_TO:
            answer["seqs"] = seqs
        self._answer(202, orjson.dumps(answer))

    def _reject(self, rejection: Rejection) -> None:
        self.source._rejected(self.client_address[0], rejection)
        if rejection.close:
            self.close_connection = True
        elif not self.body_read:
            self._discard_body()
        body = orjson.dumps({"error": rejection.code, "reason": rejection.reason})
        self._answer(rejection.status, body, rejection.headers)

    def _discard_body(self) -> None:
        """Read an unread body so the connection can carry the next request (else close it)."""
        self.body_read = True
        headers = getattr(self, "headers", None)
        if not isinstance(headers, dict) or "transfer-encoding" in headers:
            self.close_connection = True
            return
        try:
            length = int(headers.get("content-length") or 0)
            if not 0 <= length <= self.source.config.max_body_bytes:
                raise ValueError
            if length and len(self.rfile.read(length)) < length:
                raise ValueError
        except (ValueError, OSError):
            self.close_connection = True

    def _answer(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if self.source._stopping:
            self.close_connection = True
        lines = [
            f"HTTP/1.1 {status} {_PHRASES[status]}",
            f"Server: {self.server_version}",
            f"Date: {_http_date()}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(data if self.command == "HEAD" else data + body)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]
