"""`make bench`: the WAL engine measured against the bare system calls beneath it, in one run.

`python -m tests.benchmarks` prints the table and rewrites its section of docs/benchmarks.md.
The modules here are not named test_*.py, so pytest does not collect them.
"""
