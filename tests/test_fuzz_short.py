"""A short fuzz run of every target in `make test`, and proof that the harness can report failures."""

from __future__ import annotations

import time

import pytest
from hypothesis import strategies as st

from fuzz import ExampleTimeout, FuzzInput, InvariantViolation, MemoryBudgetExceeded, Target, run_target
from fuzz.targets import TARGETS

SECONDS_PER_TARGET = 6.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_finds_no_failure(name):
    result = run_target(TARGETS[name], SECONDS_PER_TARGET)
    assert result.examples > 0
    if result.failure is not None:
        described = result.failure.input.describe() if result.failure.input else "(no input recorded)"
        pytest.fail(
            f"fuzz target {name!r}: {result.failure.error}\nminimal failing input: {described}\n"
            f"{result.failure.traceback}"
        )


# Inputs the fuzzers once found failing; each must keep passing its target's checks.
REGRESSIONS = [
    # A zstd frame promising 17 bytes that holds 16: the truncation was reported past the data's end.
    ("archive", "28b52ffd2011890000415257414c3030310100000000000000", {"checksum": False, "level": 3}),
    # A frame promising 18 bytes that holds 17: how much of a cut block comes out depends on read sizes.
    ("archive", "28b52ffd2012910000415257414c303031010000000000000000", {"checksum": False, "level": 3}),
    # All 21 promised bytes but no checksum: a frame cut short, whatever its content size says.
    (
        "archive",
        "28b52ffd2415a90000415257414c30303101000000000000000000010000",
        {"checksum": True, "level": 3},
    ),
]


@pytest.mark.parametrize(("name", "data", "options"), REGRESSIONS)
def test_inputs_fuzzing_found_stay_fixed(name, data, options):
    TARGETS[name].check(FuzzInput(bytes.fromhex(data), dict(options)))


def _inputs() -> st.SearchStrategy[FuzzInput]:
    return st.builds(FuzzInput, st.binary(max_size=64))


def _broken_reader(fuzz_input: FuzzInput) -> None:
    if b"\x42" in fuzz_input.data:
        raise InvariantViolation("a byte 0x42 broke the reader")


def _hanging_reader(fuzz_input: FuzzInput) -> None:
    if len(fuzz_input.data) >= 3:
        while True:
            time.sleep(0.01)


def _greedy_reader(fuzz_input: FuzzInput) -> None:
    if len(fuzz_input.data) >= 2:
        hoard = bytearray(80 << 20)
        del hoard


def test_harness_reports_a_broken_target_with_its_minimal_input():
    result = run_target(Target("broken", _inputs(), _broken_reader), 5.0)
    assert result.failure is not None
    assert "0x42" in result.failure.error
    assert result.failure.input is not None
    assert result.failure.input.data == b"\x42"  # shrunk to the one byte that matters
    assert result.failure.input.describe().endswith("\n42")


def test_harness_reports_a_hang():
    result = run_target(
        Target("hang", _inputs(), _hanging_reader), 5.0, example_timeout_s=0.2, shrink_budget_s=3
    )
    assert result.failure is not None
    assert ExampleTimeout.__name__ in result.failure.error
    assert result.failure.input is not None and len(result.failure.input.data) >= 3


def test_harness_reports_unbounded_memory():
    result = run_target(Target("greedy", _inputs(), _greedy_reader), 5.0, memory_limit_bytes=64 << 20)
    assert result.failure is not None
    assert MemoryBudgetExceeded.__name__ in result.failure.error
    assert result.failure.input is not None and len(result.failure.input.data) == 2


def test_harness_passes_a_sound_target_and_keeps_its_budget():
    started = time.monotonic()
    result = run_target(Target("sound", _inputs(), lambda fuzz_input: None), 1.0)
    assert result.failure is None
    assert result.examples > 10
    assert time.monotonic() - started < 3.0
