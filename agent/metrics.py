"""The agent's metrics, through the OpenTelemetry SDK.

Instruments are created once here with the names operators alert on, and used where the event
happens. Until `configure_metrics` installs a provider with a reader (the admin API's Prometheus
exporter, or a test's in-memory reader), OpenTelemetry's default no-op provider makes each use
nearly free.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

METER_NAME = "wallaby-agent"


class _Instruments:
    """Created lazily, so they bind to whatever provider is installed when first used."""

    def __init__(self) -> None:
        self._provider: object | None = None

    def _ensure(self) -> None:
        provider = metrics.get_meter_provider()
        if provider is self._provider:
            return
        meter = metrics.get_meter(METER_NAME)
        self.ddl_gated_total = meter.create_counter(
            "wallaby.ddl.gated_total", unit="1", description="DDL events that paused the flow"
        )
        self.source_changes_total = meter.create_counter(
            "source.changes.total", unit="1", description="Changes a source wrote into the log"
        )
        self.ingest_rejections_total = meter.create_counter(
            "ingest.rejections.total",
            unit="1",
            description="Requests the http_ingest source refused, by code",
        )
        self._provider = provider

    def ddl_gated(self, source: str) -> None:
        self._ensure()
        self.ddl_gated_total.add(1, {"source": source})

    def source_changes(self, source: str, count: int) -> None:
        self._ensure()
        self.source_changes_total.add(count, {"source": source})

    def ingest_rejected(self, source: str, code: str) -> None:
        self._ensure()
        self.ingest_rejections_total.add(1, {"source": source, "code": code})


INSTRUMENTS = _Instruments()


def configure_metrics(readers: Sequence[MetricReader]) -> MeterProvider:
    """Install a meter provider exporting through `readers` (call once, at start-up)."""
    provider = MeterProvider(metric_readers=list(readers))
    metrics.set_meter_provider(provider)
    return provider
