"""Times typed on the command line: ISO 8601, a time without a zone taken as UTC."""

from __future__ import annotations

import datetime


def parse_utc_time(text: str) -> datetime.datetime:
    """`2026-11-23T10:00:00Z`, `...+02:00` or zoneless (UTC); ValueError naming the bad text."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2026-11-23T10:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
