"""A token bucket per client address: `rate` requests per second, up to `burst` at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Forget clients whose bucket has refilled once this many are remembered (a full bucket is the
# same as no entry), so a scan of many addresses cannot grow the table without end.
_PRUNE_AT = 10_000


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, when they were counted]

    def take(self, client: str) -> float:
        """0.0 when the client may go ahead (a token is spent), else the seconds until it may."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                if len(self._buckets) >= _PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[client] = [self.burst, now]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            c for c, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]
