"""agent.config: the example file loads, defaults match wal's, env overrides, one-line errors."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

import wal
from agent.config import AgentConfig, PostgresSourceConfig, WalConfig, load_config
from agent.errors import AgentError, ConfigError

EXAMPLE = """\
data_dir = "./data"

[wal]
fsync = "always"
segment_bytes = "64MiB"

[[sources]]
name = "app"
type = "postgres"
dsn = "postgresql://postgres@127.0.0.1:5432/app"
slot = "wallaby_app"
publication = "wallaby_app"
publication_tables = ["public.orders", "public.customers"]
"""

SOURCE = """\
[[sources]]
name = "app"
type = "postgres"
dsn = "postgresql:///app"
slot = "wallaby_app"
publication = "wallaby_app"
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write config.toml in a fresh working directory, so messages name it as `config.toml`."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> str:
        (tmp_path / "config.toml").write_text(textwrap.dedent(text))
        return "config.toml"

    return _write


def test_the_example_loads(config_file, tmp_path):
    config = load_config(config_file(EXAMPLE), environ={})
    assert config.data_dir == tmp_path / "data"
    assert config.wal.fsync == "always"
    assert config.wal.segment_bytes == 64 << 20
    [source] = config.sources
    assert isinstance(source, PostgresSourceConfig)
    assert (source.name, source.slot, source.publication) == ("app", "wallaby_app", "wallaby_app")
    assert source.publication_tables == ["public.orders", "public.customers"]


def test_defaults(tmp_path):
    config = load_config(None, environ={})
    assert config.data_dir == Path("~/.wallaby").expanduser()
    assert (config.log_level, config.log_format, config.sources) == ("info", "auto", [])
    assert wal.LogOptions(**config.wal.log_options()) == wal.LogOptions()

    source = PostgresSourceConfig(name="a", type="postgres", dsn="x", slot="s", publication="p")
    assert (source.create_slot, source.ensure_publication, source.messages) == (True, True, True)
    assert (source.snapshot, source.snapshot_chunk_rows, source.snapshot_workers) == ("never", 10_000, 1)
    assert (source.toast_fetch, source.capture_ddl, source.start_lsn) == ("none", False, None)
    assert (source.ddl.gate, source.ddl.auto_approve, source.ddl.auto_apply) == (False, True, True)
    assert (source.heartbeat_interval, source.status_interval, source.connect_timeout) == (10.0, 1.0, 10.0)
    reconnect = source.reconnect
    assert (reconnect.initial_delay, reconnect.max_delay, reconnect.multiplier) == (1.0, 60.0, 2.0)
    assert (reconnect.jitter, reconnect.max_attempts) == (0.5, None)


def test_log_options_names_every_wal_option_and_nothing_else():
    names = {field.name for field in dataclasses.fields(wal.LogOptions)}
    assert set(WalConfig().log_options()) == names


def test_log_options_open_a_real_log(config_file, tmp_path):
    text = """\
    [wal]
    fsync = "interval"
    fsync_interval_ms = 5
    segment_bytes = "1MiB"
    segment_max_age = "5m"
    max_record_bytes = "64k"
    max_unarchived_bytes = "8MiB"
    on_full = "error"
    full_timeout = "500ms"
    archive_level = 9
    auto_archive = false
    retention_age = "7d"
    retention_bytes = "1GiB"
    min_free_bytes = 0
    """
    config = load_config(config_file(text), environ={})
    options = config.wal.log_options()
    assert options["segment_max_age_s"] == 300.0
    assert options["full_timeout_s"] == 0.5
    assert options["retention_max_age_s"] == 7 * 86400.0
    with wal.open(str(tmp_path / "log"), **options) as log:
        assert log.append(b"hello") == 1
        assert log.options.segment_bytes == 1 << 20
        assert log.options.max_record_bytes == 64 << 10


@pytest.mark.parametrize(
    ("typed", "seconds"), [(10, 10.0), (2.5, 2.5), ('"500ms"', 0.5), ('"10s"', 10.0), ('"5m"', 300.0)]
)
def test_durations_take_seconds_or_a_unit(config_file, typed, seconds):
    config = load_config(config_file(f"[wal]\nsegment_max_age = {typed}\n"), environ={})
    assert config.wal.segment_max_age == seconds


@pytest.mark.parametrize(("typed", "size"), [(4096, 4096), ('"512k"', 512 << 10), ('"2GB"', 2_000_000_000)])
def test_sizes_take_bytes_or_a_unit(config_file, typed, size):
    config = load_config(config_file(f"[wal]\nsegment_bytes = {typed}\n"), environ={})
    assert config.wal.segment_bytes == size


def test_source_values_are_normalised(config_file):
    text = (
        SOURCE
        + 'publication_tables = ["orders", "sales.invoices", \'"Odd"."Name"\']\nstart_lsn = "16/b374d848"\n'
    )
    [source] = load_config(config_file(text), environ={}).sources
    assert source.publication_tables == ["public.orders", "sales.invoices", '"Odd"."Name"']
    assert source.start_lsn == "16/B374D848"


# -- data_dir -----------------------------------------------------------------------------------


def test_a_relative_data_dir_in_the_file_is_relative_to_the_file(tmp_path, monkeypatch):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "config.toml").write_text('data_dir = "state/../data"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("etc/config.toml", environ={}).data_dir == config_dir / "data"


def test_a_relative_data_dir_from_the_environment_is_relative_to_the_working_directory(config_file, tmp_path):
    config = load_config(config_file('data_dir = "/elsewhere"\n'), environ={"WALLABY_DATA_DIR": "here"})
    assert config.data_dir == tmp_path / "here"


def test_data_dir_expands_home_and_keeps_absolute_paths(config_file, tmp_path):
    assert load_config(config_file('data_dir = "~/w"\n'), environ={}).data_dir == Path("~/w").expanduser()
    absolute = tmp_path / "abs"
    assert load_config(config_file(f'data_dir = "{absolute}"\n'), environ={}).data_dir == absolute


# -- the environment ----------------------------------------------------------------------------


def test_environment_overrides_the_file(config_file):
    environ = {
        "WALLABY_WAL__FSYNC": "never",
        "WALLABY_WAL__SEGMENT_BYTES": "1MiB",
        "WALLABY_LOG_LEVEL": "DEBUG",
        "wallaby_log_format": "json",  # names are case-insensitive
    }
    config = load_config(config_file(EXAMPLE), environ=environ)
    assert (config.wal.fsync, config.wal.segment_bytes) == ("never", 1 << 20)
    assert (config.log_level, config.log_format) == ("debug", "json")
    assert config.sources[0].name == "app"  # untouched by the override of other options


def test_sources_from_the_environment_replace_the_file_list(config_file):
    environ = {
        "WALLABY_SOURCES": '[{"name": "b", "type": "postgres", "dsn": "x", "slot": "s", "publication": "p"}]'
    }
    config = load_config(config_file(EXAMPLE), environ=environ)
    assert [source.name for source in config.sources] == ["b"]


def test_ddl_variables_set_every_source_over_the_file(config_file):
    text = (
        SOURCE
        + "[sources.ddl]\ngate = false\nauto_apply = true\n"
        + SOURCE.replace('"app"', '"other"').replace("/app", "/other")
    )
    environ = {"WALLABY_DDL_GATE": "true", "WALLABY_DDL_AUTO_APPLY": "0"}
    config = load_config(config_file(text), environ=environ)
    for source in config.sources:
        assert (source.ddl.gate, source.ddl.auto_approve, source.ddl.auto_apply) == (True, True, False)


def test_only_the_given_environment_is_read(config_file, monkeypatch):
    monkeypatch.setenv("WALLABY_LOG_LEVEL", "error")
    monkeypatch.setenv("WALLABY_DATA_DIR", "/from/os/environ")
    assert load_config(config_file(EXAMPLE), environ={}).log_level == "info"
    assert AgentConfig().log_level == "info"  # direct construction never reads the environment
    assert load_config(config_file(EXAMPLE)).log_level == "error"  # the default is os.environ


# -- errors -------------------------------------------------------------------------------------

ERRORS = [
    ("", None, "config.toml: no such file"),
    (
        'data_dir = "x"\n\n[wal]\nfsync = \n',
        {},
        "config.toml: line 4: invalid TOML: invalid value at column 9",
    ),
    ('[wal]\nfsnyc = "never"\n', {}, "config.toml: wal.fsnyc: unknown option"),
    ("colour = 1\n", {}, "config.toml: colour: unknown option"),
    ('[wal]\nsegment_bytes = "64 lizards"\n', {}, 'config.toml: wal.segment_bytes: not a size: "64 lizards"'),
    ("[wal]\nsegment_bytes = -1\n", {}, "config.toml: wal.segment_bytes: must not be negative (got -1)"),
    (
        "[wal]\nsegment_bytes = 10\n",
        {},
        "config.toml: wal.segment_bytes: must be greater than or equal to 48 (got 10)",
    ),
    ('[wal]\nfull_timeout = "soon"\n', {}, 'config.toml: wal.full_timeout: not a duration: "soon"'),
    ("[wal]\nfull_timeout = true\n", {}, "config.toml: wal.full_timeout: not a duration: true"),
    (
        '[wal]\nfsync = "sometimes"\n',
        {},
        'config.toml: wal.fsync: must be "always", "interval" or "never" (got "sometimes")',
    ),
    (
        "[wal]\narchive_level = 23\n",
        {},
        "config.toml: wal.archive_level: must be less than or equal to 22 (got 23)",
    ),
    (
        '[wal]\nauto_archive = "maybe"\n',
        {},
        'config.toml: wal.auto_archive: must be true or false (got "maybe")',
    ),
    ("wal = 3\n", {}, "config.toml: wal: must be a table (got 3)"),
    (
        'log_level = "loud"\n',
        {},
        'config.toml: log_level: must be "debug", "info", "warning" or "error" (got "loud")',
    ),
    ('data_dir = ""\n', {}, "config.toml: data_dir: must not be empty"),
    (
        SOURCE.replace('"wallaby_app"\npub', '"Wallaby-App"\npub'),
        {},
        'config.toml: sources[0].slot: must be lowercase letters, digits and underscores (got "Wallaby-App")',
    ),
    (
        SOURCE.replace('slot = "wallaby_app"', f'slot = "{"s" * 64}"'),
        {},
        "config.toml: sources[0].slot: must be at most 63 characters (got 64)",
    ),
    (
        SOURCE.replace('name = "app"', 'name = "my app"'),
        {},
        'config.toml: sources[0].name: must be letters, digits, "_" or "-" (got "my app")',
    ),
    (SOURCE.replace('"postgresql:///app"', '" "'), {}, "config.toml: sources[0].dsn: must not be empty"),
    (
        SOURCE.replace('slot = "wallaby_app"\n', ""),
        {},
        "config.toml: sources[0].slot: required option is missing",
    ),
    (
        SOURCE.replace('type = "postgres"\n', ""),
        {},
        "config.toml: sources[0].type: required option is missing",
    ),
    (
        SOURCE.replace('"postgres"', '"mysql"'),
        {},
        'config.toml: sources[0].type: unknown source type "mysql" (expected "postgres", "http_ingest")',
    ),
    (
        SOURCE + 'publication_tables = ["public.orders", "a.b.c"]\n',
        {},
        'config.toml: sources[0].publication_tables[1]: must be "schema.table" or "table" (got "a.b.c")',
    ),
    (
        SOURCE + 'start_lsn = "16-B3"\n',
        {},
        'config.toml: sources[0].start_lsn: must be an LSN such as "16/B374D848" (got "16-B3")',
    ),
    (SOURCE + "typo = 1\n", {}, "config.toml: sources[0].typo: unknown option"),
    (
        SOURCE + "messages = false\ncapture_ddl = true\n",
        {},
        "config.toml: sources[0].capture_ddl: needs messages = true (captured DDL travels as logical messages)",
    ),
    (SOURCE + "[sources.ddl]\ngait = true\n", {}, "config.toml: sources[0].ddl.gait: unknown option"),
    (
        SOURCE + '[sources.reconnect]\ninitial_delay = "5s"\nmax_delay = "1s"\n',
        {},
        "config.toml: sources[0].reconnect.max_delay: must not be less than initial_delay (5.0s)",
    ),
    (SOURCE + SOURCE, {}, 'config.toml: sources[1].name: duplicate source name "app"'),
    (
        SOURCE + SOURCE.replace('name = "app"', 'name = "b"'),
        {},
        'config.toml: sources[1].slot: slot "wallaby_app" is already used by source "app" on the same dsn',
    ),
    (
        '[wal]\nfsync = "sometimes"\nsegment_bytes = "lots"\narchive_level = 0\n',
        {},
        'config.toml: wal.fsync: must be "always", "interval" or "never" (got "sometimes") (and 2 more)',
    ),
    # A value from the environment is blamed on its variable, not on the file.
    (
        "",
        {"WALLABY_WAL__FSYNC": "nope"},
        'WALLABY_WAL__FSYNC: wal.fsync: must be "always", "interval" or "never" (got "nope")',
    ),
    ("", {"WALLABY_WAL__FSNYC": "never"}, "WALLABY_WAL__FSNYC: wal.fsnyc: unknown option"),
    ("", {"WALLABY_WAL": "{not json"}, "WALLABY_WAL: wal: not valid JSON"),
    (
        SOURCE,
        {"WALLABY_DDL_GATE": "maybe"},
        'WALLABY_DDL_GATE: sources[0].ddl.gate: must be true or false (got "maybe")',
    ),
    (
        "",
        {"WALLABY_SOURCES": '[{"name": "b"}]'},
        "WALLABY_SOURCES: sources[0].type: required option is missing",
    ),
]


@pytest.mark.parametrize(("text", "environ", "message"), ERRORS)
def test_each_error_is_one_line_naming_the_option(config_file, text, environ, message):
    path = config_file(text) if environ is not None else "config.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, AgentError)


def test_error_without_a_file_names_the_option_alone():
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"WALLABY_SOURCES": '[{"name": "b", "type": "postgres"}]'})
    assert str(caught.value) == "WALLABY_SOURCES: sources[0].dsn: required option is missing (and 2 more)"
    assert (caught.value.option, caught.value.more) == ("sources[0].dsn", 2)


def test_a_config_error_keeps_its_parts(config_file):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file('[wal]\nsegment_bytes = "64 lizards"\n'), environ={})
    error = caught.value
    assert (error.origin, error.option, error.line) == ("config.toml", "wal.segment_bytes", None)
    assert error.problem == 'not a size: "64 lizards"'


def test_a_key_that_would_reach_the_settings_constructor_is_refused(config_file):
    with pytest.raises(ConfigError, match=r"^config\.toml: _env_file: unknown option$"):
        load_config(config_file('_env_file = "/etc/passwd"\n'), environ={})


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, environ={})


def test_a_file_that_is_not_utf8_is_refused(config_file, tmp_path):
    (tmp_path / "config.toml").write_bytes(b'data_dir = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^config\.toml: not UTF-8 text$"):
        load_config("config.toml", environ={})


def test_database_destinations_batch_bigger_and_keep_their_defaults_under_a_partial_override():
    from agent.config_destinations import (
        DuckDbDestinationConfig,
        HttpDestinationConfig,
        PostgresDestinationConfig,
    )

    pg = PostgresDestinationConfig(name="copy", type="postgres", dsn="postgresql:///x")
    assert (pg.batch.max_records, pg.batch.max_bytes) == (10_000, 16 << 20)
    tuned = PostgresDestinationConfig(
        name="copy", type="postgres", dsn="postgresql:///x", batch={"linger": 1}
    )
    assert (tuned.batch.max_records, tuned.batch.linger) == (10_000, 1.0)
    assert (
        DuckDbDestinationConfig(
            name="d", type="duckdb", path="x.db", batch={"max_records": 7}
        ).batch.max_records
        == 7
    )
    assert HttpDestinationConfig(name="h", type="http", url="http://x").batch.max_records == 500
