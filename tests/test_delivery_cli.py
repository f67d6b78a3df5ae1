"""The file destination, `wal replay` and `dlq` commands, against real files and a real receiver."""

from __future__ import annotations

import os
import threading
import time

import orjson
from typer.testing import CliRunner

import wal
from agent.change import encode_change
from agent.config_destinations import BatchConfig, FileDestinationConfig
from agent.destinations.file import POSITION_FILE, FileDestination
from agent.dlq import DeadLetters
from agent.sender import Sender, cursor_name
from cli.main import app
from tests.fault_receiver import FaultReceiver
from tests.test_sender_http import FAST_RETRY, Running, change, wait_until

runner = CliRunner()


def file_sender(log: wal.Log, directory, data_dir, **options) -> Sender:
    config = FileDestinationConfig(name="files", type="file", path=directory, retry=FAST_RETRY, **options)
    return Sender(log, FileDestination(config), DeadLetters(data_dir), batch=config.batch, retry=config.retry)


def read_jsonl(directory) -> list[dict]:
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl") and not name.startswith("."):
            with open(os.path.join(directory, name), "rb") as handle:
                out += [orjson.loads(line) for line in handle.read().splitlines()]
    return out


def test_file_destination_rotates_whole_files_and_resumes_exactly_once(tmp_path):
    out = tmp_path / "out"
    with wal.open(str(tmp_path / "data")) as log:
        seqs = log.append_batch([encode_change(change(i)) for i in range(500)])
        sender = file_sender(
            log, out, tmp_path / "data", rotate_bytes=20_000, batch=BatchConfig(max_records=40)
        )
        with Running(sender):
            wait_until(lambda: log.cursor(cursor_name("files")).position >= seqs[300], "300 records in files")
        # A crash leaves a temporary file and a file of a rotation never confirmed: both go.
        (out / ".tmp-00000000000000999999.jsonl").write_bytes(b'{"half": ')
        position = int((out / POSITION_FILE).read_text())
        stray = out / f"changes-{position + 1:020d}-{position + 5:020d}.jsonl"
        stray.write_bytes(b"{}\n")
        with Running(file_sender(log, out, tmp_path / "data", rotate_bytes=20_000, rotate_seconds=0.2)):
            wait_until(lambda: log.cursor(cursor_name("files")).position == seqs[-1], "everything")
        names = os.listdir(out)
        assert not [n for n in names if n.startswith(".tmp-")]
        assert stray.name not in names
    records = read_jsonl(out)
    assert [r["seq"] for r in records] == seqs, "every record once, in order, across the restart"
    assert len([n for n in names if n.endswith(".jsonl")]) > 2, "rotated into several files"


def test_file_destination_writes_one_parquet_file_per_table_per_rotation(tmp_path):
    from agent.formats import get_format

    out = tmp_path / "out"
    changes = [change(i) for i in range(30)]
    for index in range(0, 30, 3):
        changes[index].table = "public.other"
    with wal.open(str(tmp_path / "data")) as log:
        seqs = log.append_batch([encode_change(c) for c in changes])
        sender = file_sender(log, out, tmp_path / "data", format="parquet", rotate_seconds=0.2)
        with Running(sender):
            wait_until(lambda: log.cursor(cursor_name("files")).position == seqs[-1], "everything")
    parquet = get_format("parquet")
    by_table: dict[str, list[int]] = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet"):
            for record in parquet.decode((out / name).read_bytes()):
                by_table.setdefault(record["table"], []).append(record["seq"])
                assert name.startswith(record["table"].replace(".", "."))
    assert sorted(by_table) == ["public.orders", "public.other"]
    assert sorted(by_table["public.orders"] + by_table["public.other"]) == seqs
    assert by_table["public.other"] == [seqs[i] for i in range(0, 30, 3)]


def write_config(tmp_path, destinations: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{destinations}')
    return str(path)


def test_wal_replay_all_resends_everything_without_moving_the_cursor(tmp_path):
    with wal.open(str(tmp_path / "data"), segment_bytes=16 * 1024) as log:
        seqs = log.append_batch([encode_change(change(i)) for i in range(300)])
        log.cursor(cursor_name("hook")).commit(seqs[-1])
        log.archive()
    with FaultReceiver() as receiver:
        receiver.fail(2, status=503, retry_after=0.1)
        config = write_config(
            tmp_path,
            f'[[destinations]]\nname = "hook"\ntype = "http"\nurl = "{receiver.url}"\n'
            "[destinations.retry]\ninitial_delay = 0.05\n",
        )
        dry = runner.invoke(app, ["wal", "replay", "--all", "--config", config, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "would send 300" in dry.output and receiver.requests == 0
        result = runner.invoke(app, ["wal", "replay", "--all", "--config", config, "--from-seq", "11"])
        assert result.exit_code == 0, result.output
        assert "hook: sent 290" in result.output
        assert [r["seq"] for r in receiver.unique()] == seqs[10:]
    with wal.open(str(tmp_path / "data")) as log:
        assert log.cursor(cursor_name("hook")).position == seqs[-1]
        assert any(p.endswith(".zst") for p in {r.path for r in log.read()}), "read archives too"


def test_wal_replay_refuses_bad_arguments_with_one_line(tmp_path):
    config = write_config(tmp_path, '[[destinations]]\nname = "files"\ntype = "file"\npath = "out"\n')
    for args in (
        ["wal", "replay", "--config", config],
        ["wal", "replay", "--all", "--config", config, "--to", "nope"],
        ["wal", "replay", "--all", "--config", config, "--since", "yesterday"],
        ["wal", "replay", str(tmp_path / "missing.wal"), "--config", config],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def test_dlq_list_show_replay_and_purge(tmp_path):
    data = tmp_path / "data"
    with wal.open(str(data)) as log:
        seqs = log.append_batch([encode_change(change(i)) for i in range(4)])
        with FaultReceiver() as receiver:
            from agent.delivery import idempotency_key

            receiver.poison_keys = {idempotency_key(change(2), seqs[2])}
            from tests.test_sender_http import make_sender

            with Running(make_sender(log, tmp_path, receiver)):
                wait_until(lambda: log.cursor(cursor_name("hook")).position == seqs[-1], "the cursor")
            config = write_config(
                tmp_path, f'[[destinations]]\nname = "hook"\ntype = "http"\nurl = "{receiver.url}"\n'
            )
            listed = runner.invoke(app, ["dlq", "list", "--config", config])
            assert listed.exit_code == 0 and "HTTP 400" in listed.output, listed.output
            lines = runner.invoke(app, ["dlq", "list", "--config", config, "--json"]).output.splitlines()
            letter = orjson.loads(lines[0])
            assert len(lines) == 1 and letter["seq"] == seqs[2]
            shown = runner.invoke(app, ["dlq", "show", str(letter["id"]), "--config", config])
            assert orjson.loads(shown.output)["record"]["after"]["n"] == 2
            still = runner.invoke(app, ["dlq", "replay", "--config", config])
            assert still.exit_code == 1 and "still refused" in still.output
            receiver.poison_keys = set()  # the receiver was fixed
            fixed = runner.invoke(app, ["dlq", "replay", "--config", config, "--ids", str(letter["id"])])
            assert fixed.exit_code == 0, fixed.output
            assert receiver.unique()[-1]["seq"] == seqs[2]
            assert runner.invoke(app, ["dlq", "list", "--config", config]).output.strip() == "no dead letters"
    purged = runner.invoke(app, ["dlq", "purge", "--older-than", "0s", "--data-dir", str(data)])
    assert purged.exit_code == 0 and "purged 1" in purged.output
    bad = runner.invoke(app, ["dlq", "purge", "--older-than", "soon", "--data-dir", str(data)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert threading.active_count() >= 1 and time.time() > 0


def test_replay_progress_bar_shows_share_and_count(capsys):
    from cli.replay import _Progress

    progress = _Progress(400)
    progress.advance(100)
    progress.advance(300)
    progress.finish()
    err = capsys.readouterr().err
    assert "[#######-----------------------]  25%  100/400 records" in err
    assert "100%  400/400 records" in err


def test_a_removed_destinations_cursor_is_reported_at_start(tmp_path, caplog):
    import logging

    from agent.config import load_config
    from agent.runtime import _warn_about_orphan_cursors, build_agent

    with wal.open(str(tmp_path / "data")) as log:
        log.append(encode_change(change(1)))
        log.cursor("dest.old").commit(1)
        log.cursor("dest.files").commit(1)
    config = load_config(
        write_config(tmp_path, '[[destinations]]\nname = "files"\ntype = "file"\npath = "out"\n')
    )
    agent = build_agent(config)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.runtime"):
            _warn_about_orphan_cursors(agent)
    finally:
        agent.close()
    orphaned = [r for r in caplog.records if r.getMessage() == "agent.cursor.orphaned"]
    assert [r.cursor for r in orphaned] == ["dest.old"]


def test_wal_drop_cursor_removes_a_removed_destinations_cursor(tmp_path):
    data = tmp_path / "data"
    with wal.open(str(data)) as log:
        log.append(encode_change(change(1)))
        log.cursor("dest.old").commit(1)
    dropped = runner.invoke(app, ["wal", "drop-cursor", "dest.old", "--data-dir", str(data)])
    assert dropped.exit_code == 0 and "dropped cursor dest.old (it was at 1)" in dropped.output, (
        dropped.output
    )
    with wal.open(str(data)) as log:
        assert "dest.old" not in log.cursors()
    missing = runner.invoke(app, ["wal", "drop-cursor", "dest.old", "--data-dir", str(data)])
    assert missing.exit_code == 2 and "no cursor named 'dest.old'" in missing.output
    assert "Traceback" not in missing.output
    with wal.open(str(data)):  # the agent runs: the command refuses with one line
        busy = runner.invoke(app, ["wal", "drop-cursor", "dest.old", "--data-dir", str(data)])
    assert busy.exit_code != 0 and "Traceback" not in busy.output
