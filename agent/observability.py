"""Logging: structlog events and the wal package's stdlib records through one renderer.

    configure_logging("info", "json")
    log = get_logger(__name__)
    log.info("sender.batch.sent", destination="http", records=120)

JSON lines carry `timestamp` (ISO 8601, UTC), `level`, `event`, `logger` and the event's own keys.
The console format is structlog's ConsoleRenderer, coloured on a TTY. `wal` logs through the
standard library (`log.error("wal.read.damaged", extra={...})`); its `extra` fields become keys
like any other, so one log line looks the same whichever package wrote it.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["FORMATS", "LEVELS", "configure_logging", "get_logger"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "console", "json")  # auto: console on a TTY, JSON otherwise
_HANDLER_NAME = "wallaby"  # marks our handler on the root logger, so a second call replaces it
_LEADING_KEYS = ("timestamp", "level", "event")


def configure_logging(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """Send structlog and stdlib logging at `level` and above to `stream` (default stderr)."""
    level, fmt = level.lower(), fmt.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    stream = sys.stderr if stream is None else stream
    tty = _isatty(stream)
    if fmt == "auto":
        fmt = "console" if tty else "json"

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[Processor]
    if fmt == "json":
        rendering = [
            structlog.processors.format_exc_info,
            _leading_keys_first,
            structlog.processors.JSONRenderer(default=str),  # paths, exceptions: their str()
        ]
    else:
        # A plain traceback: the rich one shows local variables, which can hold a DSN's password.
        rendering = [
            structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=structlog.dev.plain_traceback)
        ]

    handler = logging.StreamHandler(stream)
    handler.name = _HANDLER_NAME
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # stdlib records (wal's) get their `extra` fields as keys, then the same processors
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    for old in [existing for existing in root.handlers if existing.name == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()  # a StreamHandler leaves its stream open
    root.addHandler(handler)
    root.setLevel(level.upper())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so a later configure_logging (or structlog.testing.capture_logs in a test)
        # reaches loggers that modules created at import time.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger for `name` (usually `__name__`) that follows configure_logging."""
    return structlog.stdlib.get_logger(name)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _leading_keys_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
    """timestamp, level and event first on each JSON line, so people reading them find them."""
    leading = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    return {**leading, **event_dict}
