"""Shared fixtures: a fresh log directory and small-segment options for quick rotation."""

from __future__ import annotations

import logging

import pytest

import wal

pytest_plugins = ["tests.pg"]


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "log")


@pytest.fixture
def open_log(log_dir):
    """Open logs under the test's directory and close whatever the test left open."""
    opened: list[wal.Log] = []

    def _open(**options):
        options.setdefault("min_free_bytes", 0)
        log = wal.open(options.pop("path", log_dir), **options)
        opened.append(log)
        return log

    yield _open
    for log in opened:
        log.close()


@pytest.fixture(autouse=True)
def _disarm_failpoints():
    yield
    from wal import failpoints

    failpoints.disarm()


@pytest.fixture
def wal_logs(caplog):
    """Capture the wal package's log records."""
    caplog.set_level(logging.INFO, logger="wal")
    return caplog
