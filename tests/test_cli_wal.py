"""`wallaby-agent wal ...`: output, JSON, exit codes, one-line errors, and help text everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from typer.main import get_command
from typer.testing import CliRunner

from cli import wal as wal_cli
from cli.main import app
from tests.corruption import flip_byte, truncate_at
from wal.format import HEADER_SIZE, SEGMENT_HEADER, encode_record
from wal.layout import archive_name, segment_name
from wal.scan import RawRecord, scan_records

REPO = Path(__file__).resolve().parent.parent
BASE_MS = 1_700_000_000_000
RECORD_BYTES = 43  # 32 bytes of framing + an 11-byte payload


def payload(seq: int) -> bytes:
    return b"payload-%03d" % seq


def segment_bytes(first: int, last: int) -> bytes:
    return SEGMENT_HEADER + b"".join(
        encode_record(s, BASE_MS + s, payload(s)) for s in range(first, last + 1)
    )


def offset_of(seq: int, first: int = 1) -> int:
    return HEADER_SIZE + (seq - first) * RECORD_BYTES


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env or {"WALLABY_DATA_DIR": "/nonexistent/wallaby"})


@pytest.fixture
def segment(tmp_path) -> str:
    path = tmp_path / segment_name(1)
    path.write_bytes(segment_bytes(1, 5))
    return str(path)


@pytest.fixture
def log_root(tmp_path) -> Path:
    """A log directory: seq 1..3 archived, 4..6 live."""
    root = tmp_path / "log"
    (root / "wal").mkdir(parents=True)
    (root / "archive").mkdir()
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    (root / "archive" / archive_name(1)).write_bytes(compressor.compress(segment_bytes(1, 3)))
    (root / "wal" / segment_name(4)).write_bytes(segment_bytes(4, 6))
    return root


def assert_one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_help_works(runner):
    result = run(runner, "--help")
    assert result.exit_code == 0 and "wal" in result.stdout


def test_inspect_segment_text(runner, segment):
    result = run(runner, "wal", "inspect", segment)
    assert result.exit_code == 0, result.output
    assert "ARWAL001 version 1" in result.stdout
    assert "5 (seq 1 .. 5)" in result.stdout
    assert "2023-11-14T22:13:20.001Z .. 2023-11-14T22:13:20.005Z" in result.stdout
    assert "corruptions   none" in result.stdout


def test_inspect_json_reports_corruption(runner, segment):
    flip_byte(segment, offset_of(2) + 30)
    result = run(runner, "wal", "inspect", segment, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["records"], data["first_seq"], data["last_seq"]) == (4, 1, 5)
    (corruption,) = data["corruptions"]
    assert corruption["offset"] == offset_of(2) and corruption["end_offset"] == offset_of(3)
    assert corruption["file"] == segment and corruption["records_skipped"] == 1
    assert "CRC mismatch" in corruption["reason"]


def test_inspect_records_json_uses_render_payload(runner, tmp_path):
    path = tmp_path / segment_name(1)
    path.write_bytes(
        SEGMENT_HEADER + encode_record(1, BASE_MS, b"hello") + encode_record(2, BASE_MS, b"\xff\x00")
    )
    data = json.loads(run(runner, "wal", "inspect", str(path), "--records", "--json").stdout)
    first, second = data["record_list"]
    assert first == {
        "seq": 1,
        "timestamp_ms": BASE_MS,
        "time": "2023-11-14T22:13:20.000Z",
        "status": 1,
        "offset": HEADER_SIZE,
        "length": 37,
        "payload_text": "hello",
    }
    assert second["payload_base64"] == "/wA="


def test_render_payload_hook():
    assert wal_cli.render_payload(b"caf\xc3\xa9") == {"payload_text": "café"}
    assert wal_cli.render_payload(b"\x80") == {"payload_base64": "gA=="}


def test_inspect_log_directory(runner, log_root):
    result = run(runner, "wal", "inspect", str(log_root), "--json", "--records")
    data = json.loads(result.stdout)
    assert (data["records"], data["first_seq"], data["last_seq"]) == (6, 1, 6)
    assert len(data["segments"]) == 2 and data["segments"][0]["archived"]
    assert [r["seq"] for r in data["record_list"]] == [1, 2, 3, 4, 5, 6]
    text = run(runner, "wal", "inspect", str(log_root)).stdout
    assert archive_name(1) in text and segment_name(4) in text


def test_inspect_without_path_uses_the_data_dir(runner, log_root):
    result = run(runner, "wal", "inspect", "--json", env={"WALLABY_DATA_DIR": str(log_root)})
    assert result.exit_code == 0 and json.loads(result.stdout)["records"] == 6
    result = run(runner, "wal", "inspect", "--json", "--data-dir", str(log_root))
    assert json.loads(result.stdout)["records"] == 6


def test_relative_segment_name_is_found_in_the_data_dir(runner, log_root):
    result = run(runner, "wal", "hexdump", segment_name(4), "--record", "5", "--data-dir", str(log_root))
    assert result.exit_code == 0 and "record seq=5" in result.stdout


def test_gap_between_segments_is_reported(runner, log_root):
    os.unlink(log_root / "wal" / segment_name(4))
    (log_root / "wal" / segment_name(9)).write_bytes(segment_bytes(9, 10))
    data = json.loads(run(runner, "wal", "inspect", str(log_root), "--json").stdout)
    (gap,) = data["corruptions"]
    assert gap["records_skipped"] == 5 and "gap" in gap["reason"]
    assert run(runner, "wal", "verify", str(log_root)).exit_code == 1


def test_hexdump_command(runner, segment):
    result = run(runner, "wal", "hexdump", segment, "--offset", "0", "--length", "16")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "header.magic" in lines[0] and "header.version   1" in lines[1]
    result = run(runner, "wal", "hexdump", segment, "--record", "2")
    assert result.stdout.startswith(f"{offset_of(2):08x}  2b 00 00 00")


def test_verify_exit_codes(runner, segment, log_root, tmp_path):
    result = run(runner, "wal", "verify", segment, str(log_root))
    assert result.exit_code == 0, result.output
    assert "3 file(s) checked, 0 corrupt" in result.stdout
    truncate_at(segment, offset_of(5) + 3)
    result = run(runner, "wal", "verify", segment, str(log_root))
    assert result.exit_code == 1
    assert f"CORRUPT  {segment}: offset {offset_of(5)}" in result.stdout
    data = json.loads(run(runner, "wal", "verify", segment, "--json").stdout)
    assert not data["ok"] and data["corruptions"][0]["offset"] == offset_of(5)
    assert_one_line_error(run(runner, "wal", "verify", segment, str(tmp_path / "missing.wal")), 2)


def test_verify_without_path_on_a_missing_data_dir(runner, tmp_path):
    line = assert_one_line_error(run(runner, "wal", "verify", "--data-dir", str(tmp_path / "nope")), 2)
    assert "No such file or directory" in line


def test_verify_calls_a_non_segment_corrupt(runner, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("not a segment")
    result = run(runner, "wal", "verify", str(other))
    assert result.exit_code == 1 and "bad header" in result.stdout


def test_salvage_command(runner, segment, tmp_path):
    flip_byte(segment, offset_of(3) + 30)
    out = str(tmp_path / "salvaged.wal")
    result = run(runner, "wal", "salvage", segment, "-o", out)
    assert result.exit_code == 0, result.output
    assert "recovered 4 record(s) (seq 1 .. 5)" in result.stdout
    assert "lost 1 record(s) in 1 damaged region(s)" in result.stdout
    with open(out, "rb") as handle:
        assert handle.read(HEADER_SIZE) == SEGMENT_HEADER
        items = list(scan_records(handle))
    assert [item.seq for item in items if isinstance(item, RawRecord)] == [1, 2, 4, 5]
    assert len(items) == 4
    line = assert_one_line_error(run(runner, "wal", "salvage", segment, "-o", out), 2)
    assert "refusing to overwrite" in line


@pytest.mark.parametrize(
    "args",
    [
        ["wal", "inspect", "{missing}"],
        ["wal", "inspect", "{text}"],
        ["wal", "inspect", "{tmp}"],
        ["wal", "hexdump", "{missing}"],
        ["wal", "hexdump", "{segment}", "--offset", "abc"],
        ["wal", "hexdump", "{segment}", "--length", "0"],
        ["wal", "inspect", "{segment}", "--max-record-bytes", "5"],
        ["wal", "salvage", "{segment}"],
        ["wal", "inspect", "{segment}", "--no-such-option"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, tmp_path, segment, args):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a segment")
    names = {"missing": str(tmp_path / "missing.wal"), "text": str(text), "tmp": str(tmp_path / "empty")}
    os.mkdir(names["tmp"])
    argv = [arg.format(segment=segment, **names) for arg in args]
    assert_one_line_error(run(runner, *argv), 2)


def test_missing_record_is_one_line_and_exit_1(runner, segment):
    line = assert_one_line_error(run(runner, "wal", "hexdump", segment, "--record", "99"), 1)
    assert "sequence 99" in line


def test_real_process_prints_one_line_on_stderr(tmp_path):
    missing = str(tmp_path / "missing.wal")
    process = subprocess.run(
        [sys.executable, "-m", "cli.main", "wal", "verify", missing],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert process.stdout == ""
    assert process.stderr == f"error: {missing}: No such file or directory\n"


def test_every_command_and_option_has_help_text():
    missing: list[str] = []

    def walk(command, path: str) -> None:
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if param.name != "help" and not getattr(param, "help", None):
                missing.append(f"{path} {param.name}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(get_command(app), "wallaby-agent")
    assert missing == []
