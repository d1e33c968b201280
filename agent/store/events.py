"""The agent's own events (`agent_events`): starts and stops, breaker transitions, GPU XID errors.

Buffered through the writer like telemetry (never waits on disk): these are facts for the incident
timeline (agent/timeline/), not actions that must be durable before an answer.
"""

from __future__ import annotations

import json
import time
from typing import Protocol

EVENT_COLUMNS = ("ts", "kind", "endpoint", "summary", "detail")


class _Appender(Protocol):
    def append(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None: ...


def record_event(
    writer: _Appender, kind: str, summary: str, endpoint: str | None = None, detail: dict | None = None,
    ts: float | None = None,
) -> None:  # fmt: skip
    """Queue one `agent_events` row (kind e.g. `breaker.open`, `agent.start`, `gpu.xid`)."""
    row = (time.time() if ts is None else ts, kind, endpoint, summary, json.dumps(detail or {}, default=str))
    writer.append("agent_events", EVENT_COLUMNS, [row])
