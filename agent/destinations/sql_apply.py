"""Applying change batches to SQL tables: what the postgres and duckdb destinations share.

A batch becomes a few set-based statements, not one per row. Consecutive changes of one table and
one kind (upsert with the same columns, delete, append) form a step; each step sends its rows as
ONE JSON parameter (an array of arrays) that the statement unpacks and casts to the target
columns' types (`CAST(r->>i AS type)`). The database does the parsing, so values travel in the
JSON-native form the change records hold, and one round trip carries thousands of rows.

Within an upsert step only the last change per key is kept: the changes of a step write the same
columns, so the last one alone gives the same row as applying them in turn, and neither
PostgreSQL nor DuckDB lets one INSERT ... ON CONFLICT touch a row twice.

A dialect may write a step of inserts (or an append step) by a faster path first, see
`SqlApplier._copy_rows`; the statement above stays the reference for what a step does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from ..change import Change
from ..delivery import Delivery, LogBatch
from ..errors import ConfigError
from .base import PermanentError

META_COLUMNS = ("__ds_synced_at", "__ds_is_deleted", "__ds_op", "__ds_watermark")
JSON_TYPES = frozenset({"json", "jsonb"})
BYTES_TYPES = frozenset({"bytea", "blob"})
CHUNK_ROWS = 10_000  # rows per statement: one JSON parameter of a few MB at most
_UNHASHABLE = (dict, list)


def quote(name: str) -> str:
    """A quoted SQL identifier (the same rules in PostgreSQL and DuckDB)."""
    return '"' + name.replace('"', '""') + '"'


def split_table(text: str) -> tuple[str, str]:
    """("schema", "name") of "schema.name"; DDL events name tables with quotes where needed."""
    if '"' not in text:
        schema, dot, name = text.partition(".")
        return (schema, name) if dot else ("public", schema)
    parts, current, quoted, i = [], "", False, 0
    while i < len(text):
        char = text[i]
        if char == '"':
            if quoted and text[i + 1 : i + 2] == '"':
                current, i = current + '"', i + 2
                continue
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[-1])


def base_type(type_name: str | None) -> str:
    """ "numeric" of "numeric(10,2)", "timestamp with time zone" of "timestamp(3) with time zone"."""
    if not type_name:
        return ""
    text = type_name.lower().removesuffix("[]")
    while "(" in text:
        start = text.index("(")
        end = text.find(")", start)
        text = text[:start] + text[end + 1 :] if end >= 0 else text[:start]
    return text.strip().removeprefix("pg_catalog.")


@dataclass
class Step:
    """Consecutive changes of one table applied by one statement (per chunk of rows)."""

    kind: str  # upsert, delete, append, truncate, ddl
    table: str
    source: str
    columns: tuple[str, ...] = ()  # every row's dict has exactly these keys, in this order
    key: tuple[str, ...] = ()
    rows: dict[Any, tuple[dict[str, Any], str, int]] = field(default_factory=dict)  # upsert, delete
    appended: list[tuple[dict[str, Any], str, int]] = field(default_factory=list)  # append
    change: Change | None = None  # truncate, ddl
    seq: int = 0
    inserts_only: bool = True  # upsert: no row of the step comes from an update

    def row_list(self) -> list[tuple[dict[str, Any], str, int]]:
        return self.appended if self.kind == "append" else list(self.rows.values())


def _row_key(values: dict[str, Any], key: tuple[str, ...]) -> Any:
    """What identifies a row within a step: its key value, or the tuple of them.

    One key column holds one JSON type (it has one PostgreSQL type), so Python's equality of the
    values is that of their JSON text. A list or dict value is unhashable: its JSON text stands in.
    """
    if len(key) == 1:
        value = values.get(key[0])
        return orjson.dumps(value) if value.__class__ in _UNHASHABLE else value
    row = tuple(map(values.get, key))
    for value in row:
        if value.__class__ in _UNHASHABLE:
            return orjson.dumps(row)
    return row


def _old_key(change: Change, key: tuple[str, ...]) -> dict[str, Any] | None:
    """The key an update moved its row away from, or None when the key did not change."""
    after = change.after or {}
    new = {name: after.get(name) for name in key}
    if change.before is not None and all(name in change.before for name in key):
        old = {name: change.before[name] for name in key}
        if old != new:
            return old
    if change.key is not None and any(name in after for name in key) and change.key != new:
        return dict(change.key)
    return None


def plan(batch: list[Delivery], *, append: bool, stats: dict[str, int]) -> Iterator[Step]:
    """The steps that apply `batch` in order (messages are counted and left out)."""
    step: Step | None = None
    for delivery in batch:
        change, seq = delivery.change, delivery.seq
        op = change.op
        # Inserts and updates in target mode come first: they are nearly every row, and this loop
        # runs once per row, so the common case takes the fewest tests.
        if not append and (op == "insert" or op == "snapshot" or op == "update"):
            after = change.after
            if after is None:
                raise PermanentError(f"{op} on {change.table} carries no row (after is null)")
            key = tuple(change.key) if change.key else ()
            if op == "update":
                if not key:
                    raise PermanentError(f"update on {change.table} carries no key: target mode needs one")
                old = _old_key(change, key)
                if old is not None:  # the key changed: the old row goes first
                    if step is not None:
                        yield step
                    step = None
                    yield Step(
                        "delete",
                        change.table,
                        change.source,
                        key=key,
                        rows={_row_key(old, key): (old, op, seq)},
                    )
            columns = tuple(after)
            if (
                step is None
                or step.columns != columns
                or step.table != change.table
                or step.key != key
                or step.kind != "upsert"
            ):
                if step is not None:
                    yield step
                step = Step("upsert", change.table, change.source, columns, key)
            if op == "update":
                step.inserts_only = False
            rows = step.rows
            if len(key) == 1:  # _row_key, inlined for the usual one-column key
                value = after.get(key[0])
                rows[orjson.dumps(value) if value.__class__ in _UNHASHABLE else value] = (after, op, seq)
            elif key:
                rows[_row_key(after, key)] = (after, op, seq)
            else:  # no key: nothing to dedupe on, every row is inserted
                rows[len(rows)] = (after, op, seq)
            continue
        if op == "message":
            stats["messages_ignored"] += 1
            continue
        if op in ("truncate", "ddl"):
            if step is not None:
                yield step
                step = None
            if op == "truncate" and append:
                yield Step("append", change.table, change.source, appended=[({}, op, seq)])
            else:
                yield Step(op, change.table, change.source, change=change, seq=seq)
            continue
        key = tuple(change.key or ())
        if append:
            values = change.after if op != "delete" else (change.before or change.key or {})
            values = values or {}
            columns = tuple(values)
            if step is None or (step.kind, step.table, step.columns) != ("append", change.table, columns):
                if step is not None:
                    yield step
                step = Step("append", change.table, change.source, columns, key)
            step.appended.append((values, op, seq))
            continue
        if op != "delete":
            raise PermanentError(f"unknown op {op!r} on {change.table}")
        old = change.key or change.before
        if not key or not old:
            raise PermanentError(f"delete on {change.table} carries no key: target mode needs one")
        row = {name: old.get(name) for name in key}
        if step is None or (step.kind, step.table, step.key) != ("delete", change.table, key):
            if step is not None:
                yield step
            step = Step("delete", change.table, change.source, key=key)
        step.rows[_row_key(row, key)] = (row, op, seq)
    if step is not None:
        yield step


def chunks(rows: list[Any], size: int = CHUNK_ROWS) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def infer_column_type(values: list[Any], types: dict[str, str]) -> str:
    """The target type for a column known only by its values: the first non-null one decides."""
    for value in values:
        if value is None:
            continue
        if value.__class__ is bool:
            return types["bool"]
        if isinstance(value, int):
            return types["int"]
        if isinstance(value, float):
            return types["float"]
        if isinstance(value, (dict, list)):
            return types["json"]
        return types["text"]
    return types["text"]


def pg_array_text(value: list[Any], element_type: str) -> str:
    """PostgreSQL array input text (`{"a","b",NULL}`) from the nested lists the converters make."""
    element = base_type(element_type)

    def item(part: Any) -> str:
        if part is None:
            return "NULL"
        if isinstance(part, list):
            return "{" + ",".join(item(sub) for sub in part) + "}"
        if part.__class__ is bool:
            text = "t" if part else "f"
        elif element == "bytea" and isinstance(part, str):
            import base64

            text = "\\x" + base64.b64decode(part).hex()
        elif element in JSON_TYPES or isinstance(part, dict):
            text = orjson.dumps(part).decode()
        else:
            text = str(part)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return item(value)


def new_stats() -> dict[str, int]:
    return dict.fromkeys(
        (
            "batches",
            "rows_upserted",
            "rows_deleted",
            "rows_appended",
            "truncates",
            "ddl_applied",
            "ddl_ignored",
            "messages_ignored",
            "records_skipped",
        ),
        0,
    )


class SqlApplier(ABC):
    """The apply logic over a SQL connection; a subclass supplies the dialect and the connection.

    Subclass hooks: `_execute`, `_target_columns`, `_map_type`, `_bytes_expr`, `_array_text`,
    `_rows_from`, `_wire_converter`, `_raw_ddl`, `_copy_rows`, `_apply_stored`, and the class
    attributes below.
    """

    placeholder = "%s"
    lock_clause = ""  # appended to the position read inside the batch's transaction
    meta_types: ClassVar[dict[str, str]] = {}
    inferred_types: ClassVar[dict[str, str]] = {}  # bool, int, float, json, text -> target type

    def __init__(self, config: Any, state: Any) -> None:
        if config.soft_delete and not config.meta_enabled:
            raise ConfigError(
                "soft_delete = true needs meta_enabled = true (deleted rows are marked in __ds_is_deleted)",
                option=f"destinations.{config.name}.soft_delete",
            )
        self.config = config
        self.name: str = config.name
        self.state = state
        self.append = config.write_mode == "append"
        self.meta = config.meta_enabled or self.append  # an append table is a history: it needs them
        self.stats = new_stats()
        self._columns: dict[tuple[str, str], dict[str, str]] = {}  # target table -> column types
        self.position_schema, self.position_name = self._position_table()

    # -- hooks ----------------------------------------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Each database dialect defines this."""

    @abstractmethod
    def _target_columns(self, schema: str, table: str) -> dict[str, str] | None:
        """Each database dialect defines this."""

    @abstractmethod
    def _map_type(self, source_type: str) -> str:
        """Each database dialect defines this."""

    @abstractmethod
    def _bytes_expr(self, expr: str) -> str:
        """Each database dialect defines this."""

    @abstractmethod
    def _array_text(self, value: list[Any], element_type: str) -> str:
        """Each database dialect defines this."""

    def _raw_ddl(self, change: Change, schema: str, table: str) -> bool:
        return False

    def _copy_rows(self, step: Step, target: dict[str, str], sources: dict[str, str]) -> bool:
        """Write an upsert or append step by a faster path than the statement; False: not written.

        Called after the table has all the step's columns; `target` and `sources` are the target's
        and the source's column types. The default has no faster path.
        """
        return False

    def _apply_stored(self, batch: Sequence[Delivery]) -> bool:
        """Apply a whole batch straight from its stored records, without plan(); False: not done.

        Called inside the batch's transaction, after the position check. The default has no such path.
        """
        return False

    def _position_table(self) -> tuple[str | None, str]:
        schema, dot, name = self.config.position_table.partition(".")
        return (schema, name) if dot else (None, schema)

    # -- names and types ------------------------------------------------------------------------

    def target_name(self, table: str) -> tuple[str, str]:
        schema, name = split_table(table)
        return getattr(self.config, "schema_name", None) or schema, name

    def position_ident(self) -> str:
        name = quote(self.position_name)
        return name if self.position_schema is None else f"{quote(self.position_schema)}.{name}"

    def source_types(self, source: str, table: str) -> dict[str, str]:
        columns = self.state.table_schema(source, table) if self.state is not None else None
        return {column["name"]: column["type"] for column in columns or ()}

    def _column_type(self, name: str, source_types: dict[str, str], values: list[Any]) -> str:
        mapped = self.config.type_mappings
        source_type = source_types.get(name)
        if source_type is not None:
            for candidate in (
                source_type,
                base_type(source_type) + ("[]" if source_type.endswith("[]") else ""),
            ):
                if candidate in mapped:
                    return mapped[candidate]
            return self._map_type(source_type)
        return infer_column_type(values, self.inferred_types)

    # -- the position ---------------------------------------------------------------------------

    def _create_position_table(self) -> None:
        if self.position_schema is not None:
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.position_schema)}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.position_ident()} (destination {self.inferred_types['text']}"
            f" PRIMARY KEY, seq BIGINT NOT NULL, updated_at {self.meta_types['__ds_synced_at']})"
        )

    def _read_position(self, lock: bool = False) -> int:
        rows = self._execute(
            f"SELECT seq FROM {self.position_ident()} WHERE destination = {self.placeholder}"
            + (self.lock_clause if lock else ""),
            (self.name,),
        )
        return int(rows[0][0]) if rows else 0

    def _save_position(self, seq: int) -> None:
        p = self.placeholder
        self._execute(
            f"INSERT INTO {self.position_ident()} (destination, seq, updated_at) VALUES ({p}, {p}, now())"
            " ON CONFLICT (destination) DO UPDATE SET seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at",
            (self.name, seq),
        )

    # -- one batch, inside the caller's transaction --------------------------------------------

    def apply(self, batch: Sequence[Delivery]) -> None:
        """Apply the records past the stored position, and store the new position."""
        done = self._read_position(lock=True)
        if isinstance(batch, LogBatch):  # records in log order: no Delivery needed for this
            seqs = [batch.records[0][0], batch.records[-1][0]] if batch.records else []
        else:
            seqs = [delivery.seq for delivery in batch]
        todo: Sequence[Delivery]
        if seqs and min(seqs) > done:  # the usual case: the sender sends only records past the position
            todo, last = batch, max(seqs)
        else:
            todo = [delivery for delivery in batch if delivery.seq > done]
            self.stats["records_skipped"] += len(batch) - len(todo)
            if not todo:
                return
            last = max(delivery.seq for delivery in todo)
        if not self._apply_stored(todo):
            for step in plan(todo, append=self.append, stats=self.stats):
                getattr(self, f"_step_{step.kind}")(step)
        self._save_position(last)
        self.stats["batches"] += 1

    @abstractmethod
    def _rows_from(self) -> str:
        """Each database dialect defines this."""

    def _value_expr(self, index: int, target_type: str) -> str:
        if base_type(target_type) in BYTES_TYPES:
            return self._bytes_expr(f"(r->>{index})")
        return f"CAST(r->>{index} AS {target_type})"

    def _wire_converter(self, type_name: str | None) -> Callable[[Any], Any] | None:
        """How a column's values go into the JSON parameter; None: as they are.

        `r->>i` yields a nested array or object as its JSON text, so most values need nothing.
        A JSON column needs its document as text (a JSON string document would otherwise lose
        its quotes), and a PostgreSQL array column needs array input text.
        """
        if type_name and type_name.endswith("[]"):
            element = type_name[:-2]
            array_text = self._array_text
            return lambda value: array_text(value, element) if isinstance(value, list) else value
        if base_type(type_name) in JSON_TYPES:
            return lambda value: orjson.dumps(value).decode()
        return None

    def _ensure_table(
        self, step: Step, columns: tuple[str, ...], entries: list[tuple[dict[str, Any], str, int]]
    ) -> dict[str, str]:
        """The target's column types, after creating the table or adding missing columns."""
        schema, name = self.target_name(step.table)
        cached = self._columns.get((schema, name))
        target = cached if cached is not None else self._target_columns(schema, name)
        wanted = list(columns) + (list(META_COLUMNS) if self.meta else [])
        if target is not None and all(column in target for column in wanted):
            self._columns[(schema, name)] = target
            return target
        sources = self.source_types(step.source, step.table)
        types = {}
        for column in wanted:
            if column in META_COLUMNS:
                types[column] = self.meta_types[column]
            else:
                types[column] = self._column_type(
                    column, sources, [row.get(column) for row, _op, _seq in entries]
                )
        if target is None:
            if not self.config.create_tables:
                raise PermanentError(
                    f"target table {schema}.{name} does not exist and create_tables = false",
                    hint="create the table, or set create_tables = true",
                )
            for column in sources:  # the source's other columns too (TOASTed, or not sent yet)
                if column not in types:
                    types[column] = self._column_type(column, sources, [])
            ordered = [c for c in sources if c in types] + [c for c in wanted if c not in sources]
            key = "" if self.append or not step.key else f", PRIMARY KEY ({', '.join(map(quote, step.key))})"
            body = ", ".join(f"{quote(c)} {types[c]}" for c in ordered)
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            self._execute(f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(name)} ({body}{key})")
        else:
            missing = [c for c in wanted if c not in target]
            if not self.config.apply_ddl and any(c not in META_COLUMNS for c in missing):
                raise PermanentError(
                    f"target table {schema}.{name} lacks column(s) {', '.join(missing)} and apply_ddl = false",
                    hint="add the columns to the target, or set apply_ddl = true",
                )
            for column in missing:
                self._add_column(schema, name, column, types[column])
        fresh = self._target_columns(schema, name)
        assert fresh is not None
        self._columns[(schema, name)] = fresh
        return fresh

    def _add_column(self, schema: str, name: str, column: str, type_name: str) -> None:
        self._execute(
            f"ALTER TABLE {quote(schema)}.{quote(name)} ADD COLUMN IF NOT EXISTS {quote(column)} {type_name}"
        )

    def _write_rows(self, step: Step, conflict: str) -> None:
        entries = step.row_list()
        target = self._ensure_table(step, step.columns, entries)
        sources = self.source_types(step.source, step.table)
        if self._copy_rows(step, target, sources):
            return
        schema, name = self.target_name(step.table)
        columns = list(step.columns)
        exprs = [self._value_expr(i, target[c]) for i, c in enumerate(columns)]
        if self.meta:
            n = len(columns)
            deleted = f"CAST(r->>{n + 2} AS BOOLEAN)"
            exprs += ["now()", deleted, f"r->>{n}", f"CAST(r->>{n + 1} AS BIGINT)"]
            columns += list(META_COLUMNS)
        convert = [
            (i, converter)
            for i, c in enumerate(step.columns)
            if (converter := self._wire_converter(sources.get(c) or target.get(c))) is not None
        ]
        rows = []
        for values, op, seq in entries:  # the hot loop: one list per row, converters only where needed
            row = list(values.values())  # in step.columns' order: plan() grouped the rows by it
            for i, converter in convert:
                if row[i] is not None:
                    row[i] = converter(row[i])
            if self.meta:
                row += (op, seq, op == "delete")
            rows.append(row)
        sql = (
            f"INSERT INTO {quote(schema)}.{quote(name)} ({', '.join(map(quote, columns))})"
            f" SELECT {', '.join(exprs)} FROM {self._rows_from()}{conflict}"
        )
        for chunk in chunks(rows):
            self._execute(sql, (orjson.dumps(chunk).decode(),))

    def _step_upsert(self, step: Step) -> None:
        conflict = ""
        if step.key:
            updates = [c for c in step.columns if c not in step.key] + (
                list(META_COLUMNS) if self.meta else []
            )
            sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updates)
            keys = ", ".join(map(quote, step.key))
            conflict = (
                f" ON CONFLICT ({keys}) DO UPDATE SET {sets}" if sets else f" ON CONFLICT ({keys}) DO NOTHING"
            )
        self._write_rows(step, conflict)
        self.stats["rows_upserted"] += len(step.rows)

    def _step_append(self, step: Step) -> None:
        self._write_rows(step, "")
        self.stats["rows_appended"] += len(step.appended)

    def _step_delete(self, step: Step) -> None:
        schema, name = self.target_name(step.table)
        target = self._columns.get((schema, name)) or self._target_columns(schema, name)
        if target is None:  # nothing was ever written there: nothing to delete
            self.stats["rows_deleted"] += len(step.rows)
            return
        keys = [self._value_expr(i, target.get(c, "TEXT")) + f" AS k{i}" for i, c in enumerate(step.key)]
        n = len(step.key)
        source = f"(SELECT {', '.join(keys)}, CAST(r->>{n} AS BIGINT) AS seq FROM {self._rows_from()}) AS v"
        match = " AND ".join(f"t.{quote(c)} = v.k{i}" for i, c in enumerate(step.key))
        table = f"{quote(schema)}.{quote(name)}"
        if self.config.soft_delete:
            sql = f"UPDATE {table} AS t SET {self._soft_delete_sets('v.seq', 'delete')} FROM {source} WHERE {match}"
        else:
            sql = f"DELETE FROM {table} AS t USING {source} WHERE {match}"
        rows = [[values.get(c) for c in step.key] + [seq] for values, _op, seq in step.rows.values()]
        for chunk in chunks(rows):
            self._execute(sql, (orjson.dumps(chunk).decode(),))
        self.stats["rows_deleted"] += len(rows)

    def _soft_delete_sets(self, seq_expr: str, op: str) -> str:
        return (
            f'"__ds_is_deleted" = true, "__ds_op" = \'{op}\', "__ds_synced_at" = now(),'
            f' "__ds_watermark" = {seq_expr}'
        )

    def _step_truncate(self, step: Step) -> None:
        schema, name = self.target_name(step.table)
        target = self._columns.get((schema, name)) or self._target_columns(schema, name)
        if target is not None:
            table = f"{quote(schema)}.{quote(name)}"
            if self.config.soft_delete:
                self._execute(
                    f"UPDATE {table} SET {self._soft_delete_sets(str(int(step.seq)), 'truncate')}"
                    ' WHERE "__ds_is_deleted" IS NOT TRUE'
                )
            else:
                self._execute(f"TRUNCATE {table}")
        self.stats["truncates"] += 1

    def _step_ddl(self, step: Step) -> None:
        """Evolve the target after a DDL event; see the destination docs for what is supported."""
        change = step.change
        assert change is not None
        if not self.config.apply_ddl or not step.table:
            self.stats["ddl_ignored"] += 1
            return
        schema, name = self.target_name(step.table)
        source_table = ".".join(split_table(step.table))
        self._columns.pop((schema, name), None)
        applied = self._raw_ddl(change, schema, name)
        self._columns.pop((schema, name), None)
        stored = self.state.table_schema(step.source, source_table) if self.state is not None else None
        target = self._target_columns(schema, name)
        if stored:
            if target is None and not self.config.create_tables:
                self.stats["ddl_ignored"] += 1
                return
            key = () if self.append else tuple(c["name"] for c in stored if c["key"])
            # Creating from, or adding, the stored columns: one empty step with every column.
            self._ensure_table(
                Step("upsert", source_table, step.source, key=key), tuple(c["name"] for c in stored), []
            )
            applied = True
        self.stats["ddl_applied" if applied else "ddl_ignored"] += 1
