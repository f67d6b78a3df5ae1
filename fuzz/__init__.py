"""A small hypothesis-driven fuzz harness for the `wal` readers (no atheris, no corpus on disk).

A `Target` is a hypothesis strategy that builds one input and a `check` function that feeds it to
the code under test and raises when an invariant breaks. `run_target` keeps generating inputs
until its time budget is spent; when one fails, hypothesis shrinks it and the result carries the
minimal input. Every example runs under two guards:

* a time limit (SIGALRM through `setitimer`), so a hang is a failure, not a stuck run;
* a memory budget on Python allocations (tracemalloc peak), so unbounded growth is a failure.

Targets live in `fuzz.targets`; `python -m fuzz --seconds N` runs them all.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

MiB = 1 << 20

DEFAULT_EXAMPLE_TIMEOUT_S = 2.0
# Shrinking a hang costs a timeout per attempt: stop after this long with the smallest input yet.
DEFAULT_SHRINK_BUDGET_S = 20.0
# Inputs stay below 1 MiB; a reader that needs more than this for one of them does not stream.
DEFAULT_MEMORY_LIMIT_BYTES = 64 * MiB

__all__ = [
    "DEFAULT_EXAMPLE_TIMEOUT_S",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_SHRINK_BUDGET_S",
    "ExampleTimeout",
    "Failure",
    "FuzzInput",
    "FuzzResult",
    "InvariantViolation",
    "MemoryBudgetExceeded",
    "Target",
    "run_target",
]


class InvariantViolation(AssertionError):
    """The code under test returned something it must never return."""


class ExampleTimeout(Exception):
    """One example ran longer than the per-example time limit (a hang, or close enough)."""


class MemoryBudgetExceeded(Exception):
    """One example allocated more than the per-example memory budget."""


@dataclass(frozen=True)
class FuzzInput:
    """One generated input: the file bytes, and the reader options used with them."""

    data: bytes
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in sorted(self.options.items()))
        return f"{len(self.data)} bytes ({options or 'no options'})\n{self.data.hex()}"


@dataclass(frozen=True)
class Target:
    """A named fuzz target: how to build an input, and how to check what the code does with it."""

    name: str
    strategy: st.SearchStrategy[FuzzInput]
    check: Callable[[FuzzInput], None]
    description: str = ""


@dataclass(frozen=True)
class Failure:
    """The minimal failing input hypothesis found, and what went wrong with it."""

    input: FuzzInput | None
    error: str
    traceback: str


@dataclass(frozen=True)
class FuzzResult:
    """What one target's run did: how many examples, in how long, and the failure if any."""

    name: str
    examples: int
    seconds: float
    failure: Failure | None

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


def run_target(
    target: Target,
    seconds: float,
    *,
    example_timeout_s: float = DEFAULT_EXAMPLE_TIMEOUT_S,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    shrink_budget_s: float = DEFAULT_SHRINK_BUDGET_S,
) -> FuzzResult:
    """Fuzz `target` for about `seconds`, plus up to `shrink_budget_s` when something fails."""
    started = time.monotonic()
    deadline = started + seconds
    examples = 0
    # The last input that failed and how: while shrinking, each accepted step is smaller, and
    # hypothesis replays the minimal example last, so this ends up holding the minimal one.
    last_input: FuzzInput | None = None
    last_error: BaseException | None = None
    first_failed_at = 0.0

    def body(fuzz_input: FuzzInput) -> None:
        nonlocal examples, last_input, last_error, first_failed_at
        if last_error is None and time.monotonic() >= deadline:
            return  # out of time: let hypothesis finish its batch cheaply
        if last_error is not None and time.monotonic() - first_failed_at > shrink_budget_s:
            return  # shrunk long enough: keep the smallest failing input seen so far
        examples += 1
        try:
            with _guard(example_timeout_s, memory_limit_bytes):
                target.check(fuzz_input)
        except BaseException as exc:
            if last_error is None:
                first_failed_at = time.monotonic()
            last_input, last_error = fuzz_input, exc
            raise

    failure: Failure | None = None
    batch = 20
    with _quiet_wal_logger(), _tracing():
        while time.monotonic() < deadline:
            test = settings(
                database=None,
                deadline=None,
                derandomize=False,
                max_examples=batch,
                phases=(Phase.generate, Phase.shrink),
                report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet,
                print_blob=False,
            )(given(target.strategy)(body))
            batch_started, batch_examples = time.monotonic(), examples
            try:
                test()
            except Exception as exc:
                # When shrinking was cut short hypothesis reports a flaky test: the error that
                # counts is the last one the target raised.
                error = last_error if last_error is not None else exc
                failure = Failure(
                    last_input, f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
                )
                break
            # Size the next batch to about a quarter of the time left, so the budget is kept.
            per_example = (time.monotonic() - batch_started) / max(1, examples - batch_examples)
            remaining = deadline - time.monotonic()
            batch = max(10, min(5000, int(remaining / 4 / max(per_example, 1e-6))))
    return FuzzResult(target.name, examples, time.monotonic() - started, failure)


@contextlib.contextmanager
def _guard(timeout_s: float, memory_limit_bytes: int) -> Iterator[None]:
    """Fail the example when it runs past `timeout_s` or allocates past `memory_limit_bytes`."""

    def on_alarm(signum: int, frame: object) -> None:
        raise ExampleTimeout(f"example still running after {timeout_s} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    peak = tracemalloc.get_traced_memory()[1] - baseline
    if peak > memory_limit_bytes:
        raise MemoryBudgetExceeded(
            f"example allocated {peak / MiB:.1f} MiB, above the {memory_limit_bytes / MiB:.0f} MiB budget"
        )


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        yield
    finally:
        if started_here:
            tracemalloc.stop()


@contextlib.contextmanager
def _quiet_wal_logger() -> Iterator[None]:
    """Damage is the expected outcome of most inputs: do not print an error line for each."""
    logger = logging.getLogger("wal")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled
