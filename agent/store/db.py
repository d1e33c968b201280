"""Opening the agent's DuckDB file: the one place that decides what happens after a crash.

Only the agent opens its live file (DuckDB allows one read-write process, and a reader would block
a restarting agent). After `kill -9` DuckDB replays the WAL on open; when that replay fails (seen
upstream: duckdb#19712, #22044) we move the WAL aside, keep the checkpointed data, record a
critical agent alert and run on, rather than refuse to start a monitoring daemon.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from agent.store.migrations import migrate

log = logging.getLogger("watchkeeper.store")


class StoreOpenError(Exception):
    """The database file cannot be opened even without its WAL."""


@dataclass
class OpenedStore:
    con: duckdb.DuckDBPyConnection
    schema_version: int
    # Alerts to record once the writer runs: (severity, kind, message).
    startup_alerts: list[tuple[str, str, str]] = field(default_factory=list)


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    # One thread and a small memory limit: an always-on daemon whose queries are tiny.
    return duckdb.connect(
        str(path),
        config={
            "threads": 1,
            "memory_limit": "256MB",
            "allocator_flush_threshold": "8MB",
            "checkpoint_threshold": "64MB",
        },
    )


def _lock_conflict(e: duckdb.Error) -> bool:
    """DuckDB could not lock the file: another process has it open (nothing is wrong with the WAL)."""
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


def open_store(path: Path) -> OpenedStore:
    """Open (creating if needed) and migrate the store, recovering from a WAL that won't replay.

    The WAL is moved aside only when it is the problem: never when another process holds the file
    (that is a second agent, refused here rather than robbed of its WAL), and it is put back when the
    file won't open without it either."""
    alerts: list[tuple[str, str, str]] = []
    wal = path.with_name(path.name + ".wal")
    try:
        con = _connect(path)
    except duckdb.Error as first:
        reason = str(first).splitlines()[0][:200]
        if _lock_conflict(first):
            raise StoreOpenError(f"store {path} is open in another process: {reason}") from None
        if not wal.exists():
            raise StoreOpenError(f"cannot open store {path}: {first}") from None
        aside = wal.with_name(f"{wal.name}.failed-{time.strftime('%Y%m%dT%H%M%S')}")
        wal.rename(aside)
        try:
            con = _connect(path)
        except duckdb.Error as second:
            aside.rename(wal)  # the WAL was not what failed: leave it for a start that can replay it
            raise StoreOpenError(f"cannot open store {path} (WAL kept): {first}; without its WAL: {second}") from None
        msg = (
            f"WAL replay failed ({reason}); moved it to {aside.name} and "
            "started from the last checkpoint: samples since then are lost"
        )
        log.critical(msg)
        alerts.append(("critical", "store.wal_replay_failed", msg))
    try:
        version = migrate(con)
    except Exception as e:
        con.close()
        raise StoreOpenError(f"cannot migrate store {path}: {e}") from None
    return OpenedStore(con=con, schema_version=version, startup_alerts=alerts)
