"""`python -m fuzz --seconds N [--target NAME]`: run the fuzz targets, exit 1 when one fails."""

from __future__ import annotations

import argparse
import resource
import sys

from fuzz import DEFAULT_EXAMPLE_TIMEOUT_S, DEFAULT_MEMORY_LIMIT_BYTES, FuzzResult, MiB, run_target
from fuzz.targets import TARGETS

# A backstop beside the per-example tracemalloc check, for allocations Python does not see (zstd's
# own buffers): the process may grow by this much address space before allocations fail.
_ADDRESS_SPACE_HEADROOM_BYTES = 1024 * MiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="total time budget, shared by the targets"
    )
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", help="run only this target")
    parser.add_argument("--example-timeout", type=float, default=DEFAULT_EXAMPLE_TIMEOUT_S, metavar="S")
    parser.add_argument(
        "--memory-limit-mib", type=float, default=DEFAULT_MEMORY_LIMIT_BYTES / MiB, metavar="MIB"
    )
    args = parser.parse_args(argv)
    names = args.target or list(TARGETS)
    _limit_address_space()
    results: list[FuzzResult] = []
    for name in names:
        result = run_target(
            TARGETS[name],
            args.seconds / len(names),
            example_timeout_s=args.example_timeout,
            memory_limit_bytes=int(args.memory_limit_mib * MiB),
        )
        results.append(result)
        status = "FAILED" if result.failure else "ok"
        print(
            f"{name:<8} {result.examples:>8} examples in {result.seconds:6.1f} s "
            f"({result.examples_per_second:8.1f}/s)  {status}",
            flush=True,
        )
    failed = [r for r in results if r.failure is not None]
    for result in failed:
        assert result.failure is not None
        print(f"\n== {result.name}: {result.failure.error}")
        if result.failure.input is not None:
            print(f"minimal failing input: {result.failure.input.describe()}")
        print(result.failure.traceback)
    return 1 if failed else 0


def _limit_address_space() -> None:
    with open("/proc/self/status") as status:
        current = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = current + _ADDRESS_SPACE_HEADROOM_BYTES
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


if __name__ == "__main__":
    sys.exit(main())
