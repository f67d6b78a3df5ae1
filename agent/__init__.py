"""agent: the wallaby-agent product around the `wal` engine.

Change records (`agent.change`), configuration (`agent.config`), the sources (`agent.sources`),
small mutable state (`agent.state`), DDL gating (`agent.ddl`), backfill (`agent.backfill`) and the
runtime that wires them together (`agent.runtime`). The names below are the public surface;
import them from `agent` or from their modules.
"""

from .change import OPS, Change, ChangeFormatError, decode_change, encode_change, is_change_payload
from .config import AgentConfig, PostgresSourceConfig, load_config
from .errors import AgentError, AgentFailed, ConfigError
from .runtime import Agent, build_agent, run_agent
from .state import StateStore

__all__ = [
    "OPS",
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentFailed",
    "Change",
    "ChangeFormatError",
    "ConfigError",
    "PostgresSourceConfig",
    "StateStore",
    "build_agent",
    "decode_change",
    "encode_change",
    "is_change_payload",
    "load_config",
    "run_agent",
]
