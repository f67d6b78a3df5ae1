"""Wiring the agent together: the log, the state store and the sources; start, stop, signals.

`run_agent` runs in the foreground until SIGINT or SIGTERM (or a source fails for a reason retrying
cannot fix), then stops cleanly: sources stop reading, wait for their appends to be durable, report
the final flushed position to PostgreSQL, and the log is closed. SIGKILL at any moment is safe too:
nothing is confirmed upstream before it is durable in the log.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import psycopg

import wal
from agent import telemetry
from agent.admin import AdminServer
from agent.backfill import BackfillWorker
from agent.config import AgentConfig, PostgresSourceConfig
from agent.destinations import build_destination
from agent.dlq import DeadLetters
from agent.errors import AgentFailed, ConfigError, first_line
from agent.sender import Sender, cursor_name
from agent.sources.ingest import HttpIngestSource
from agent.sources.postgres.lsn import parse_lsn
from agent.sources.postgres.source import PostgresSource
from agent.state import StateStore

log = logging.getLogger("agent.runtime")

# How long a clean stop may take before the process gives up waiting for its threads.
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.2


@dataclass
class Agent:
    """A running agent: what `run_agent` started, reachable by tests and the admin API."""

    config: AgentConfig
    log: wal.Log
    state: StateStore
    sources: list[PostgresSource]
    senders: list[Sender] = field(default_factory=list)
    ingest: list[HttpIngestSource] = field(default_factory=list)
    dead_letters: DeadLetters | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    sender_threads: list[threading.Thread] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Set by the SIGINT/SIGTERM handler, which must take no lock: Event.set() there could
    # deadlock against the main thread sitting in Event.wait() on the same event.
    signalled: int | None = None

    backfill: BackfillWorker | None = None

    def start(self) -> None:
        for ingest in self.ingest:  # binds first: a port in use stops the start-up with one line
            ingest.start()
        if self.backfill is not None:
            self.backfill.start()
        for sender in self.senders:
            thread = threading.Thread(target=self._run_sender, args=(sender,), name=f"sender-{sender.name}")
            thread.start()
            self.sender_threads.append(thread)
        for source in self.sources:
            thread = threading.Thread(
                target=self._run_source, args=(source,), name=f"source-{source.config.name}"
            )
            thread.start()
            self.threads.append(thread)

    def _run_source(self, source: PostgresSource) -> None:
        try:
            source.run()
        except BaseException as exc:  # recorded and reported by wait(); the other sources stop
            self.errors[source.config.name] = exc
            self.stop_event.set()

    def _run_sender(self, sender: Sender) -> None:
        try:
            sender.run()
        except BaseException as exc:  # not the destination's failure (those are retried): stop
            sender.stats.state = "failed"
            self.errors[f"destination {sender.name}"] = exc
            self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    def stopping(self) -> bool:
        """Whether stop() was called, a part failed, or a signal arrived (lock-free: Event.is_set)."""
        if self.signalled is not None and not self.stop_event.is_set():
            log.info("agent.stopping", extra={"signal": signal.Signals(self.signalled).name})
            self.stop_event.set()  # here, in the main thread's loop, not in the signal handler
        return self.stop_event.is_set()

    def wait(self) -> None:
        """Block until stop() (or a failed source), then stop every source and join them."""
        watched = self.threads + self.sender_threads
        while not self.stopping():
            time.sleep(_POLL_S)
            if watched and not self.ingest and not any(thread.is_alive() for thread in watched):
                break
        for ingest in self.ingest:  # stop taking records before anything else stops
            ingest.stop()
        if self.backfill is not None:
            self.backfill.stop()
        for source in self.sources:
            source.stop()
        for thread in self.threads:
            thread.join(STOP_TIMEOUT_S)
        if self.backfill is not None:
            self.backfill.thread.join(STOP_TIMEOUT_S)
        for sender in self.senders:
            sender.stop()
        for thread in self.sender_threads:
            thread.join(STOP_TIMEOUT_S)

    def close(self) -> None:
        self.log.close()
        if self.dead_letters is not None:
            self.dead_letters.close()
        self.state.close()


def build_agent(config: AgentConfig, *, start_lsn: str | None = None) -> Agent:
    """Open the log and the state store under data_dir and create the configured sources."""
    data_dir = os.fspath(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    log_ = wal.open(data_dir, on_sync=telemetry.record_sync, **config.wal.log_options())
    try:
        state = StateStore(data_dir)
    except BaseException:
        log_.close()
        raise
    explicit = None if start_lsn is None else parse_lsn(start_lsn)
    sources = [
        PostgresSource(source, log_, state, start_lsn=explicit)
        for source in config.sources
        if source.type == "postgres"
    ]
    postgres = {source.name: source for source in config.sources if source.type == "postgres"}
    backfill = BackfillWorker(postgres, log_, state) if postgres else None
    dead_letters = DeadLetters(data_dir)
    try:
        senders = [
            Sender(
                log_,
                build_destination(destination, state),
                dead_letters,
                batch=destination.batch,
                retry=destination.retry,
                tables=destination.tables,
            )
            for destination in config.destinations
        ]
    except BaseException:
        dead_letters.close()
        state.close()
        log_.close()
        raise
    try:
        ingest = [HttpIngestSource(source, log_) for source in config.sources if source.type == "http_ingest"]
    except BaseException:
        dead_letters.close()
        state.close()
        log_.close()
        raise
    return Agent(config, log_, state, sources, senders, ingest, dead_letters, backfill=backfill)


def run_agent(config: AgentConfig, *, start_lsn: str | None = None, once: bool = False) -> None:
    """Run until SIGINT/SIGTERM; raise AgentFailed (after a clean stop) when a source failed.

    With `once`, stop by itself when every PostgreSQL source has caught up with the position its
    server had at start-up and every destination has been handed everything in the log (for
    scheduled runs); an ingest source has nothing to catch up with.
    """
    targets = (
        {source.name: current_wal_lsn(source) for source in config.sources if source.type == "postgres"}
        if once
        else {}
    )
    agent = build_agent(config, start_lsn=start_lsn)
    # What start-up created lives as long as the process: keep full collections from scanning it
    # (a full collection over it cost 25-90 ms of capture latency in the benchmark).
    gc.freeze()
    previous = _install_signal_handlers(agent)
    admin: AdminServer | None = None
    tel: telemetry.Telemetry | None = None
    try:
        log.info(
            "agent.started",
            extra={
                "data_dir": os.fspath(config.data_dir),
                "sources": [s.config.name for s in agent.sources],
                "destinations": [sender.name for sender in agent.senders],
            },
        )
        _warn_about_orphan_cursors(agent)
        tel = telemetry.install_telemetry(agent)
        if config.admin_listen is not None:
            admin = AdminServer(agent, tel, listen=config.admin_listen, token=_admin_token(config))
            admin.start()
        agent.start()
        if once:
            _run_once(agent, targets)
        agent.wait()
    finally:
        _restore_signal_handlers(previous)
        if admin is not None:
            admin.stop()
        if tel is not None:
            tel.close()
        agent.close()
    # Keys: a source's name, or "destination <name>" for a sender that failed.
    for name, error in agent.errors.items():
        log.error("agent.part.failed", extra={"part": name, "error": str(error)})
    log.info("agent.stopped", extra={"failed": sorted(agent.errors)})
    if agent.errors:
        name, error = next(iter(agent.errors.items()))
        part = name if name.startswith("destination ") else f"source {name}"
        raise AgentFailed(f"{part}: {error}")


def current_wal_lsn(source: PostgresSourceConfig) -> int:
    """Where the source's server is writing now: what `run --once` catches up with."""
    try:
        with psycopg.connect(
            source.dsn, autocommit=True, connect_timeout=int(source.connect_timeout)
        ) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    except psycopg.Error as exc:
        raise AgentFailed(
            f"source {source.name}: cannot read the server's WAL position: {first_line(exc)}"
        ) from None
    assert row is not None
    return parse_lsn(row[0])


def _run_once(agent: Agent, targets: dict[str, int]) -> None:
    """Wait until the sources have caught up and the senders were handed everything, then stop."""
    sources_done = False
    while not agent.stopping():
        time.sleep(_POLL_S)
        if not sources_done:
            if all(source.status.flushed_lsn >= targets[source.config.name] for source in agent.sources):
                sources_done = True
                for source in agent.sources:  # nothing new comes in from here on
                    source.stop()
                for thread in agent.threads:
                    thread.join(STOP_TIMEOUT_S)
                last = agent.log.durable_seq
                log.info("agent.once.caught_up", extra={"last_seq": last})
            continue
        # Handed over is enough: a destination that buffers (files) writes out on close.
        if all(sender.processed_through >= last for sender in agent.senders):
            log.info("agent.once.drained", extra={"last_seq": last})
            agent.stop()
            return


def _admin_token(config: AgentConfig) -> str | None:
    """The admin API's bearer token; a named variable that is not set is a configuration error."""
    if config.admin_token_env is None:
        return None
    token = os.environ.get(config.admin_token_env)
    if not token:
        raise ConfigError(
            f"environment variable {config.admin_token_env} is not set", option="admin_token_env"
        )
    return token


def _warn_about_orphan_cursors(agent: Agent) -> None:
    """A destination removed from the configuration leaves its cursor, which holds back archiving."""
    configured = {cursor_name(sender.name) for sender in agent.senders}
    for name, position in agent.log.cursors().items():
        if name.startswith("dest.") and name not in configured:
            log.warning(
                "agent.cursor.orphaned",
                extra={
                    "cursor": name,
                    "position": position,
                    "reason": "no configured destination uses this cursor; segments after it are not "
                    "archived until it is removed (with the agent stopped: wallaby-agent wal drop-cursor NAME)",
                },
            )


def _install_signal_handlers(agent: Agent) -> dict[int, object]:
    def handle(signum: int, _frame: FrameType | None) -> None:
        agent.signalled = signum  # no locks here (see Agent.signalled); the main loop acts on it

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
