"""`wallaby-agent wal inspect --records` shows change records decoded, whatever else the log holds."""

from __future__ import annotations

import base64
import json

from typer.testing import CliRunner

import wal
from agent.change import Change, encode_change
from cli import wal as wal_cli
from cli.main import app

CHANGES = [
    Change(
        table="public.orders",
        op="insert",
        source="pg-main",
        key={"id": 1},
        after={"id": 1, "amount": "129.95", "tags": ["a", None], "note": "Zoë"},
        lsn="0/16B3748",
        commit_lsn="0/16B37A0",
        xid=734,
        commit_ts="2026-11-23T10:00:00.123456Z",
        txn_index=0,
    ),
    Change(
        table="public.orders",
        op="update",
        source="pg-main",
        key={"id": 1},
        before={"id": 1, "amount": "129.95"},
        after={"id": 1},
        lsn="0/16B3800",
        commit_lsn="0/16B3900",
        xid=735,
        commit_ts="2026-11-23T10:00:01Z",
        unchanged=["blob"],
        txn_index=1,
    ),
    Change(
        table="",
        op="message",
        source="pg-main",
        message={"prefix": "app", "content": {"base64": "AAE="}, "transactional": False},
    ),
]
UNDECODABLE = b"\xc1\x09[0]"  # a change record of a version this code does not know


def run_inspect(root: str, *extra: str):
    result = CliRunner().invoke(
        app, ["wal", "inspect", root, "--records", *extra], env={"WALLABY_DATA_DIR": "/nonexistent/wallaby"}
    )
    assert result.exit_code == 0, result.output
    return result


def write_log(root: str, payloads: list[bytes]) -> list[int]:
    with wal.open(root, min_free_bytes=0) as log:
        return [log.append(payload) for payload in payloads]


def test_inspect_json_decodes_every_change(tmp_path) -> None:
    root = str(tmp_path / "log")
    seqs = write_log(root, [encode_change(change) for change in CHANGES])
    records = json.loads(run_inspect(root, "--json").stdout)["record_list"]
    assert [record["seq"] for record in records] == seqs == [1, 2, 3]
    for record, change in zip(records, CHANGES, strict=True):
        assert record["change"] == change.to_dict()
        assert Change.from_dict(record["change"]) == change
        assert "payload_text" not in record and "payload_base64" not in record
    assert records[1]["change"]["before"] == {"id": 1, "amount": "129.95"}
    assert records[1]["change"]["unchanged"] == ["blob"]
    assert records[2]["change"]["message"]["content"] == {"base64": "AAE="}


def test_other_payloads_keep_their_rendering(tmp_path) -> None:
    root = str(tmp_path / "log")
    write_log(root, [b"plain text", encode_change(CHANGES[0]), b"\xff\x00", UNDECODABLE])
    records = json.loads(run_inspect(root, "--json").stdout)["record_list"]
    assert records[0]["payload_text"] == "plain text"
    assert records[1]["change"]["op"] == "insert"
    assert records[2]["payload_base64"] == "/wA="
    assert base64.b64decode(records[3]["payload_base64"]) == UNDECODABLE
    assert "unsupported change record version 9" in records[3]["decode_error"]


def test_text_listing_previews_changes_and_undecodable_ones(tmp_path) -> None:
    root = str(tmp_path / "log")
    write_log(root, [encode_change(CHANGES[0]), UNDECODABLE])
    lines = run_inspect(root).stdout.splitlines()
    assert any('change: {"table": "public.orders", "op": "insert"' in line for line in lines)
    assert any("base64: " in line for line in lines)


def test_render_payload() -> None:
    assert wal_cli.render_payload(encode_change(CHANGES[2])) == {"change": CHANGES[2].to_dict()}
    rendered = wal_cli.render_payload(b"\xc1\x01not json")
    assert set(rendered) == {"payload_base64", "decode_error"}
    assert "invalid JSON" in rendered["decode_error"]
    assert wal_cli.render_payload(b"hello") == {"payload_text": "hello"}
