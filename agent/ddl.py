"""DDL gating: what happens to a captured DDL event, and the operator's decisions on it.

gate = false (the default): events are recorded (approved, and applied when auto_apply) and the
flow goes on. gate = true: each event is stored as pending and the flow pauses with reason
`ddl_pending` once its transaction is durable; approving or rejecting the last pending event
resumes the flow, as does `flow resume`.
"""

from __future__ import annotations

import logging

from agent.change import Change
from agent.metrics import INSTRUMENTS
from agent.state import DdlEvent, StateStore

log = logging.getLogger("agent.ddl")

PAUSE_REASON = "ddl_pending"


class DdlGate:
    """Called by a source for each DDL change it wrote; says whether the flow must pause."""

    def __init__(
        self, state: StateStore, source: str, *, gate: bool, auto_approve: bool, auto_apply: bool
    ) -> None:
        self.state = state
        self.source = source
        self.gate = gate
        self.auto_approve = auto_approve
        self.auto_apply = auto_apply
        self.gated_total = 0

    def __call__(self, change: Change, seq: int) -> bool:
        details = change.message or {}
        if self.gate:
            status = "pending"
        elif self.auto_approve:
            status = "applied" if self.auto_apply else "approved"
        else:
            status = "pending"
        event = self.state.add_ddl_event(
            self.source,
            change.lsn or "",
            change.commit_lsn,
            details.get("command_tag"),
            str(details.get("statement", "")),
            status,
        )
        self.state.set_ddl_seq(event.id, seq)
        if not self.gate or event.status != "pending":
            log.info("ddl.captured", extra={"source": self.source, "id": event.id, "status": event.status})
            return False
        self.gated_total += 1
        INSTRUMENTS.ddl_gated(self.source)
        self.state.set_flow("paused", PAUSE_REASON)
        log.warning(
            f"ddl gate: flow paused (ddl_pending) by event {event.id}: {event.command_tag}",
            extra={
                "source": self.source,
                "id": event.id,
                "seq": seq,
                "statement": event.statement,
                "reason": PAUSE_REASON,
            },
        )
        return True


def decide(state: StateStore, event_id: int, action: str) -> DdlEvent:
    """approve, apply or reject an event; resumes a ddl_pending pause when nothing is pending."""
    if action == "approve":
        event = state.set_ddl_status(event_id, "approved", allowed_from=("pending",))
    elif action == "apply":
        event = state.set_ddl_status(event_id, "applied", allowed_from=("pending", "approved"))
    elif action == "reject":
        event = state.set_ddl_status(event_id, "rejected", allowed_from=("pending", "approved"))
    else:
        raise ValueError(f"unknown DDL action {action!r}")
    flow = state.flow()
    if flow.state == "paused" and flow.reason == PAUSE_REASON and not state.ddl_events("pending"):
        state.set_flow("running")
    return event
