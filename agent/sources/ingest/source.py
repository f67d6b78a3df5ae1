"""The ingest source's lifecycle and its checks: token, rate, appending, and the rejection tally.

Stopping: the listening socket is closed first, then each idle connection's read side is shut
(its thread wakes and ends), while connections inside a request finish it, answer with
`Connection: close`, and end; `stop()` joins all of those threads.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import wal
from agent.config import HttpIngestSourceConfig
from agent.errors import ConfigError, first_line
from agent.metrics import INSTRUMENTS

from .body import RecordMaker
from .decisions import Decisions, Rejection
from .errors import IngestSourceError, ListenError
from .handler import IngestHandler, IngestServer
from .ratelimit import RateLimiter

log = logging.getLogger("agent.source.ingest")

STOP_TIMEOUT_S = 10.0  # stop() waits this long for requests in flight
LOG_FULL_RETRY_AFTER_S = 5  # the Retry-After of 503 LOG_FULL


class HttpIngestSource:
    """Serves `POST /ingest` and `GET /ingest/decisions` on `config.listen`, appending to `log_`."""

    def __init__(
        self,
        config: HttpIngestSourceConfig,
        log_: wal.Log,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.log = log_
        self._token: bytes | None = None
        if config.token_env:
            token = (os.environ if environ is None else environ).get(config.token_env, "")
            if not token:
                raise ConfigError(
                    f"the environment variable {config.token_env} is not set or empty",
                    origin=f"source {config.name}",
                    option="token_env",
                )
            self._token = token.encode("utf-8")
        rate = config.rate_limit_per_client
        self._limiter = RateLimiter(rate, config.rate_burst) if rate else None
        self._records = RecordMaker(
            config.name, config.table, config.max_records_per_request, log_.options.max_record_bytes
        )
        self._decisions = Decisions(config.decisions_kept)
        self._server: IngestServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._handlers: set[IngestHandler] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind `config.listen` and serve in background threads; ListenError if it cannot bind."""
        if self._server is not None:
            raise IngestSourceError(f"source {self.config.name}: already started")
        host, port, family = _parse_listen(self.config.name, self.config.listen)
        try:
            server = IngestServer((host, port), family, self)
        except OSError as exc:
            reason = (
                "address already in use (another process listens there)"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            raise ListenError(
                f"source {self.config.name}: cannot listen on {self.config.listen}: {reason}"
            ) from None
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"ingest-{self.config.name}",
            daemon=True,
        )
        self._serve_thread.start()
        host, port = self.address
        log.info("ingest.listening", extra={"source": self.config.name, "host": host, "port": port})

    def run(self) -> None:
        """start() (unless started) and block until stop(): the shape agent.runtime runs sources in."""
        if self._server is None:
            self.start()
        self._stopped.wait()

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish and answer, and join every thread."""
        server = self._server
        with self._lock:
            already, self._stopping = self._stopping, True
        if server is None:
            self._stopped.set()
            return
        if already:
            self._stopped.wait()
            return
        server.shutdown()  # serve_forever returns: nothing more is accepted
        server.server_close()
        with self._lock:
            for handler in self._handlers:
                if not handler.busy:
                    handler.shut_idle()
            threads = list(self._threads)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(thread.is_alive() for thread in threads)
        if left:
            log.warning(
                "ingest.stop.timeout",
                extra={"source": self.config.name, "connections": left, "waited_s": STOP_TIMEOUT_S},
            )
        assert self._serve_thread is not None
        self._serve_thread.join()
        self._stopped.set()
        log.info("ingest.stopped", extra={"source": self.config.name})

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with `listen = "127.0.0.1:0"`, the port the OS chose."""
        if self._server is None:
            raise IngestSourceError(f"source {self.config.name}: not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def decisions(self) -> dict[str, Any]:
        """What `GET /ingest/decisions` answers: rejection counts by code and the recent ones, newest first."""
        return self._decisions.snapshot()

    # -- what the handlers call ------------------------------------------------------------------

    def _track_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.add(thread)

    def _untrack_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)

    def _track(self, handler: IngestHandler) -> None:
        with self._lock:
            self._handlers.add(handler)
            if self._stopping:  # accepted just before the listening socket closed
                handler.shut_idle()

    def _untrack(self, handler: IngestHandler) -> None:
        with self._lock:
            self._handlers.discard(handler)

    def _begin(self, handler: IngestHandler) -> bool:
        """Mark a connection busy with a request; False if stop() already shut it as idle."""
        with self._lock:
            if handler.shut:
                return False
            handler.busy = True
            return True

    def _end(self, handler: IngestHandler) -> None:
        with self._lock:
            handler.busy = False
            if self._stopping:
                handler.close_connection = True

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if self._token is None:
            return
        value = headers.get("authorization")
        scheme, _, credentials = (value or "").strip().partition(" ")
        if value is None or scheme.lower() != "bearer":
            reason = "this endpoint requires an Authorization: Bearer token"
        elif hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), self._token):
            return
        else:
            reason = "the bearer token is wrong"
        raise Rejection(401, "UNAUTHORIZED", reason, headers=(("WWW-Authenticate", 'Bearer realm="ingest"'),))

    def _check_rate(self, client: str) -> None:
        if self._limiter is None:
            return
        wait_s = self._limiter.take(client)
        if wait_s:
            raise Rejection(
                429,
                "ENQUEUE_RATE_EXCEEDED",
                f"client {client} exceeds {self._limiter.rate:g} requests/s "
                f"(burst {self.config.rate_burst}, rate_limit_per_client); retry in {wait_s:.2f} s",
                retry_after_s=wait_s,
            )

    def _append(self, payloads: list[bytes]) -> list[int]:
        try:
            seqs = self.log.append_batch(payloads, wait=True)
        except wal.WalFullError as exc:
            raise Rejection(
                503, "LOG_FULL", f"the log is full: {first_line(exc)}", retry_after_s=LOG_FULL_RETRY_AFTER_S
            ) from None
        except wal.LogClosed:
            raise Rejection(
                503, "SHUTTING_DOWN", "the log is closed: the agent is stopping", close=True
            ) from None
        except wal.RecordTooLarge as exc:
            raise Rejection(413, "RECORD_TOO_LARGE", first_line(exc)) from None
        except wal.WalError as exc:
            raise Rejection(500, "LOG_FAILED", f"the log failed: {first_line(exc)}") from None
        self._decisions.accepted(len(seqs))
        INSTRUMENTS.source_changes(self.config.name, len(seqs))
        return seqs

    def _rejected(self, client: str, rejection: Rejection) -> None:
        self._decisions.rejected(client, rejection)
        INSTRUMENTS.ingest_rejected(self.config.name, rejection.code)
        log.log(
            logging.WARNING if rejection.status >= 500 else logging.INFO,
            "ingest.rejected",
            extra={
                "source": self.config.name,
                "client": client,
                "status": rejection.status,
                "code": rejection.code,
                "reason": rejection.reason,
            },
        )


def _parse_listen(name: str, listen: str) -> tuple[str, int, socket.AddressFamily]:
    host, sep, port_text = listen.strip().rpartition(":")
    try:
        if not sep:
            raise ValueError
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ListenError(f"source {name}: listen {listen!r} is not host:port") from None
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], port, socket.AF_INET6
    return host, port, socket.AF_INET6 if ":" in host else socket.AF_INET
