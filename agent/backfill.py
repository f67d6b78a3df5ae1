"""On-demand backfill: re-read chosen tables of a PostgreSQL source into the log as snapshot rows.

`wallaby-agent backfill` queues a request in `state.db`; the running agent's backfill worker picks
it up (the log has one writer, the agent). When no agent runs, the command opens the log itself and
runs the request directly. Either way, rows are read in primary-key order in chunks, each chunk's
last key is saved once the chunk is durable, and an interrupted request resumes from there.

Rows are read as of the backfill's own transaction while the stream goes on; a row changed during
the backfill appears both as a snapshot row and as a stream change, and applying the log in order
converges on the source's current rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import wal
from agent.config import PostgresSourceConfig
from agent.errors import first_line
from agent.sources.postgres.snapshot import SnapshotReader
from agent.state import BackfillQueue, BackfillRequest, StateStore

log = logging.getLogger("agent.backfill")

_POLL_S = 1.0


def run_backfill(
    request: BackfillRequest,
    source: PostgresSourceConfig,
    log_: wal.Log,
    state: StateStore,
    *,
    progress: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run one request to the end; return the rows written. Marks it done or failed."""
    queue = BackfillQueue(state)
    queue.update(request.id, status="running", rows=request.rows)
    reader = SnapshotReader(
        dsn=source.dsn,
        source=source.name,
        log_=log_,
        state=state,
        lsn=0,  # not tied to a stream position
        chunk_rows=source.snapshot_chunk_rows,
        workers=source.snapshot_workers,
        snapshot_id=f"backfill-{request.id}",
        progress=progress,
        stop=stop,
    )
    try:
        rows = reader.read_tables(request.tables)
    except Exception as exc:
        queue.update(request.id, status="failed", rows=reader.rows_written, error=first_line(exc))
        raise
    if stop is not None and stop.is_set():
        return rows  # left running: the next start resumes it
    queue.update(request.id, status="done", rows=request.rows + rows)
    log.info("backfill.done", extra={"id": request.id, "source": source.name, "rows": rows})
    return rows


class BackfillWorker:
    """The agent's thread that runs queued backfill requests one at a time."""

    def __init__(self, sources: dict[str, PostgresSourceConfig], log_: wal.Log, state: StateStore) -> None:
        self.sources = sources
        self.log = log_
        self.state = state
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="backfill", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        queue = BackfillQueue(self.state)
        while not self.stop_event.wait(_POLL_S):
            request = queue.next_pending()
            if request is None:
                continue
            source = self.sources.get(request.source)
            if source is None:
                queue.update(request.id, status="failed", rows=0, error=f"no source named {request.source!r}")
                continue
            try:
                run_backfill(request, source, self.log, self.state, stop=self.stop_event)
            except Exception as exc:  # recorded on the request; the worker goes on with the next one
                log.error(
                    "backfill.failed",
                    extra={"id": request.id, "source": source.name, "error": first_line(exc)},
                )


def missing_tables(source: PostgresSourceConfig, tables: list[str]) -> list[str]:
    """The tables that do not exist in the source database (checked before queueing a request)."""
    from agent.sources.postgres.catalog import text_session

    with text_session(source.dsn) as conn:
        return [
            table
            for table in tables
            if conn.execute("SELECT to_regclass(%s)", (_quoted(table),)).fetchone() == (None,)
        ]


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
