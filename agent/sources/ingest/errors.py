"""The errors the ingest source raises to its owner (rejected requests are answers, not errors)."""

from __future__ import annotations

from agent.errors import AgentError


class IngestSourceError(AgentError):
    """The ingest source cannot run; the message is one line naming the source and the cause."""


class ListenError(IngestSourceError):
    """The listen address cannot be bound (in use, not local, or not permitted)."""
