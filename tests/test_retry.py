"""RetryPolicy on its own: attempts, delays, the retry log line, giving up and stopping."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from agent.config_destinations import RetryConfig
from agent.destinations.base import PermanentError, RetryableError
from agent.retry import RetryPolicy, Stopped


class Flaky:
    """A delivery that raises the given errors, one per call, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(
    stop_event: threading.Event | None = None, seed: int = 7, **config: object
) -> tuple[RetryPolicy, list[tuple[int, float, BaseException]]]:
    retries: list[tuple[int, float, BaseException]] = []
    options = {"initial_delay": 0.001, "max_delay": 0.004, **config}
    made = RetryPolicy(
        RetryConfig(**options),  # type: ignore[arg-type]
        stop_event or threading.Event(),
        destination="hook",
        rng=random.Random(seed),
        on_retry=lambda attempt, delay, error: retries.append((attempt, delay, error)),
    )
    return made, retries


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float, str]]:
    return [
        (r.attempt, r.delay_s, r.error)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "Failed to send events - retrying"
    ]


def test_a_first_success_is_one_attempt_with_nothing_logged(caplog: pytest.LogCaptureFixture) -> None:
    retry, retries = policy()
    deliver = Flaky()
    with caplog.at_level(logging.WARNING, "agent.sender"):
        assert retry.call(deliver) == ("done", 1)
    assert deliver.calls == 1 and retries == [] and retry_lines(caplog) == []


def test_failures_are_retried_with_numbered_attempts_and_the_policy_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = [RetryableError("HTTP 503"), RetryableError("timed out")]
    retry, retries = policy()
    expected, _ = policy()  # the same seed: the same jitter, in the same order
    deliver = Flaky(*errors)
    with caplog.at_level(logging.WARNING, "agent.sender"):
        assert retry.call(deliver) == ("done", 3)
    delays = [expected.delay(1, errors[0]), expected.delay(2, errors[1])]
    assert deliver.calls == 3
    assert retries == [(1, delays[0], errors[0]), (2, delays[1], errors[1])]
    assert retry_lines(caplog) == [
        (1, round(delays[0], 3), "HTTP 503"),
        (2, round(delays[1], 3), "timed out"),
    ]


def test_delays_grow_exponentially_up_to_max_delay() -> None:
    retry, retries = policy(jitter=0, initial_delay=0.001, multiplier=2, max_delay=0.003)
    assert retry.call(Flaky(*[RetryableError("down")] * 4)) == ("done", 5)
    assert [delay for _attempt, delay, _error in retries] == [0.001, 0.002, 0.003, 0.003]


def test_retry_after_is_waited_for_capped_at_max_delay() -> None:
    retry, retries = policy()
    asked = [RetryableError("429", retry_after_s=0.002), RetryableError("429", retry_after_s=60)]
    assert retry.call(Flaky(*asked)) == ("done", 3)
    assert [delay for _attempt, delay, _error in retries] == [0.002, 0.004]


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_on_retry_exhaustion_makes_max_retries_plus_one_attempts_then_raises_the_last_error(
    max_retries: int, caplog: pytest.LogCaptureFixture
) -> None:
    retry, retries = policy(give_up_policy="on_retry_exhaustion", max_retries=max_retries)
    errors = [RetryableError(f"failure {n}") for n in range(1, 10)]
    deliver = Flaky(*errors)
    with caplog.at_level(logging.WARNING, "agent.sender"), pytest.raises(RetryableError) as raised:
        retry.call(deliver)
    assert raised.value is errors[max_retries]
    assert deliver.calls == max_retries + 1
    assert [attempt for attempt, _delay, _error in retries] == list(range(1, max_retries + 1))
    assert [attempt for attempt, _delay, _error in retry_lines(caplog)] == list(range(1, max_retries + 1))


def test_never_gives_up_by_default() -> None:
    retry, _ = policy(max_retries=2)  # max_retries only counts under on_retry_exhaustion
    assert retry.call(Flaky(*[RetryableError("down")] * 6)) == ("done", 7)


def test_other_errors_pass_straight_through_on_any_attempt() -> None:
    retry, retries = policy()
    refusal = PermanentError("HTTP 400")
    with pytest.raises(PermanentError) as raised:
        retry.call(Flaky(refusal))
    assert raised.value is refusal and retries == []
    deliver = Flaky(RetryableError("down"), KeyError("bug"))
    with pytest.raises(KeyError):
        retry.call(deliver)
    assert deliver.calls == 2


def test_a_stop_during_a_wait_raises_stopped() -> None:
    stop = threading.Event()
    stop.set()
    retry, retries = policy(stop)
    deliver = Flaky(RetryableError("down"))
    with pytest.raises(Stopped):
        retry.call(deliver)
    assert deliver.calls == 1 and [attempt for attempt, _delay, _error in retries] == [1]
    assert retry.call(Flaky()) == ("done", 1), "a delivery that succeeds needs no wait"


def test_a_policy_serves_call_after_call() -> None:
    retry, retries = policy(give_up_policy="on_retry_exhaustion", max_retries=1)
    for _ in range(3):
        assert retry.call(Flaky(RetryableError("down"))) == ("done", 2)
        with pytest.raises(RetryableError):
            retry.call(Flaky(RetryableError("a"), RetryableError("b")))
    assert [attempt for attempt, _delay, _error in retries] == [1] * 6
