"""agent.observability: structlog and wal's stdlib records come out as the same JSON lines."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest
import structlog

import wal
from agent.observability import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging():
    """Leave the root logger and structlog as the test found them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_events_are_json_lines_with_timestamp_level_and_fields():
    out = io.StringIO()
    configure_logging("info", "json", out)
    get_logger("agent.sender").info("sender.batch.sent", destination="http", records=3)
    [line] = lines(out)
    assert line["event"] == "sender.batch.sent"
    assert (line["level"], line["logger"]) == ("info", "agent.sender")
    assert (line["destination"], line["records"]) == ("http", 3)
    assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0
    assert list(line)[:3] == ["timestamp", "level", "event"]


def test_wal_stdlib_records_keep_their_extra_fields():
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("wal").error("wal.read.damaged", extra={"segment": "/log/wal/1.wal", "offset": 96})
    [line] = lines(out)
    assert (line["event"], line["level"], line["logger"]) == ("wal.read.damaged", "error", "wal")
    assert (line["segment"], line["offset"]) == ("/log/wal/1.wal", 96)
    assert "timestamp" in line


def test_a_real_log_reports_through_the_same_renderer(tmp_path):
    out = io.StringIO()
    configure_logging("info", "json", out)
    with wal.open(str(tmp_path / "log"), min_free_bytes=0):
        pass
    events = {line["event"]: line for line in lines(out)}
    assert events["wal.opened"]["root"] == str(tmp_path / "log")
    assert events["wal.closed"]["durable_seq"] == 0


def test_the_level_filters_both_kinds():
    out = io.StringIO()
    configure_logging("WARNING", "json", out)
    get_logger("agent").info("agent.quiet")
    logging.getLogger("wal").info("wal.quiet")
    get_logger("agent").warning("agent.loud")
    logging.getLogger("wal").warning("wal.loud")
    assert [line["event"] for line in lines(out)] == ["agent.loud", "wal.loud"]


def test_exceptions_are_rendered_into_the_line():
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("agent").exception("agent.failed")
        logging.getLogger("wal").exception("wal.failed")
    for line in lines(out):
        assert "RuntimeError: boom" in line["exception"]


def test_configuring_twice_does_not_duplicate_lines():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)
    get_logger("agent").info("agent.once")
    logging.getLogger("wal").info("wal.once")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["agent.once", "wal.once"]


def test_a_logger_made_before_configuration_follows_it():
    log = get_logger("agent.early")
    out = io.StringIO()
    configure_logging("info", "json", out)
    log.info("agent.early.event")
    assert lines(out)[0]["event"] == "agent.early.event"


def test_console_format_is_text_with_the_fields():
    out = io.StringIO()
    configure_logging("info", "console", out)
    get_logger("agent").info("sender.batch.sent", destination="http")
    logging.getLogger("wal").warning("wal.crc.slow", extra={"reason": "no C extension"})
    text = out.getvalue()
    assert "sender.batch.sent" in text and "destination=http" in text
    assert "wal.crc.slow" in text and "reason" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_json_off_a_terminal_and_console_on_one():
    out = io.StringIO()
    configure_logging("info", "auto", out)
    get_logger("agent").info("agent.auto")
    assert lines(out)[0]["event"] == "agent.auto"

    terminal = FakeTerminal()
    configure_logging("info", "auto", terminal)
    get_logger("agent").info("agent.auto")
    assert "agent.auto" in terminal.getvalue()
    assert not terminal.getvalue().startswith("{")


@pytest.mark.parametrize(("level", "fmt"), [("loud", "json"), ("info", "yaml")])
def test_unknown_level_or_format_is_refused(level, fmt):
    with pytest.raises(ValueError):
        configure_logging(level, fmt, io.StringIO())
