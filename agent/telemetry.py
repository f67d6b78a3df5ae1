"""The agent's metrics: OpenTelemetry instruments read from the agent's own stats, exported to
Prometheus (the admin API's /metrics) and, when OTEL_EXPORTER_OTLP_ENDPOINT is set, over OTLP/HTTP.

    telemetry = install_telemetry(agent)       # once the agent is built
    wal.open(..., on_sync=record_sync)         # the log's fsync hook (or telemetry.on_sync)
    body = telemetry.render_prometheus()       # Prometheus text format

Nearly everything is an observable instrument: its callback reads the log's, senders' and sources'
stats when a reader collects (a scrape, an OTLP export), so the hot paths pay nothing. Only the two
duration histograms are recorded as they happen, from the log's `on_sync` hook.

OpenTelemetry lets a process set its global meter provider once (a second `set_meter_provider`
only logs a warning), and `agent.metrics.INSTRUMENTS` binds to the global one. So the provider,
its readers and the instruments are created once per process (`_Shared`) and reused: each
`install_telemetry` points the callbacks at the newest agent. Counters therefore stay monotonic
for the life of the process, as Prometheus expects of one scrape target. The Prometheus reader
registers with a registry of our own (with the process, platform and GC collectors the default
registry would have), so rendering never mixes in another reader's metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from wal.status import read_status

from .metrics import METER_NAME, configure_metrics

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["ARCHIVE_CACHE_S", "OTLP_ENDPOINT_ENV", "Telemetry", "install_telemetry", "record_sync"]

log = logging.getLogger("agent.telemetry")

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
ARCHIVE_CACHE_S = 5.0  # wal.archive.size.bytes walks the log directory at most this often
# Milliseconds: an fsync on a good SSD takes 0.05-2 ms, on a network disk 5-50 ms.
DURATION_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

Reading = Callable[["Agent"], Iterable[tuple[float, dict[str, str]]]]


class _Shared:
    """The process's provider, readers and instruments (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.prometheus = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        readers: list[MetricReader] = [self.prometheus]
        self.otlp = bool(os.environ.get(OTLP_ENDPOINT_ENV))
        if self.otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.provider: MeterProvider = configure_metrics(readers)
        self.current: Telemetry | None = None
        self.lock = threading.Lock()
        meter = self.provider.get_meter(METER_NAME)
        self.append_duration = meter.create_histogram(
            "wal.append.duration",
            unit="ms",
            description="Duration of each durable write of a batch of appends (the log's on_sync hook)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
        )
        self.fsync_duration = meter.create_histogram(
            "wal.fsync.duration",
            unit="ms",
            description="Duration of each fsync (or synced write) of the log",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
        )
        counters: dict[str, tuple[str, Reading]] = {
            "wal.appends.total": ("Records appended to the log since the agent started", _appends),
            "wal.retries.total": ("Delivery attempts retried, per destination", _retries),
            "wal.failures.total": ("Records dead-lettered, per destination", _failures),
            "wal.corruptions.total": ("Damaged log regions found since the log was opened", _corruptions),
            "sender.records.sent.total": ("Records delivered, per destination", _sent),
        }
        for name, (description, reading) in counters.items():
            meter.create_observable_counter(
                name, [self._callback(reading)], unit="1", description=description
            )
        gauges: dict[str, tuple[str, str, Reading]] = {
            "wal.pending.events": (
                "1",
                "Durable records a destination has not yet passed (durable seq - cursor)",
                _pending,
            ),
            "wal.archive.size.bytes": ("By", "Bytes of compressed archives in the log", _archive_bytes),
            "source.lag.bytes": ("By", "WAL bytes a source trails its server (slot) or its flushes", _lag),
        }
        for name, (unit, description, reading) in gauges.items():
            meter.create_observable_gauge(name, [self._callback(reading)], unit=unit, description=description)

    def _callback(self, reading: Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            current = self.current
            if current is None:
                return []
            try:
                return [Observation(value, labels) for value, labels in reading(current.agent)]
            except Exception as exc:  # a scrape must not fail because one figure is unavailable
                log.debug("telemetry.observe.failed", extra={"error": str(exc)})
                return []

        return observe

    def record_sync(self, seconds: float) -> None:
        millis = seconds * 1000.0
        self.append_duration.record(millis)
        self.fsync_duration.record(millis)


_SHARED: _Shared | None = None
_SHARED_LOCK = threading.Lock()


def _shared() -> _Shared:
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = _Shared()
        return _SHARED


def record_sync(seconds: float) -> None:
    """The log's `on_sync` hook: records both duration histograms (a no-op before install)."""
    shared = _SHARED
    if shared is not None:
        shared.record_sync(seconds)


class Telemetry:
    """The metrics of one agent; made by `install_telemetry`."""

    def __init__(self, agent: Agent, shared: _Shared) -> None:
        self.agent = agent
        self._shared = shared
        self.archive_cache_s = ARCHIVE_CACHE_S
        self._archive_cache: tuple[float, int] | None = None

    @property
    def provider(self) -> MeterProvider:
        return self._shared.provider

    @property
    def otlp_enabled(self) -> bool:
        return self._shared.otlp

    def on_sync(self, seconds: float) -> None:
        """The log's `on_sync(seconds)` hook, called after each fsync on the writing thread."""
        self._shared.record_sync(seconds)

    def render_prometheus(self) -> bytes:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        with self._shared.lock:  # one collection at a time: the reader hands over what it collected
            return generate_latest(self._shared.registry)

    def archive_bytes(self) -> int:
        """wal.status' archive_bytes, cached for `archive_cache_s` (it lists and sizes every archive)."""
        now = time.monotonic()
        cached = self._archive_cache
        if cached is not None and now - cached[0] < self.archive_cache_s:
            return cached[1]
        size = read_status(self.agent.log.root).archive_bytes
        self._archive_cache = (now, size)
        return size

    def close(self) -> None:
        """Stop reporting this agent (the provider lives on for the process)."""
        if self._shared.current is self:
            self._shared.current = None


def install_telemetry(agent: Agent) -> Telemetry:
    """Export `agent`'s metrics through the process's meter provider (created on first use)."""
    shared = _shared()
    telemetry = Telemetry(agent, shared)
    shared.current = telemetry
    return telemetry


# -- readings: (value, labels) pairs from the agent's stats -------------------------------------


def _appends(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(agent.log.stats().appends, {})]


def _corruptions(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(len(agent.log.damage), {})]


def _retries(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(s.stats.retries, {"destination": s.name}) for s in agent.senders]


def _failures(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(s.stats.dead_lettered, {"destination": s.name}) for s in agent.senders]


def _sent(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(s.stats.delivered, {"destination": s.name}) for s in agent.senders]


def _pending(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    durable = agent.log.durable_seq
    return [(max(0, durable - s.cursor.position), {"destination": s.name}) for s in agent.senders]


def _archive_bytes(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    shared = _SHARED
    current = shared.current if shared is not None else None
    if current is None or current.agent is not agent:
        return [(read_status(agent.log.root).archive_bytes, {})]
    return [(current.archive_bytes(), {})]


def source_lag_bytes(status: object) -> int:
    """A source's lag: the slot's confirmed lag when known, else received - flushed LSN."""
    slot = getattr(status, "slot", None) or {}
    lag = slot.get("confirmed_lag_bytes") if isinstance(slot, dict) else None
    if isinstance(lag, int):
        return lag
    return max(0, int(getattr(status, "received_lsn", 0)) - int(getattr(status, "flushed_lsn", 0)))


def _lag(agent: Agent) -> Iterable[tuple[float, dict[str, str]]]:
    return [(source_lag_bytes(s.status), {"source": s.config.name}) for s in agent.sources]
