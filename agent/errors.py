"""The errors the agent raises, as a tree a caller can catch at any level.

    AgentError                  anything the agent itself reports (not wal's own errors)
     ├── ConfigError            the configuration file or environment is invalid
     ├── AgentFailed            the agent stopped because a part of it failed (a source gave up)
     └── (destination errors)   agent.destinations: carry `retryable` and a hint; to come

The PostgreSQL source keeps its own tree (`agent.sources.postgres.errors.SourceError`), and the
storage engine its own (`wal.WalError`). Errors change type only at package boundaries, so the
CLI catches each root and turns it into one line and an exit code.
"""

from __future__ import annotations


class AgentError(Exception):
    """The base of every error the agent package raises."""


class ConfigError(AgentError):
    """The configuration is invalid. `str()` is one line: where, which option, what is wrong.

    `origin` is where the bad value came from: the config file as it was named, or the
    environment variable that set it. `option` is the dotted option (`sources[0].slot`) and
    `line` a line of the file (for TOML syntax errors); either may be missing. `more` counts
    further problems found in the same pass, which the line mentions but does not spell out.
    """

    def __init__(
        self,
        problem: str,
        *,
        origin: str | None = None,
        option: str | None = None,
        line: int | None = None,
        more: int = 0,
    ) -> None:
        self.problem = problem
        self.origin = origin
        self.option = option
        self.line = line
        self.more = more
        parts = [origin, option, f"line {line}" if line is not None else None, problem]
        message = ": ".join(part for part in parts if part)
        if more:
            message += f" (and {more} more)"
        super().__init__(message)


class AgentFailed(AgentError):
    """The agent stopped (cleanly) because a source failed; the message names the source."""


def first_line(exc: BaseException) -> str:
    """An error's message cut to its first line (server errors add detail lines), or its type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__
