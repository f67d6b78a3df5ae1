"""`type = "http"`: batches POSTed (or PUT) to a URL through httpx.

With `payload_mode = "batch"` one request carries the whole batch in the configured format, with
an `Idempotency-Key` header derived from its records' keys; `"record_json"` sends one JSON
object per request, keyed by that record's key. A format that holds one table per body (arrow,
parquet) gets one request per run of records of the same table.

Answers are classified for the sender: 2xx delivered; 408, 429, 5xx, connection errors and
timeouts are retryable (Retry-After is honoured on 429 and 503); any other 4xx is a permanent
refusal of the data.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator, Sequence
from email.utils import parsedate_to_datetime
from itertools import groupby

import httpx

from ..config_destinations import HttpDestinationConfig
from ..delivery import Delivery, batch_idempotency_key
from ..errors import first_line
from ..formats import get_format
from .base import PermanentError, RetryableError

__all__ = ["HttpDestination"]

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BODY_EXCERPT = 200  # characters of a refusal's body quoted in the error


class HttpDestination:
    """Delivers to one HTTP endpoint; one connection pool, reused across batches."""

    def __init__(self, config: HttpDestinationConfig, environ: dict[str, str] | None = None) -> None:
        self.name = config.name
        self.config = config
        self.format = get_format(config.format)
        headers = dict(config.headers)
        if config.bearer_token_env:
            token = (environ if environ is not None else os.environ).get(config.bearer_token_env)
            if not token:
                raise PermanentError(
                    f"destination {config.name}: environment variable {config.bearer_token_env} is not set",
                    hint="bearer_token_env names the variable holding the token",
                )
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._client: httpx.Client | None = None
        # The format the sender may hand over pre-made bodies in (agent.delivery.LogBatch).
        self.wire_format = (
            self.format if config.payload_mode == "batch" and hasattr(self.format, "splice") else None
        )

    def open(self) -> None:
        if self._client is None:
            verify: str | bool = str(self.config.tls_ca_file) if self.config.tls_ca_file else True
            if not str(self.config.url).lower().startswith("https:"):
                verify = False  # plain HTTP: loading the CA bundle would cost ~80 ms per open, for nothing
            self._client = httpx.Client(
                timeout=self.config.timeout, verify=verify, headers=self._headers, follow_redirects=False
            )

    def write(self, batch: Sequence[Delivery]) -> None:
        if self._client is None:
            self.open()
        for body, key in self._bodies(batch):
            self._send(body, key)

    def _bodies(self, batch: Sequence[Delivery]) -> Iterator[tuple[bytes, str]]:
        if self.config.payload_mode == "record_json":
            encode_one = self.format.encode_one  # type: ignore[attr-defined]
            for delivery in batch:
                yield encode_one(delivery), delivery.idempotency_key
        elif getattr(self.format, "single_table", False):
            for _table, run in groupby(batch, key=lambda d: d.table):
                records = list(run)
                yield self.format.encode(records), batch_idempotency_key(records)
        else:
            yield self.format.encode(batch), batch_idempotency_key(batch)

    def _send(self, body: bytes, key: str) -> None:
        assert self._client is not None
        headers = {"Content-Type": self.format.content_type, "Idempotency-Key": key}
        if self.config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._client.request(
                self.config.method, self.config.url, content=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{self.config.url}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"{self.config.url}: {first_line(exc) or type(exc).__name__}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        message = f"{self.config.url}: HTTP {status} {response.reason_phrase}: {_excerpt(response)}"
        if status in _RETRYABLE_STATUS:
            raise RetryableError(message, retry_after_s=_retry_after(response))
        raise PermanentError(message, hint="the receiver refused the data; see the dead-letter log")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _excerpt(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:_BODY_EXCERPT] if text else "(no body)"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date) on 429 and 503."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
