"""`wallaby-agent status`: the log, each destination, each source and the flow, at a glance.

From the running agent's admin API when it answers (its configuration's admin_listen, with the
token from admin_token_env), else read straight from the data directory (wal status, state.db,
the dead-letter store; nothing is locked or written). The first line says which.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import orjson
import typer

from agent.admin import parse_listen
from agent.config import AgentConfig, load_config
from agent.status import offline_status

from .state_options import StateConfig, StateDataDir
from .wal import DEFAULT_DATA_DIR

__all__ = ["fetch_live_status", "render_status", "status_command"]

ADMIN_TIMEOUT_S = 2.0
_DEFAULT_LISTEN = AgentConfig.model_fields["admin_listen"].default


def fetch_live_status(
    listen: str, token: str | None, data_dir: str
) -> tuple[dict[str, Any] | None, str | None]:
    """(status, None) from the admin API at `listen` when it serves `data_dir`; else (None, why)."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        return None, str(exc)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=ADMIN_TIMEOUT_S)
    except httpx.HTTPError:
        return None, None  # nothing listening: the ordinary "not running"
    if response.status_code != 200:
        try:
            reason = response.json().get("error", "")
        except ValueError:
            reason = response.text[:200]
        return None, f"the admin API at {listen} answered {response.status_code}: {reason}"
    status = response.json()
    root = os.path.realpath(str(status.get("log", {}).get("root", "")))
    if root != os.path.realpath(data_dir):
        return None, f"the agent at {listen} serves {root}, not {data_dir}"
    return status, None


def status_command(
    config: StateConfig = None,
    data_dir: StateDataDir = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of text.")
    ] = False,
) -> None:
    """Show the log, destinations, sources and flow: live from the agent, or from its data directory."""
    listen: str | None = _DEFAULT_LISTEN
    token = None
    if config is not None:
        settings = load_config(config)
        directory = os.fspath(settings.data_dir)
        listen = settings.admin_listen
        if settings.admin_token_env:
            token = os.environ.get(settings.admin_token_env) or None
    else:
        directory = os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))
    status, problem = (None, None) if listen is None else fetch_live_status(listen, token, directory)
    if problem is not None:
        typer.echo(f"warning: {problem}; reading the data directory instead", err=True)
    origin = "admin API"
    if status is None:
        status = offline_status(directory)
        origin = "data directory"
    if json_output:
        status["from"] = origin
        typer.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(render_status(status, origin))


def render_status(status: dict[str, Any], origin: str) -> str:
    """The status document as a few aligned lines of text."""
    if origin == "admin API":
        lines = ["agent running (from the admin API)"]
    elif status.get("running"):
        lines = ["agent running, admin API not reachable (from the data directory)"]
    else:
        lines = ["agent not running (from the data directory)"]
    log = status["log"]
    span = "empty" if log["first_seq"] is None else f"seq {log['first_seq']}..{log['last_seq']}"
    durable = "" if log.get("durable_seq") is None else f"  durable {log['durable_seq']}"
    ratio = "" if log.get("compression_ratio") is None else f", ratio {log['compression_ratio']:.1f}"
    lines.append(
        f"log          {log['root']}  {span}{durable}  live {log['live_segments']} segment(s) "
        f"{_size(log['live_bytes'])}  archived {log['archives']} ({_size(log['archive_bytes'])}{ratio})"
    )
    if log.get("quarantine_files"):
        lines.append(f"             {log['quarantine_files']} file(s) in quarantine: see wal verify")
    for d in status["destinations"]:
        lines.append(
            f"destination  {d['name']:<16} {d['state']:<9} cursor {d['cursor']}  pending {d['pending']}  "
            f"delivered {_n(d['delivered'])}  retries {_n(d['retries'])}  dead letters {d['dead_letters']}"
            + (f"  last error: {d['last_error']}" if d.get("last_error") else "")
        )
    for s in status["sources"]:
        lag = "" if s.get("lag_bytes") is None else f"  lag {_size(s['lag_bytes'])}"
        lines.append(
            f"source       {s['name']:<16} {s['state']:<9} received {_n(s['received_lsn'])}  "
            f"flushed {_n(s['flushed_lsn'])}{lag}"
            + (f"  last error: {s['last_error']}" if s.get("last_error") else "")
        )
    flow = status["flow"]
    lines.append(f"flow         {flow['state']}" + (f" ({flow['reason']})" if flow.get("reason") else ""))
    return "\n".join(lines)


def _n(value: object) -> str:
    return "-" if value is None else str(value)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
