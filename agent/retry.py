"""Retrying a delivery: exponential backoff with jitter (tenacity), Retry-After, and giving up.

    delay(n) = min(initial_delay * multiplier ** (n - 1), max_delay), then cut at random by up
    to `jitter` of itself (0.5: anywhere between half and all of it), so many agents that lost
    the same destination do not come back in step.

A destination that answered 429 or 503 with Retry-After is waited for exactly that long (capped
at max_delay). `give_up_policy = "never"` retries forever; "on_retry_exhaustion" stops after
`max_retries` retries and hands the batch to the dead-letter store.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

import tenacity

from .config_destinations import RetryConfig
from .destinations.base import RetryableError

__all__ = ["RetryPolicy", "Stopped"]

T = TypeVar("T")
log = logging.getLogger("agent.sender")


class Stopped(Exception):
    """The agent is stopping: a retry wait was cut short."""


class RetryPolicy:
    """Calls a delivery again and again while it raises RetryableError, per a RetryConfig."""

    def __init__(
        self,
        config: RetryConfig,
        stop_event: threading.Event,
        *,
        destination: str,
        rng: random.Random | None = None,
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self._stop_event = stop_event
        self._destination = destination
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self._backoff = tenacity.wait_exponential(
            multiplier=config.initial_delay, exp_base=config.multiplier, max=config.max_delay
        )
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if config.give_up_policy == "on_retry_exhaustion":
            stop = tenacity.stop_after_attempt((config.max_retries or 0) + 1)
        # Built once: tenacity keeps the state of a call in thread-local storage, not in this object.
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=stop,
            wait=lambda state: self.delay(
                state.attempt_number, state.outcome.exception() if state.outcome else None
            ),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), self.config.max_delay)
        # tenacity's exponential wait counts from 2**0 at the first attempt, like delay(1) above.
        base = self._backoff(_State(attempt))
        return base * (1.0 - self.config.jitter * self._rng.random())

    def call(self, deliver: Callable[[], T]) -> tuple[T, int]:
        """Run `deliver` until it succeeds; returns (its result, attempts made).

        Raises the last RetryableError when retries are exhausted under on_retry_exhaustion, and
        Stopped when the agent stops during a wait. Other errors pass straight through.
        """
        # Nearly every delivery succeeds at once, and tenacity costs about 20 us a call, so the
        # first attempt is made here and tenacity only takes over after a retryable failure.
        try:
            return deliver(), 1
        except RetryableError as error:
            first_error = error
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts == 1:  # tenacity's attempt 1 is the failure above: logged, waited after
                raise first_error
            return deliver()

        result = self._retrying(attempt)
        return result, attempts

    def _sleep(self, seconds: float) -> None:
        if self._stop_event.wait(seconds):
            raise Stopped()

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Failed to send events - retrying",
            extra={
                "destination": self._destination,
                "attempt": state.attempt_number,
                "delay_s": round(delay, 3),
                "error": str(error),
            },
        )
        if self._on_retry is not None and error is not None:
            self._on_retry(state.attempt_number, delay, error)


class _State:
    """The one field of tenacity's RetryCallState that its wait strategies read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number
