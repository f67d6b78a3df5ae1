"""certify: source table vs its copy in PostgreSQL or DuckDB, normalised by the source's types; the
differing keys, sampling, and the `certify` command's output and exit codes."""

from __future__ import annotations

import json
import uuid

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from agent.certify import CertifyError, certify_table, normalise
from cli.certify import certify_command
from tests.agent_harness import execute

SOURCE = (
    "CREATE TABLE orders (id int, region text, amount numeric(10,2), price float8, ratio real, doc jsonb,"
    " at timestamptz, tags text[], raw bytea, note text, PRIMARY KEY (id, region))"
)
ROWS = (
    "INSERT INTO orders SELECT g, 'eu', g * 1.5, g / 3.0, g / 7.0, jsonb_build_object('b', g, 'a', 'x'),"
    " '2024-01-02 03:04:05.25+00'::timestamptz + g * interval '1 min', ARRAY['a', NULL], '\\x01', CASE WHEN g = 5"
    " THEN '' END FROM generate_series(1, 100) g"
)


@pytest.fixture
def copy_dsn(pg_server):
    name = f"copy_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    yield dsn
    if not pg_server.is_running():
        pg_server.start()
    pg_server.drop_database(name)


def make_copy(source_dsn, copy_dsn):
    """A copy with other but equivalent representations, metadata columns, and a soft-deleted row."""
    execute(source_dsn, SOURCE, ROWS)
    execute(
        copy_dsn,
        "CREATE TABLE orders (id bigint, region varchar(5), amount numeric, price float8, ratio real, doc json,"
        " at timestamptz, tags text[], raw bytea, note text, __ds_is_deleted boolean, __ds_op text,"
        " __ds_watermark bigint, PRIMARY KEY (id, region))",
        "SET TimeZone = 'Asia/Kolkata'",
        "INSERT INTO orders SELECT g, 'eu', (g * 1.5)::numeric(10,3), g / 3.0, g / 7.0,"
        " json_build_object('a', 'x', 'b', g), '2024-01-02 03:04:05.25+00'::timestamptz + g * interval '1 min',"
        " ARRAY['a', NULL], '\\x01', CASE WHEN g = 5 THEN '' END, false, 'insert', g FROM generate_series(1, 100) g",
        "INSERT INTO orders VALUES (999, 'eu', 1, 1, 1, '{}', now(), '{}', '', 'gone', true, 'delete', 1000)",
    )


def test_an_equivalent_copy_is_equal(pg_dsn, copy_dsn):
    make_copy(pg_dsn, copy_dsn)
    result = certify_table(pg_dsn, copy_dsn, "public.orders")
    assert result.equal, result
    assert (result.source_rows, result.dest_rows, result.compared_rows) == (100, 100, 100)
    assert result.source_hash == result.dest_hash and not result.sampled


def test_differences_are_listed_by_key(pg_dsn, copy_dsn):
    make_copy(pg_dsn, copy_dsn)
    execute(
        copy_dsn,
        "DELETE FROM orders WHERE id = 1",
        "INSERT INTO orders (id, region) VALUES (500, 'us')",
        "UPDATE orders SET note = NULL WHERE id = 5",  # '' and NULL differ
        "UPDATE orders SET amount = amount + 0.01 WHERE id = 7",
        "UPDATE orders SET __ds_is_deleted = true WHERE id = 8",  # marked deleted: missing
    )
    result = certify_table(pg_dsn, copy_dsn, "public.orders", max_keys=10)
    assert not result.equal
    assert result.missing == [{"id": 1, "region": "eu"}, {"id": 8, "region": "eu"}]
    assert result.extra == [{"id": 500, "region": "us"}]
    assert sorted(k["id"] for k in result.different) == [5, 7]
    assert result.differences == 5 and result.source_hash != result.dest_hash
    assert len(certify_table(pg_dsn, copy_dsn, "public.orders", max_keys=1).missing) == 1


def test_sampling_is_deterministic_by_key(pg_dsn, copy_dsn):
    make_copy(pg_dsn, copy_dsn)
    first = certify_table(pg_dsn, copy_dsn, "public.orders", sample_rate=0.3)
    again = certify_table(pg_dsn, copy_dsn, "public.orders", sample_rate=0.3)
    assert first.equal and first.sampled and 10 < first.compared_rows < 60
    assert (first.compared_rows, first.source_hash) == (again.compared_rows, again.source_hash)
    limited = certify_table(pg_dsn, copy_dsn, "public.orders", sample_limit=7)
    assert limited.equal and limited.compared_rows == 7
    # A difference is found exactly when its key is in the sample.
    execute(copy_dsn, "UPDATE orders SET note = 'changed'")
    sampled = certify_table(pg_dsn, copy_dsn, "public.orders", sample_rate=0.3)
    assert sampled.differences == first.compared_rows and not sampled.equal
    with pytest.raises(CertifyError, match="sample rate"):
        certify_table(pg_dsn, copy_dsn, "public.orders", sample_rate=1.5)


def test_a_duckdb_copy_and_a_missing_column(pg_dsn, tmp_path):
    execute(pg_dsn, SOURCE, ROWS)
    path = str(tmp_path / "copy.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE SCHEMA public; CREATE TABLE public.orders (id INTEGER, region VARCHAR, amount DECIMAL(10,2),"
            ' price DOUBLE, ratio FLOAT, doc JSON, "at" TIMESTAMPTZ, tags VARCHAR, raw BLOB, note VARCHAR,'
            " __ds_synced_at TIMESTAMPTZ, PRIMARY KEY (id, region))"
        )
        conn.execute(
            "INSERT INTO public.orders SELECT g, 'eu', g * 1.5, g / 3.0, g / 7.0, '{\"a\":\"x\",\"b\":' || g || '}',"
            " TIMESTAMPTZ '2024-01-02 03:04:05.25+00' + g * INTERVAL 1 MINUTE, '[\"a\",null]', '\\x01'::BLOB,"
            " CASE WHEN g = 5 THEN '' END, now() FROM range(1, 101) t(g)"
        )
    result = certify_table(pg_dsn, path, "public.orders", dest_kind="duckdb")
    assert result.equal, result
    with duckdb.connect(path) as conn:
        conn.execute("ALTER TABLE public.orders DROP COLUMN note")
    result = certify_table(pg_dsn, path, "public.orders", dest_kind="duckdb")
    assert not result.equal and result.missing_columns == ["note"] and result.differences == 0


def test_normalisation_by_source_type():
    assert normalise("1.50", "numeric(10,2)") == normalise("1.5", "numeric") == "1.5"
    assert normalise("2024-01-02T05:04:05+02:00", "timestamp with time zone") == "2024-01-02T03:04:05.000000Z"
    assert normalise({"b": 1, "a": [1]}, "jsonb") == '{"a":[1],"b":1}'
    assert normalise("NaN", "double precision") == normalise(float("nan"), "double precision") == "nan"
    assert normalise(b"\x01", "bytea") == normalise("AQ==", "bytea")
    assert normalise("", "text") == "" and normalise(None, "text") is None
    assert normalise(["1.0", None], "numeric[]") == ["1", None]


def app() -> typer.Typer:
    application = typer.Typer()
    application.callback()(lambda: None)  # a command group, as in cli/main.py
    application.command("certify")(certify_command)
    return application


def run(*args):
    return CliRunner().invoke(app(), ["certify", *args])


def test_command_exit_codes_and_output(pg_dsn, copy_dsn, tmp_path):
    make_copy(pg_dsn, copy_dsn)
    equal = run("--source-dsn", pg_dsn, "--dest-dsn", copy_dsn, "--table", "orders")
    assert equal.exit_code == 0, equal.output
    assert "public.orders: equal" in equal.output
    execute(copy_dsn, "DELETE FROM orders WHERE id = 3")
    different = run("--source-dsn", pg_dsn, "--dest-dsn", copy_dsn, "--table", "public.orders")
    assert different.exit_code == 1
    assert 'missing {"id":3,"region":"eu"}' in different.output
    as_json = run("--source-dsn", pg_dsn, "--dest-dsn", copy_dsn, "--table", "public.orders", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["missing"] == [{"id": 3, "region": "eu"}]
    for args, message in [
        (["--dest-dsn", copy_dsn, "--table", "orders"], "give --source-dsn"),
        (["--source-dsn", pg_dsn, "--dest-dsn", copy_dsn, "--table", "nope"], "no table public.nope"),
        (
            ["--source-dsn", pg_dsn, "--dest-dsn", copy_dsn, "--table", "orders", "--sample-rate", "2"],
            "sample rate",
        ),
        (
            ["--source-dsn", pg_dsn, "--dest-dsn", str(tmp_path / "none.duckdb"), "--table", "orders"],
            "neither",
        ),
        (["--source-dsn", pg_dsn + "_absent", "--dest-dsn", copy_dsn, "--table", "orders"], "PostgreSQL"),
        (["--destination", "x", "--source-dsn", pg_dsn, "--table", "orders"], "--destination needs --config"),
    ]:
        bad = run(*args)
        assert bad.exit_code == 2, (args, bad.output)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, bad.stderr)
        assert "Traceback" not in bad.output


def test_command_takes_the_source_and_destination_from_the_config(pg_dsn, copy_dsn, tmp_path):
    make_copy(pg_dsn, copy_dsn)
    execute(copy_dsn, "CREATE SCHEMA copy", "ALTER TABLE orders SET SCHEMA copy")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[[sources]]\nname = "app"\ntype = "postgres"\ndsn = "{pg_dsn}"\nslot = "s"\npublication = "p"\n'
        f'[[destinations]]\nname = "warehouse"\ntype = "postgres"\ndsn = "{copy_dsn}"\nschema = "copy"\n'
        f'[[destinations]]\nname = "hook"\ntype = "http"\nurl = "http://127.0.0.1:9/"\n'
    )
    ok = run("--config", str(config), "--destination", "warehouse", "--table", "public.orders")
    assert ok.exit_code == 0, ok.output
    assert "equal to copy.orders" in ok.output
    unknown = run("--config", str(config), "--destination", "nowhere", "--table", "public.orders")
    assert unknown.exit_code == 2 and "no destination named 'nowhere'" in unknown.stderr
    wrong_type = run("--config", str(config), "--destination", "hook", "--table", "public.orders")
    assert wrong_type.exit_code == 2 and "only postgres and duckdb" in wrong_type.stderr


def test_a_table_without_primary_key_cannot_be_certified(pg_dsn, copy_dsn):
    execute(pg_dsn, "CREATE TABLE loose (a int)")
    with pytest.raises(CertifyError, match="no primary key"):
        certify_table(pg_dsn, copy_dsn, "public.loose")
