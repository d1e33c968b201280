"""Facts the timeline needs that no other part records: the agent's own starts and stops (with its config's
digest, so a changed config shows as a reload) and GPU XID errors (the sampler only keeps a running count).

Rows go to `agent_events` (agent/store/events.py); the daemon calls these at start, at stop and per sample.
"""

from __future__ import annotations

import hashlib
import os

import duckdb

from agent import __version__
from agent.schemas import Snapshot
from agent.store.events import record_event
from agent.store.writer import StoreWriter


def config_digest(cfg_json: str) -> str:
    """A short digest of the effective config (what the agent runs with, defaults filled in)."""
    return hashlib.sha256(cfg_json.encode()).hexdigest()[:16]


def record_start(con: duckdb.DuckDBPyConnection, writer: StoreWriter, cfg_json: str, ts: float) -> None:
    """`agent.start`, saying whether the config changed since the last start and whether the last run ended
    without a clean stop (a crash or kill -9); `config.reload` too when the config changed."""
    digest = config_digest(cfg_json)
    cur = con.cursor()
    try:
        last = cur.execute(
            "SELECT kind, detail FROM agent_events WHERE kind IN ('agent.start', 'agent.stop') ORDER BY ts DESC LIMIT 1"
        ).fetchone()
        prev = cur.execute(
            "SELECT json_extract_string(detail, '$.config_digest') FROM agent_events WHERE kind = 'agent.start' "
            "ORDER BY ts DESC LIMIT 1"
        ).fetchone()
    finally:
        cur.close()
    unclean = last is not None and last[0] == "agent.start"
    changed = prev is not None and prev[0] is not None and prev[0] != digest
    words = [f"agent started (v{__version__}, pid {os.getpid()})"]
    if unclean:
        words.append("the previous run ended without a clean stop")
    if changed:
        words.append("config changed since the last start")
    detail = {"version": __version__, "pid": os.getpid(), "config_digest": digest, "unclean_previous": unclean}
    record_event(writer, "agent.start", "; ".join(words), None, detail, ts)
    if changed:
        detail = {"from": prev[0], "to": digest}
        record_event(writer, "config.reload", f"config {prev[0]} -> {digest} (applied at start)", None, detail, ts)


def record_stop(writer: StoreWriter, reason: str) -> None:
    """`agent.stop` (before the final flush): a start after it was a clean restart."""
    record_event(writer, "agent.stop", f"agent stopping ({reason})", None, {"pid": os.getpid(), "reason": reason})


class XidWatch:
    """Per sample: an `gpu.xid` event for each GPU whose XID count rose (count since the agent started)."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self._last: dict[str, int] = {}

    def __call__(self, snap: Snapshot) -> None:
        for g in snap.gpus:
            if g.xid_errors is None:
                continue
            key = g.uuid or str(g.index)
            before = self._last.get(key, 0)
            self._last[key] = g.xid_errors
            if g.xid_errors > before:
                n = g.xid_errors - before
                detail = {"gpu": g.index, "uuid": g.uuid, "count": n, "total": g.xid_errors}
                record_event(self._writer, "gpu.xid", f"GPU {g.index}: {n} XID error(s)", None, detail, snap.ts)
