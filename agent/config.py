"""The agent's configuration: a TOML file plus `WALLABY_*` environment overrides, validated once.

    config = load_config("/etc/wallaby/config.toml")          # raises ConfigError: one line
    log = wal.open(str(config.data_dir), **config.wal.log_options())

Sizes accept a number of bytes or a string such as "64MiB"; durations a number of seconds or a
string such as "500ms", "10s" or "5m" (`wal.units` parses both). Once validated, every size is an
int of bytes and every duration a float of seconds. `load_config` is the only place that reads
the environment; `docs/configuration.md` documents every option.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from wal.format import HEADER_SIZE, RECORD_OVERHEAD
from wal.options import LogOptions

from .config_destinations import DestinationConfig
from .config_types import (
    Duration,
    Lsn,
    NonEmpty,
    OptionalDuration,
    OptionalSize,
    QualifiedTable,
    SchemaName,
    Size,
    SlotName,
    SourceName,
    _lower,
    _Options,
    _shown,
)
from .errors import ConfigError

__all__ = [
    "AgentConfig",
    "DdlConfig",
    "DestinationConfig",
    "HttpIngestSourceConfig",
    "PostgresSourceConfig",
    "ReconnectConfig",
    "SourceConfig",
    "WalConfig",
    "load_config",
]

ENV_PREFIX = "WALLABY_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_DATA_DIR = "~/.wallaby"  # the same default as `wallaby-agent wal --data-dir`
# Plain environment variables that set one DDL option on every source that has DDL options.
DDL_ENVIRONMENT = {
    "WALLABY_DDL_GATE": "gate",
    "WALLABY_DDL_AUTO_APPROVE": "auto_approve",
    "WALLABY_DDL_AUTO_APPLY": "auto_apply",
}

_LOG_DEFAULTS = LogOptions()  # the one place the log's defaults live; the models below copy them


class WalConfig(_Options):
    """`[wal]`: the local write-ahead log. Defaults are wal.LogOptions' own."""

    fsync: Literal["always", "interval", "never"] = _LOG_DEFAULTS.fsync
    fsync_interval_ms: int = Field(_LOG_DEFAULTS.fsync_interval_ms, gt=0)
    segment_bytes: Size = Field(_LOG_DEFAULTS.segment_bytes, ge=HEADER_SIZE + RECORD_OVERHEAD)
    segment_max_age: OptionalDuration = Field(_LOG_DEFAULTS.segment_max_age_s, gt=0)
    max_record_bytes: Size = Field(_LOG_DEFAULTS.max_record_bytes, ge=RECORD_OVERHEAD)
    max_unarchived_bytes: OptionalSize = Field(_LOG_DEFAULTS.max_unarchived_bytes, gt=0)
    on_full: Literal["block", "error"] = _LOG_DEFAULTS.on_full
    full_timeout: OptionalDuration = _LOG_DEFAULTS.full_timeout_s
    archive_level: int = Field(_LOG_DEFAULTS.archive_level, ge=1, le=22)
    auto_archive: bool = _LOG_DEFAULTS.auto_archive
    retention_age: OptionalDuration = _LOG_DEFAULTS.retention_max_age_s
    retention_bytes: OptionalSize = _LOG_DEFAULTS.retention_max_bytes
    min_free_bytes: OptionalSize = _LOG_DEFAULTS.min_free_bytes  # None: twice max_record_bytes

    @model_validator(mode="after")
    def _accepted_by_wal(self) -> WalConfig:
        # The field checks above mirror LogOptions'; this catches any rule they miss.
        try:
            LogOptions(**self.log_options())
        except ValueError as exc:
            raise PydanticCustomError("log_options", "{reason}", {"reason": str(exc)}) from exc
        return self

    def log_options(self) -> dict[str, Any]:
        """The keyword arguments for `wal.open(path, **options)`."""
        return {
            "fsync": self.fsync,
            "fsync_interval_ms": self.fsync_interval_ms,
            "segment_bytes": self.segment_bytes,
            "segment_max_age_s": self.segment_max_age,
            "max_record_bytes": self.max_record_bytes,
            "max_unarchived_bytes": self.max_unarchived_bytes,
            "on_full": self.on_full,
            "full_timeout_s": self.full_timeout,
            "archive_level": self.archive_level,
            "auto_archive": self.auto_archive,
            "retention_max_age_s": self.retention_age,
            "retention_max_bytes": self.retention_bytes,
            "min_free_bytes": self.min_free_bytes,
        }


class DdlConfig(_Options):
    """`[sources.ddl]`: what happens to a schema change captured from a source.

    WALLABY_DDL_GATE, WALLABY_DDL_AUTO_APPROVE and WALLABY_DDL_AUTO_APPLY set these on every
    source (see load_config).
    """

    gate: bool = False
    auto_approve: bool = True
    auto_apply: bool = True


class ReconnectConfig(_Options):
    """`[sources.reconnect]`: exponential backoff between connection attempts, in seconds."""

    initial_delay: Duration = Field(1.0, gt=0)
    max_delay: Duration = Field(60.0, gt=0)
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.5, ge=0.0, le=1.0)  # each delay is cut at random by up to this fraction
    max_attempts: int | None = Field(None, ge=1)  # None: retry forever

    @field_validator("max_delay")
    @classmethod
    def _not_below_initial_delay(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_delay")
        if initial is not None and value < initial:
            raise PydanticCustomError(
                "max_delay", "must not be less than initial_delay ({initial}s)", {"initial": initial}
            )
        return value


class PostgresSourceConfig(_Options):
    """`[[sources]]` with `type = "postgres"`: logical replication (pgoutput) from one database."""

    name: SourceName
    type: Literal["postgres"]
    dsn: NonEmpty
    slot: SlotName
    publication: NonEmpty
    publication_tables: list[QualifiedTable] = Field(default_factory=list)
    publication_schemas: list[SchemaName] = Field(default_factory=list)
    create_slot: bool = True
    ensure_publication: bool = True
    messages: bool = True
    snapshot: Literal["never", "initial"] = "never"
    snapshot_chunk_rows: int = Field(10_000, gt=0)
    snapshot_workers: int = Field(1, ge=1)
    toast_fetch: Literal["none", "source", "full"] = "none"
    capture_ddl: bool = False
    ddl: DdlConfig = Field(default_factory=DdlConfig)
    heartbeat_interval: Duration = Field(10.0, gt=0)  # advance an idle slot this often
    status_interval: Duration = Field(1.0, gt=0)  # send standby status updates this often
    connect_timeout: Duration = Field(10.0, gt=0)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    start_lsn: Lsn | None = None

    @field_validator("capture_ddl")
    @classmethod
    def _ddl_needs_messages(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("messages") is False:
            # The DDL event trigger emits logical messages; without them captured DDL is lost.
            raise PydanticCustomError(
                "capture_ddl", "needs messages = true (captured DDL travels as logical messages)"
            )
        return value


class HttpIngestSourceConfig(_Options):
    """`[[sources]]` with `type = "http_ingest"`: local applications POST records to the agent."""

    name: SourceName
    type: Literal["http_ingest"]
    listen: NonEmpty = "127.0.0.1:8181"  # host:port; loopback by default
    table: str = ""  # the `table` of records that are plain JSON objects rather than change records
    max_body_bytes: Size = Field(1024 * 1024, ge=1)
    max_records_per_request: int = Field(10_000, ge=1)
    rate_limit_per_client: float | None = Field(None, gt=0)  # requests per second per client address
    rate_burst: int = Field(100, ge=1)
    decisions_kept: int = Field(1000, ge=0)  # recent rejections listed at /ingest/decisions
    token_env: str | None = None  # bearer token required on /ingest, read once at start-up


# A new source type joins the union here; each member needs a `type: Literal[...]` field.
SourceConfig = Annotated[PostgresSourceConfig | HttpIngestSourceConfig, Field(discriminator="type")]


def _source_models() -> dict[str, type[BaseModel]]:
    """Each source type's tag and model, read from the SourceConfig union."""
    members = get_args(SourceConfig)[0]
    models = get_args(members) or (members,)
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in models}


_SOURCE_MODELS = _source_models()


class AgentConfig(BaseSettings):
    """The whole configuration. Build it with `load_config`, which adds the file and environment.

    Constructing AgentConfig directly uses only the values passed in and never reads the
    environment, so tests stay hermetic; the env_prefix and nested delimiter below are what
    load_config's environment source follows.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    log_format: Annotated[Literal["auto", "console", "json"], BeforeValidator(_lower)] = "auto"
    wal: WalConfig = Field(default_factory=WalConfig)
    admin_listen: str | None = "127.0.0.1:8180"  # the admin API (health, metrics, status); None: off
    admin_token_env: str | None = None  # a variable holding the bearer token the admin API requires
    sources: list[SourceConfig] = Field(default_factory=list)
    destinations: list[DestinationConfig] = Field(default_factory=list)

    @field_validator("admin_listen", mode="before")
    @classmethod
    def _admin_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError("empty", "must not be empty")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # load_config has already anchored a relative path from the file to the file's directory;
        # whatever is still relative (environment, direct construction) is relative to the cwd.
        return Path(os.path.abspath(os.path.expanduser(value)))

    @field_validator("sources")
    @classmethod
    def _distinct_sources(cls, sources: list[PostgresSourceConfig]) -> list[PostgresSourceConfig]:
        names: set[str] = set()
        slots: dict[tuple[str, str], str] = {}
        for index, source in enumerate(sources):
            if source.name in names:
                raise PydanticCustomError(
                    "duplicate_source",
                    "duplicate source name {name}",
                    {"name": _shown(source.name), "at": (index, "name")},
                )
            names.add(source.name)
            if isinstance(source, PostgresSourceConfig):
                owner = slots.setdefault((source.dsn, source.slot), source.name)
                if owner != source.name:
                    raise PydanticCustomError(
                        "duplicate_slot",
                        "slot {slot} is already used by source {owner} on the same dsn",
                        {"slot": _shown(source.slot), "owner": _shown(owner), "at": (index, "slot")},
                    )
        return sources

    @field_validator("destinations")
    @classmethod
    def _distinct_destinations(cls, destinations: list[Any]) -> list[Any]:
        names: set[str] = set()
        for index, destination in enumerate(destinations):
            if destination.name in names:
                raise PydanticCustomError(
                    "duplicate_destination",
                    "duplicate destination name {name}",
                    {"name": _shown(destination.name), "at": (index, "name")},
                )
            names.add(destination.name)
        return destinations

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment comes in through load_config only


# -- loading ------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read the TOML file at `path` (None: no file), apply `WALLABY_*` overrides, validate.

    `environ` defaults to os.environ. Environment values override the file's. A relative
    `data_dir` in the file is relative to the file's directory; one from the environment, to
    the current directory. Every failure raises ConfigError.
    """
    environ = os.environ if environ is None else environ
    label = None if path is None else os.fspath(path)
    file_values = {} if label is None else _read_toml(label)
    env_values, provenance = _environment_values(environ)

    values = _merged(file_values, env_values)
    _apply_ddl_environment(values, environ, provenance)
    if label is not None and "data_dir" in file_values and "data_dir" not in env_values:
        values["data_dir"] = _beside(os.path.dirname(os.path.abspath(label)), values["data_dir"])
    for key in values:
        if key.startswith("_"):  # BaseSettings would take these as its own keyword arguments
            raise ConfigError("unknown option", origin=label, option=key)

    try:
        return AgentConfig(**values)
    except ValidationError as exc:
        raise _config_error(exc, label, provenance) from exc


def _read_toml(label: str) -> dict[str, Any]:
    try:
        with open(label, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError("no such file", origin=label) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", origin=label) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", origin=label) from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position in the message only: "Invalid value (at line 3, column 9)".
        match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(exc))
        if match is None:
            raise ConfigError(f"invalid TOML: {_sentence(str(exc))}", origin=label) from None
        what, line, column = match.groups()
        raise ConfigError(
            f"invalid TOML: {_sentence(what)} at column {column}", origin=label, line=int(line)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {_sentence(exc.strerror or str(exc))}", origin=label) from None


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def _environment_values(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[Any, ...], str]]:
    """The overrides found in `environ`, and which variable set each option path."""
    try:
        values = _EnvironmentSource(AgentConfig, environ)()
    except SettingsError as exc:
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else None
        variable = _variable((field,)) if field else None
        raise ConfigError("not valid JSON", origin=variable, option=field) from None

    present = {name.lower() for name in environ}
    provenance: dict[tuple[Any, ...], str] = {}

    def record(option_path: tuple[Any, ...], value: Any) -> None:
        if _variable(option_path).lower() in present:
            provenance[option_path] = _variable(option_path)
        if isinstance(value, dict):
            for key, inner in value.items():
                record((*option_path, key), inner)

    for key, value in values.items():
        record((key,), value)
    return values, provenance


def _variable(option_path: tuple[Any, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part).upper() for part in option_path)


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, tables merged key by key, arrays replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_ddl_environment(
    values: dict[str, Any], environ: Mapping[str, str], provenance: dict[tuple[Any, ...], str]
) -> None:
    sources = values.get("sources")
    if not isinstance(sources, list):
        return
    lowered = {name.lower(): value for name, value in environ.items()}
    for variable, option in DDL_ENVIRONMENT.items():
        value = lowered.get(variable.lower())
        if value is None:
            continue
        for index, source in enumerate(sources):
            model = _SOURCE_MODELS.get(source.get("type")) if isinstance(source, dict) else None
            if model is None or "ddl" not in model.model_fields:
                continue  # an invalid source is reported as such, not as a DDL problem
            ddl = source.setdefault("ddl", {})
            if isinstance(ddl, dict):
                ddl[option] = value
                provenance[("sources", index, "ddl", option)] = variable


def _beside(directory: str, value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        return value  # validation will say what is wrong with it
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.join(directory, expanded)


# -- error messages -----------------------------------------------------------------------------

_TYPE_PROBLEMS = {
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path",
}


def _config_error(
    exc: ValidationError, label: str | None, provenance: dict[tuple[Any, ...], str]
) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    option_path = _option_path(first)
    origin = label
    for length in range(len(option_path), 0, -1):
        if option_path[:length] in provenance:
            origin = provenance[option_path[:length]]
            break
    return ConfigError(
        _problem(first), origin=origin, option=_dotted(option_path) or None, more=len(errors) - 1
    )


def _option_path(error: Any) -> tuple[Any, ...]:
    """The error's location as the operator wrote it: no union tags, pointing at the option.

    A validator of a whole list names the entry at fault with `ctx["at"]`, such as (1, "name").
    """
    loc = list(error["loc"])
    # pydantic puts the discriminator's value after the index: ("sources", 0, "postgres", "slot").
    if len(loc) > 2 and loc[0] == "sources" and isinstance(loc[1], int) and loc[2] in _SOURCE_MODELS:
        del loc[2]
    ctx = error.get("ctx") or {}
    if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
        loc.append(str(ctx.get("discriminator", "type")).strip("'"))
    loc.extend(ctx.get("at", ()))
    return tuple(loc)


def _dotted(option_path: tuple[Any, ...]) -> str:
    text = ""
    for part in option_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: Any) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return "unknown option"
    if kind in ("missing", "union_tag_not_found"):
        return "required option is missing"
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", '"')
        return f"unknown source type {_shown(ctx.get('tag'))} (expected {expected})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {expected} (got {_shown(value)})"
    problem = _TYPE_PROBLEMS.get(kind)
    if problem is None:
        message = str(error["msg"])
        if not message.startswith("Input should be "):
            return message.removeprefix("Value error, ")  # the validators' own messages are complete
        problem = "must be " + message.removeprefix("Input should be ")
    if isinstance(value, str | int | float | bool):
        problem += f" (got {_shown(value)})"
    return problem


def _sentence(text: str) -> str:
    """`Invalid value` as `invalid value`, to sit after a colon mid-line."""
    return text[:1].lower() + text[1:]
