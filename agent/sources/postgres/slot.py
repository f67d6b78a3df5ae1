"""Preparing a database for capture: server settings, the publication and the replication slot.

These run on an ordinary (non-replication) connection before streaming starts, and again on every
reconnect, so a slot dropped or invalidated while the agent was away is noticed before a single
change is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .errors import ReplicationSetupError, SlotLost
from .lsn import format_lsn, parse_lsn


@dataclass(frozen=True)
class SlotInfo:
    """A replication slot as `pg_replication_slots` shows it, with the server's current position."""

    name: str
    plugin: str | None
    database: str | None
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None
    current_lsn: int

    @property
    def restart_lag_bytes(self) -> int | None:
        """How much WAL the server keeps for this slot."""
        return None if self.restart_lsn is None else max(0, self.current_lsn - self.restart_lsn)

    @property
    def confirmed_lag_bytes(self) -> int | None:
        """How far the confirmed (flushed) position trails the server's current WAL position."""
        return (
            None if self.confirmed_flush_lsn is None else max(0, self.current_lsn - self.confirmed_flush_lsn)
        )


def validate_replication(conn: psycopg.Connection, *, slot: str | None = None) -> None:
    """Check the server can serve logical replication; ReplicationSetupError says what to change."""
    problems: list[str] = []
    settings = dict(
        conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders')"
        ).fetchall()
    )
    if settings.get("wal_level") != "logical":
        problems.append(
            f"wal_level is {settings.get('wal_level')!r}: set wal_level = logical in postgresql.conf and restart PostgreSQL"
        )
    max_slots = int(settings.get("max_replication_slots", 0))
    (used_slots,) = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()  # type: ignore[misc]
    slot_exists = slot is not None and slot_info(conn, slot) is not None
    if max_slots == 0 or (not slot_exists and used_slots >= max_slots):
        problems.append(
            f"max_replication_slots = {max_slots} and {used_slots} in use: raise max_replication_slots"
            " in postgresql.conf and restart PostgreSQL"
        )
    max_senders = int(settings.get("max_wal_senders", 0))
    (senders,) = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()  # type: ignore[misc]
    if max_senders == 0 or senders >= max_senders:
        problems.append(
            f"max_wal_senders = {max_senders} and {senders} in use: raise max_wal_senders"
            " in postgresql.conf and restart PostgreSQL"
        )
    (can_replicate,) = conn.execute(
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()  # type: ignore[misc]
    if not can_replicate:
        problems.append("the connecting role lacks REPLICATION: ALTER ROLE <role> WITH REPLICATION")
    if problems:
        raise ReplicationSetupError("; ".join(problems))


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    """The slot named `slot`, or None when it does not exist."""
    row = conn.execute(
        "SELECT slot_name, plugin, database, active_pid, restart_lsn::text, confirmed_flush_lsn::text,"
        " wal_status, pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    name, plugin, database, active_pid, restart, confirmed, wal_status, current = row
    return SlotInfo(
        name,
        plugin,
        database,
        active_pid,
        None if restart is None else parse_lsn(restart),
        None if confirmed is None else parse_lsn(confirmed),
        wal_status,
        parse_lsn(current),
    )


def check_slot(conn: psycopg.Connection, slot: str, *, database: str) -> SlotInfo | None:
    """The slot if it is usable, None if missing; SlotLost when PostgreSQL invalidated it, and
    ReplicationSetupError when it belongs to another plugin or database."""
    info = slot_info(conn, slot)
    if info is None:
        return None
    if info.wal_status == "lost":
        raise SlotLost(
            f"replication slot {slot!r} was invalidated by PostgreSQL (wal_status = lost, probably"
            " max_slot_wal_keep_size): the WAL it needed is gone, so changes were lost upstream"
        )
    if info.plugin != "pgoutput":
        raise ReplicationSetupError(f"replication slot {slot!r} uses plugin {info.plugin!r}, not pgoutput")
    if info.database != database:
        raise ReplicationSetupError(
            f"replication slot {slot!r} belongs to database {info.database!r}, not {database!r}"
        )
    return info


def ensure_publication(
    conn: psycopg.Connection, publication: str, tables: list[str], schemas: list[str]
) -> list[str]:
    """Create the publication when missing, add any missing tables and schemas to an existing one;
    return the statements run. With neither tables nor schemas, a missing publication is created
    FOR ALL TABLES."""
    for table in tables:
        schema, _, name = table.partition(".")
        found = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, name)
        ).fetchone()
        if found is None:
            raise ReplicationSetupError(f"publication_tables: table {table} does not exist")
    exists = conn.execute(
        "SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    statements: list[sql.Composable] = []
    pub = sql.Identifier(publication)
    if exists is None:
        parts = [_table_list(tables)] if tables else []
        if schemas:
            parts.append(
                sql.SQL("TABLES IN SCHEMA {}").format(sql.SQL(", ").join(map(sql.Identifier, schemas)))
            )
        target = sql.SQL(", ").join(parts) if parts else sql.SQL("ALL TABLES")
        statements.append(sql.SQL("CREATE PUBLICATION {} FOR {}").format(pub, target))
    elif not exists[0]:
        present = {
            f"{schema}.{name}"
            for schema, name in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
            ).fetchall()
        }
        missing = [table for table in tables if table not in present]
        if missing:
            statements.append(sql.SQL("ALTER PUBLICATION {} ADD {}").format(pub, _table_list(missing)))
        have_schemas = {
            row[0]
            for row in conn.execute(
                "SELECT n.nspname FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid"
                " JOIN pg_publication p ON p.oid = pn.pnpubid WHERE p.pubname = %s",
                (publication,),
            ).fetchall()
        }
        for schema in schemas:
            if schema not in have_schemas:
                statements.append(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLES IN SCHEMA {}").format(
                        pub, sql.Identifier(schema)
                    )
                )
    rendered = []
    for statement in statements:
        conn.execute(statement)
        rendered.append(statement.as_string(conn))
    return rendered


def _table_list(tables: list[str]) -> sql.Composable:
    names = [sql.Identifier(*table.split(".", 1)) for table in tables]
    return sql.SQL("TABLE {}").format(sql.SQL(", ").join(names))


def drop_slot(conn: psycopg.Connection, slot: str) -> bool:
    """Drop a slot (terminating the walsender using it); True when it existed."""
    info = slot_info(conn, slot)
    if info is None:
        return False
    if info.active_pid is not None:
        conn.execute("SELECT pg_terminate_backend(%s)", (info.active_pid,))
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


def describe_lag(info: SlotInfo) -> dict[str, object]:
    """The slot's health as plain values for logs and status."""
    return {
        "slot": info.name,
        "wal_status": info.wal_status,
        "current_lsn": format_lsn(info.current_lsn),
        "restart_lsn": None if info.restart_lsn is None else format_lsn(info.restart_lsn),
        "confirmed_flush_lsn": None
        if info.confirmed_flush_lsn is None
        else format_lsn(info.confirmed_flush_lsn),
        "restart_lag_bytes": info.restart_lag_bytes,
        "confirmed_lag_bytes": info.confirmed_lag_bytes,
    }
