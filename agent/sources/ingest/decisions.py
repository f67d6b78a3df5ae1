"""Rejections: the `Rejection` a request is answered with, and the tally `/ingest/decisions` lists."""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections import Counter, deque
from typing import Any


class Rejection(Exception):
    """A request refused with `status` and a JSON body `{"error": code, "reason": reason}`.

    `retry_after_s` (seconds) becomes a Retry-After header, rounded up to a whole second.
    `close` ends the connection after the answer (the request body may be left unread).
    """

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        *,
        retry_after_s: float | None = None,
        close: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason.splitlines()[0] if reason else code
        self.close = close
        extra = list(headers)
        if retry_after_s is not None:
            extra.append(("Retry-After", str(max(1, math.ceil(retry_after_s)))))
        self.headers = tuple(extra)


class Decisions:
    """Counts of every rejection by code, the latest `kept` of them, and what was accepted."""

    def __init__(self, kept: int) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=kept)
        self._accepted_requests = 0
        self._accepted_records = 0

    def rejected(self, client: str, rejection: Rejection) -> None:
        entry = {
            "time": _utc_iso(time.time()),
            "client": client,
            "status": rejection.status,
            "code": rejection.code,
            "reason": rejection.reason,
        }
        with self._lock:
            self._counts[rejection.code] += 1
            self._recent.append(entry)

    def accepted(self, records: int) -> None:
        with self._lock:
            self._accepted_requests += 1
            self._accepted_records += records

    def snapshot(self) -> dict[str, Any]:
        """{"counts": {code: n}, "recent": [newest first], "accepted": {"requests", "records"}}."""
        with self._lock:
            return {
                "counts": dict(sorted(self._counts.items())),
                "recent": [dict(entry) for entry in reversed(self._recent)],
                "accepted": {"requests": self._accepted_requests, "records": self._accepted_records},
            }


def _utc_iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
