"""`[[destinations]]`: where the senders deliver, and how they batch and retry.

Every destination has a `name` (its cursor in the log is `dest.<name>`), a `type`, and the
shared `[destinations.batch]` and `[destinations.retry]` tables; each type adds its own options.
docs/configuration.md documents every option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .config_types import Duration, NonEmpty, OptionalDuration, OptionalSize, Size, SourceName, _Options

__all__ = [
    "BatchConfig",
    "DestinationConfig",
    "DuckDbDestinationConfig",
    "FileDestinationConfig",
    "HttpDestinationConfig",
    "PgStreamDestinationConfig",
    "PostgresDestinationConfig",
    "RetryConfig",
]

FORMATS = ("json", "jsonl", "arrow", "parquet", "avro")
Format = Literal["json", "jsonl", "arrow", "parquet", "avro"]


class BatchConfig(_Options):
    """`[destinations.batch]`: a batch is sent when any limit is reached."""

    max_records: int = Field(500, ge=1)
    max_bytes: Size = Field(4 * 1024 * 1024, ge=1)  # payload bytes in the log
    linger: Duration = Field(0.05, ge=0)  # wait this long for more records before sending a short batch


class RetryConfig(_Options):
    """`[destinations.retry]`: exponential backoff with jitter between attempts."""

    initial_delay: Duration = Field(1.0, gt=0)
    multiplier: float = Field(2.0, ge=1.0)
    max_delay: Duration = Field(60.0, gt=0)
    jitter: float = Field(0.5, ge=0.0, le=1.0)  # each delay varies at random by up to this fraction
    give_up_policy: Literal["never", "on_retry_exhaustion"] = "never"
    max_retries: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> RetryConfig:
        if self.max_delay < self.initial_delay:
            raise PydanticCustomError(
                "max_delay",
                "max_delay must not be less than initial_delay ({initial}s)",
                {"initial": self.initial_delay},
            )
        if self.give_up_policy == "on_retry_exhaustion" and self.max_retries is None:
            raise PydanticCustomError(
                "max_retries", 'give_up_policy = "on_retry_exhaustion" needs max_retries'
            )
        return self


class _DestinationBase(_Options):
    # Batch limits this type starts from; `[destinations.batch]` overrides them one by one.
    BATCH_DEFAULTS: ClassVar[dict[str, Any]] = {}

    name: SourceName
    batch: BatchConfig = Field(default_factory=BatchConfig, validate_default=True)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    tables: list[str] = Field(
        default_factory=list
    )  # deliver only these tables ("schema.name"); empty: every table

    @field_validator("batch", mode="before")
    @classmethod
    def _type_batch_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**cls.BATCH_DEFAULTS, **value}
        if isinstance(value, BatchConfig) and not value.model_fields_set:  # the default
            return BatchConfig(**cls.BATCH_DEFAULTS)
        return value


class HttpDestinationConfig(_DestinationBase):
    """`type = "http"`: POST (or PUT) batches to a URL."""

    type: Literal["http"]
    url: NonEmpty
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = Field(10.0, gt=0)
    format: Format = "json"
    payload_mode: Literal["batch", "record_json"] = "batch"
    compression: Literal["none", "gzip"] = "none"
    tls_ca_file: Path | None = None
    bearer_token_env: str | None = None  # read once at start-up

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise PydanticCustomError("url", "must start with http:// or https://")
        return value

    @field_validator("payload_mode")
    @classmethod
    def _record_json_is_json(cls, value: str, info: ValidationInfo) -> str:
        if value == "record_json" and info.data.get("format") not in (None, "json"):
            raise PydanticCustomError("payload_mode", 'payload_mode = "record_json" needs format = "json"')
        return value


class FileDestinationConfig(_DestinationBase):
    """`type = "file"`: files in a directory, each written under a temporary name, fsynced, renamed."""

    type: Literal["file"]
    path: Path
    format: Format = "jsonl"
    rotate_bytes: Size = Field(64 * 1024 * 1024, ge=1)
    rotate_seconds: OptionalDuration = Field(60.0, gt=0)


class PostgresDestinationConfig(_DestinationBase):
    """`type = "postgres"`: apply changes to tables in another PostgreSQL database."""

    # A database applies a big batch in one transaction for about the cost of a small one.
    BATCH_DEFAULTS: ClassVar[dict[str, Any]] = {"max_records": 10_000, "max_bytes": 16 * 1024 * 1024}

    type: Literal["postgres"]
    dsn: NonEmpty
    schema_name: str | None = Field(None, alias="schema")  # None: the source's schema
    write_mode: Literal["target", "append"] = "target"
    meta_enabled: bool = False
    soft_delete: bool = False
    create_tables: bool = True
    apply_ddl: bool = True
    type_mappings: dict[str, str] = Field(default_factory=dict)  # source type name -> target type
    position_table: str = "wallaby_positions"


class DuckDbDestinationConfig(_DestinationBase):
    """`type = "duckdb"`: the same semantics as postgres, into a local DuckDB file."""

    # A database applies a big batch in one transaction for about the cost of a small one.
    BATCH_DEFAULTS: ClassVar[dict[str, Any]] = {"max_records": 10_000, "max_bytes": 16 * 1024 * 1024}

    type: Literal["duckdb"]
    path: Path
    write_mode: Literal["target", "append"] = "target"
    meta_enabled: bool = False
    soft_delete: bool = False
    create_tables: bool = True
    apply_ddl: bool = True
    type_mappings: dict[str, str] = Field(default_factory=dict)
    position_table: str = "wallaby_positions"


class PgStreamDestinationConfig(_DestinationBase):
    """`type = "pgstream"`: a PostgreSQL-backed stream with consumer groups."""

    type: Literal["pgstream"]
    dsn: NonEmpty
    stream: NonEmpty
    retention: OptionalDuration = None
    max_stream_bytes: OptionalSize = None


DestinationConfig = Annotated[
    HttpDestinationConfig
    | FileDestinationConfig
    | PostgresDestinationConfig
    | DuckDbDestinationConfig
    | PgStreamDestinationConfig,
    Field(discriminator="type"),
]
