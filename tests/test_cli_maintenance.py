"""`wallaby-agent wal archive | cleanup | stats`, and the size and duration parsers they use."""

from __future__ import annotations

import json
import os
import time

import pytest
from typer.testing import CliRunner

import wal
from cli.main import app
from wal.units import format_size, parse_duration, parse_size

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def filled_log(tmp_path):
    root = str(tmp_path / "data")
    with wal.open(root, segment_bytes=400, auto_archive=False, min_free_bytes=0) as log:
        for i in range(50):
            log.append(b'{"id": %d, "name": "row"}' % i)
        log.cursor("http").commit(30)
    return root


def test_stats_reports_range_sizes_and_cursor_lag(filled_log):
    result = run("wal", "stats", "--json", "--data-dir", filled_log)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["first_seq"], status["last_seq"]) == (1, 50)
    assert status["archives"] == 0 and status["live_segments"] > 3
    assert status["cursors"] == [{"name": "http", "position": 30, "behind": 20}]
    assert status["writer_pid"] is None


def test_stats_names_the_running_writer(filled_log):
    with wal.open(filled_log, min_free_bytes=0, auto_archive=False):
        result = run("wal", "stats", "--data-dir", filled_log)
    assert f"process {os.getpid()}" in result.output


def test_archive_moves_only_what_every_cursor_passed(filled_log):
    result = run("wal", "archive", "--data-dir", filled_log)
    assert result.exit_code == 0, result.output
    archived = sorted(os.listdir(os.path.join(filled_log, "archive")))
    assert archived and all(name.endswith(".wal.zst") for name in archived)
    last_archived_first = int(archived[-1][:20])
    assert last_archived_first <= 30
    assert [r.seq for r in wal.read_log(filled_log)] == list(range(1, 51))
    status = json.loads(run("wal", "stats", "--json", "--data-dir", filled_log).output)
    assert status["compression_ratio"] > 1


def test_archive_refuses_while_an_agent_holds_the_log(filled_log):
    with wal.open(filled_log, min_free_bytes=0, auto_archive=False):
        result = run("wal", "archive", "--data-dir", filled_log)
    assert result.exit_code == 1
    assert "locked by process" in result.output and "Traceback" not in result.output


def test_cleanup_by_age_with_dry_run_first(filled_log):
    run("wal", "archive", "--data-dir", filled_log)
    archive_dir = os.path.join(filled_log, "archive")
    names = sorted(os.listdir(archive_dir))
    old = os.path.join(archive_dir, names[0])
    past = time.time() - 40 * 86400
    os.utime(old, (past, past))
    dry = run("wal", "cleanup", "--older-than=30d", "--dry-run", "--data-dir", filled_log)
    assert dry.exit_code == 0 and f"would delete {names[0]}" in dry.output
    assert os.path.exists(old)
    real = run("wal", "cleanup", "--older-than=30d", "--data-dir", filled_log)
    assert real.exit_code == 0 and "1 archive(s) deleted" in real.output
    assert sorted(os.listdir(archive_dir)) == names[1:]


def test_cleanup_by_total_size_deletes_oldest_first(filled_log):
    run("wal", "archive", "--data-dir", filled_log)
    archive_dir = os.path.join(filled_log, "archive")
    names = sorted(os.listdir(archive_dir))
    result = run("wal", "cleanup", "--older-than=365d", "--max-total=200", "--data-dir", filled_log)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(archive_dir)) == names[-1:]
    assert "by size" in result.output


@pytest.mark.parametrize("args", [["--older-than=banana"], ["--max-total=lots"]])
def test_cleanup_bad_values_are_one_line_usage_errors(filled_log, args):
    result = run("wal", "cleanup", *args, "--data-dir", filled_log)
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_maintenance_commands_refuse_a_directory_that_is_not_a_log(tmp_path):
    for command in ("archive", "cleanup", "stats"):
        result = run("wal", command, "--data-dir", str(tmp_path))
        assert result.exit_code == 2, (command, result.output)
        assert "not a log directory" in result.output


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 << 20), ("512k", 512 << 10), ("2GB", 2_000_000_000), ("4096", 4096), ("1.5m", 1572864)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("45", 45), ("250ms", 0.25), ("2w", 1209600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "-3d"])
def test_parse_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert (format_size(512), format_size(1572864)) == ("512 B", "1.5 MiB")
