"""`wallaby-agent run --once`: a scheduled run stops by itself once caught up and delivered."""

from __future__ import annotations

import os
import subprocess

import orjson

from tests.agent_harness import execute
from tests.agent_process import AGENT_COMMAND, REPO, postgres_source, write_config

RUN_TIMEOUT_S = 120


def run_once(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT_COMMAND, "run", "--config", str(config), "--once"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def delivered(directory) -> list[int]:
    ids = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl") and not name.startswith("."):
            with open(os.path.join(directory, name), "rb") as handle:
                ids += [orjson.loads(line)["after"]["id"] for line in handle.read().splitlines()]
    return ids


def test_run_once_catches_up_delivers_and_exits(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE public.jobs (id int PRIMARY KEY, note text)")
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "agent.toml",
        tmp_path / "data",
        postgres_source(pg_dsn, publication_tables=["public.jobs"]),
        destinations=[{"name": "files", "type": "file", "path": str(out), "rotate_seconds": 3600.0}],
    )
    first = run_once(config)  # creates the slot: nothing to deliver yet
    assert first.returncode == 0, first.stderr[-3000:]
    execute(pg_dsn, "INSERT INTO public.jobs SELECT g, 'first ' || g FROM generate_series(1, 300) g")
    second = run_once(config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "agent.once.drained" in second.stderr
    assert delivered(out) == list(range(1, 301)), "everything committed before the run, once"
    execute(pg_dsn, "INSERT INTO public.jobs SELECT g, 'second ' || g FROM generate_series(301, 350) g")
    third = run_once(config)
    assert third.returncode == 0, third.stderr[-3000:]
    assert delivered(out) == list(range(1, 351)), "the next run takes up where the last stopped"
