"""Options shared by the commands that act on the agent's state in a data directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from agent.config import load_config

from .wal import DATA_DIR_ENV, DEFAULT_DATA_DIR

StateDataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        envvar=DATA_DIR_ENV,
        show_default=DEFAULT_DATA_DIR,
        help="The agent's data directory (ignored when --config is given).",
    ),
]
StateConfig = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar="WALLABY_CONFIG", help="Take the data directory from this configuration."
    ),
]


def resolve_data_dir(config: Path | None, data_dir: str | None) -> str:
    """--config's data_dir when given, else --data-dir / $WALLABY_DATA_DIR / ~/.wallaby."""
    if config is not None:
        return os.fspath(load_config(config).data_dir)
    return os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
