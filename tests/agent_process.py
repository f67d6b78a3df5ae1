"""Helpers for tests that run `wallaby-agent` as a real process: a config file, the running agent
with its JSON log lines collected, one-shot CLI commands, and waiting until the agent's slot has
confirmed everything PostgreSQL committed.

The agent's standard error is a pipe, so `log_format = "auto"` gives one JSON object per line;
a thread collects them, so a test can wait for an event (`source.streaming`) instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from agent.sources.postgres.lsn import format_lsn, parse_lsn
from tests.agent_harness import slot_confirmed_lsn, wait_for

REPO = Path(__file__).resolve().parent.parent
# The console script beside the interpreter running the tests; `python -m cli.main` elsewhere.
_SCRIPT = Path(sys.executable).with_name("wallaby-agent")
AGENT_COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli.main"]

EVENT_TIMEOUT_S = 60.0  # starting Python, importing the agent and connecting, on a loaded machine
EXIT_TIMEOUT_S = 30.0  # the agent's own stop timeout is 10 s per source thread
CLI_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0  # an agent restarted after many kills streams what they left behind
DEFAULT_SLOT = "wallaby_test"


def postgres_source(dsn: str, **overrides: Any) -> dict[str, Any]:
    """A `[[sources]]` table for `dsn` with quick status, heartbeat and reconnect intervals."""
    values: dict[str, Any] = {
        "name": "app",
        "type": "postgres",
        "dsn": dsn,
        "slot": DEFAULT_SLOT,
        "publication": "wallaby_test",
        "status_interval": 0.2,
        "heartbeat_interval": 1.0,
        "reconnect": {"initial_delay": 0.1, "max_delay": 0.5},
    }
    values.update(overrides)
    return values


def write_config(path: Path, data_dir: Path | str, *sources: dict[str, Any], **top: Any) -> Path:
    """Write a TOML config with `data_dir`, `wal.min_free_bytes = 0`, no admin API, the sources and `top`."""
    top.setdefault("wal", {"min_free_bytes": 0})
    top.setdefault("admin_listen", "")  # off unless a test asks: agents in tests must not fight over a port
    document = {"data_dir": os.fspath(data_dir), **top, "sources": list(sources)}
    path.write_text(_toml(document))
    return path


def _toml(document: dict[str, Any]) -> str:
    """The little TOML these tests need: scalars, arrays of scalars, tables and arrays of tables."""
    lines: list[str] = []

    def emit(table: dict[str, Any], header: str | None, array: bool) -> None:
        if header is not None:
            lines.append(f"[[{header}]]" if array else f"[{header}]")
        nested = []
        for key, value in table.items():
            if isinstance(value, dict):
                nested.append((key, value, False))
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                nested.extend((key, item, True) for item in value)
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value, is_array in nested:
            emit(value, key if header is None else f"{header}.{key}", is_array)

    emit(document, None, False)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def written_wal_position(dsn: str) -> int:
    """PostgreSQL's WAL position once everything committed so far is written out.

    The suite's servers run with synchronous_commit = off, so a commit can still sit in the WAL
    buffers, ahead of pg_current_wal_lsn() and out of the walsender's reach. A commit made with it
    on writes the buffers out up to itself, but only if its transaction wrote WAL: hence a row in
    a table outside the publication.
    """
    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE IF NOT EXISTS wal_marker (at timestamptz)")
        conn.execute("INSERT INTO wal_marker VALUES (now())")
        conn.commit()
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def wait_until_caught_up(dsn: str, slot: str = DEFAULT_SLOT, timeout_s: float = CATCH_UP_TIMEOUT_S) -> int:
    """Wait until the slot confirms everything PostgreSQL has committed so far; return that position."""
    target = written_wal_position(dsn)
    wait_for(
        lambda: (slot_confirmed_lsn(dsn, slot) or 0) >= target,
        timeout=timeout_s,
        what=f"the slot to confirm {format_lsn(target)}",
    )
    return target


def run_cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one `wallaby-agent` command to completion and capture its output."""
    return subprocess.run(
        [*AGENT_COMMAND, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )


class AgentProcess:
    """`wallaby-agent run --config FILE` in a child process, its output collected by threads."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*AGENT_COMMAND, "run", "--config", os.fspath(config), *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr_lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout_lines), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                if lines is self.stderr_lines:
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        self.events.append(parsed)
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything written so far, for assertion messages."""
        return "".join(self.stderr_lines[-40:]) + "".join(self.stdout_lines[-10:])

    def find_events(self, name: str) -> list[dict[str, Any]]:
        with self._changed:
            return [event for event in self.events if event.get("event") == name]

    def wait_for_event(self, name: str, timeout_s: float = EVENT_TIMEOUT_S, count: int = 1) -> dict[str, Any]:
        """The `count`-th log event called `name`; AssertionError when the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = [event for event in self.events if event.get("event") == name]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(
                        f"the agent exited ({self.proc.returncode}) before logging {name!r}:\n{self.output()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {name!r} event within {timeout_s:.0f} s:\n{self.output()}")
                self._changed.wait(min(left, 0.2))

    def kill(self) -> int | None:
        """SIGKILL the agent (unless it already exited, whose exit code is returned) and reap it."""
        exited = self.proc.poll()
        if exited is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()
        return exited

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `signum` and wait for the exit: (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = self.wait()
        return code, time.monotonic() - started

    def wait(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to end and its output to be read; AssertionError when it does not."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the agent did not exit within {timeout_s:.0f} s:\n{self.output()}"
            ) from None
        for reader in self._readers:
            reader.join(timeout_s)
        return code

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.kill()
