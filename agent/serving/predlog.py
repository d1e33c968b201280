"""The prediction log: every served row (or a sampled share of requests) into DuckDB via the store writer.

The request path appends ONE tuple per request to a bounded queue: the request's scalars plus its
feature values flattened into one list, exactly as the encoder already holds them. No per-row Python
objects are made on the request path (at 100k rows/s those were ~2.7 µs a row and a steady feed for
the garbage collector); the writer thread turns a batch of requests into Arrow columns at flush time
(`to_arrow`: per-request scalars repeated by index, features as list arrays over the flat values)
and DuckDB reads those without converting Python objects.

The queue is bounded by rows; past the bound the oldest requests are dropped and counted
(`watchkeeper_store_rows_dropped_total{table="predictions"}`), so a slow disk costs log rows,
never memory or latency.

What we answered, we keep: with a journal attached (the agent always attaches one), `log` also
writes the request as one record to `agent/store/journal.py`'s append-only file before it returns,
i.e. before the caller's answer is sent. The writer commits a batch and the journal position it
covers in one transaction, then deletes the journal's sealed segments; at start `replay_journal`
puts whatever a crash left there into DuckDB, exactly once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from agent.store.journal import Journal, replay, set_committed_seq
from agent.store.writer import CHUNK_ROWS, StoreWriter, insert_arrow

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger("watchkeeper.serving")

TABLE = "predictions"
COLUMNS = (
    "ts", "request_id", "endpoint", "model", "version", "row_idx", "num", "cat", "score", "label",
    "latency_ms", "status", "fallback_reason",
)  # fmt: skip
# What the writer inserts: the columns above and how the rows were asked for (migration 8; docs/async.md).
LOG_COLUMNS = (*COLUMNS, "mode")

# meta key: the highest journal segment whose records are committed to `predictions`.
JOURNAL_KEY = "predlog.journal_committed"

# One logged request: (ts, request_id, endpoint, model, version, rows, num_flat, num_width,
# cat_flat, cat_width, scores, labels, latency_ms, status, fallback_reason, mode). Journal records written
# before `mode` existed have 15 fields: replay reads them as real time.
_Item = tuple


class PredictionLog:
    """Request-path side of the prediction log; also the writer's batch source for `predictions`."""

    table = TABLE
    columns = LOG_COLUMNS

    def __init__(self, writer: StoreWriter, max_pending_rows: int | None = None) -> None:
        self._writer = writer
        self.max_pending_rows = max_pending_rows or writer.max_buffered_rows
        self._lock = threading.Lock()
        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self.rows_logged = 0
        self.requests_skipped = 0
        self._journal: Journal | None = None
        self._taken_upto: int | None = None  # journal segments covered by the batch the writer took
        writer.add_source(self)

    def attach_journal(self, journal: Journal) -> None:
        """Journal every request from now on (before serving starts: see `replay_journal`)."""
        with self._lock:
            self._journal = journal

    def close_journal(self) -> None:
        """After the writer's last flush: stop journaling (uncommitted segments stay for the next start)."""
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    @property
    def journal(self) -> Journal | None:
        return self._journal

    @property
    def unjournaled(self) -> int:
        """Requests logged but not journaled (write errors, or the journal past its bound)."""
        j = self._journal
        return 0 if j is None else j.errors + j.skipped

    def sampled(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if random.random() < rate:
            return True
        self.requests_skipped += 1
        return False

    def log(
        self,
        request_id: str,
        endpoint: str,
        model: str,
        version: int | None,
        num_flat: Sequence[float | None],
        num_width: int,
        cat_flat: Sequence[str | None],
        cat_width: int,
        scores: Sequence[float | None],
        labels: Sequence[str | None],
        latency_ms: float,
        status: str,
        fallback_reason: str | None,
        mode: str = "realtime",
    ) -> None:
        """Queue one request's rows: `num_flat` holds rows x `num_width` values row-major (same for cat)."""
        n = len(scores)
        item = (time.time(), request_id, endpoint, model, version, n, num_flat, num_width, cat_flat, cat_width,
                scores, labels, latency_ms, status, fallback_reason, mode)  # fmt: skip
        journal = self._journal
        # Encoded outside the lock; written inside it, so a seal can't separate a record from its queue entry.
        payload = orjson.dumps(item) if journal is not None else b""
        dropped = 0
        with self._lock:
            if payload and self._journal is not None:
                self._journal.append(payload)
            self._pending.append(item)
            self._pending_rows += n
            while self._pending_rows > self.max_pending_rows and len(self._pending) > 1:
                old = self._pending.popleft()
                self._pending_rows -= old[5]
                dropped += old[5]
            pending = self._pending_rows
        self.rows_logged += n
        if dropped:
            self._writer.count_dropped(TABLE, dropped)
        self._writer.poke(pending)

    # ------------------------------------------------------------------ writer side

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def take(self) -> list[_Item]:
        """Everything queued so far (the writer calls this at each flush)."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
            self._taken_upto = self._journal.seal() if self._journal is not None else None
        return items

    @staticmethod
    def rows_in(items: list[_Item]) -> int:
        return sum(it[5] for it in items)

    def mark(self, con: duckdb.DuckDBPyConnection) -> None:
        """Inside the batch's transaction: the journal segments it covers are committed with it."""
        if self._taken_upto is not None:
            set_committed_seq(con, JOURNAL_KEY, self._taken_upto)

    def committed(self) -> None:
        """The batch is committed: its journal segments can go."""
        upto, self._taken_upto = self._taken_upto, None
        journal = self._journal
        if upto is not None and journal is not None:
            journal.release(upto)  # the writer thread alone seals and releases

    @staticmethod
    def chunks(items: list[_Item], max_rows: int) -> Iterator[tuple[int, pa.Table]]:
        """Arrow tables of about `max_rows` rows each, so no single conversion holds the GIL long."""
        start = rows = 0
        for i, it in enumerate(items):
            rows += it[5]
            if rows >= max_rows:
                yield rows, to_arrow(items[start : i + 1])
                start, rows = i + 1, 0
        if start < len(items):
            yield rows, to_arrow(items[start:])

    @property
    def rows_committed(self) -> int:
        return self._writer.stats.written_by_table.get(TABLE, 0)

    @property
    def rows_dropped(self) -> int:
        return self._writer.stats.dropped_by_table.get(TABLE, 0)


def to_arrow(items: list[_Item]) -> pa.Table:
    """One Arrow table (columns c0..c13 in LOG_COLUMNS order, ts an Arrow timestamp) for a batch of requests."""
    import numpy as np
    import pyarrow as pa

    n_req = len(items)
    counts = np.fromiter((it[5] for it in items), np.int64, n_req)
    total = int(counts.sum())
    req_of_row = np.repeat(np.arange(n_req), counts)
    starts = np.cumsum(counts) - counts

    def per_request(i: int, typ: pa.DataType) -> pa.Array:
        return pa.array([it[i] for it in items], typ).take(req_of_row)

    def lists(flat_i: int, width_i: int, typ: pa.DataType) -> pa.Array:
        # from_pandas: a NaN (the columnar encoder's missing value) is stored as NULL, like None
        values = pa.array(list(chain.from_iterable(it[flat_i] for it in items)), typ, from_pandas=True)
        widths = np.repeat(np.fromiter((it[width_i] for it in items), np.int64, n_req), counts)
        offsets = np.zeros(total + 1, np.int32)
        np.cumsum(widths, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), values)

    ts_us = np.fromiter((it[0] for it in items), np.float64, n_req) * 1e6
    cols: list[Any] = [
        pa.array(np.rint(ts_us).astype(np.int64), pa.timestamp("us")).take(req_of_row),
        per_request(1, pa.string()),
        per_request(2, pa.string()),
        per_request(3, pa.string()),
        per_request(4, pa.int32()),
        pa.array((np.arange(total) - starts[req_of_row]).astype(np.int32)),
        lists(6, 7, pa.float64()),
        lists(8, 9, pa.string()),
        pa.array(list(chain.from_iterable(it[10] for it in items)), pa.float64()),
        pa.array(list(chain.from_iterable(it[11] for it in items)), pa.string()),
        per_request(12, pa.float64()),
        per_request(13, pa.string()),
        per_request(14, pa.string()),
        pa.array([it[15] if len(it) > 15 else "realtime" for it in items], pa.string()).take(req_of_row),
    ]
    return pa.table({f"c{i}": c for i, c in enumerate(cols)})


@dataclass
class Replayed:
    journal: Journal
    requests: int = 0
    rows: int = 0
    problem: str | None = None  # set when pending records could not be put back (moved aside)


def replay_journal(con: duckdb.DuckDBPyConnection, directory: Path) -> Replayed:
    """Put the requests a crash left in the journal into `predictions`, then open the journal for writing.

    Runs at start, before the writer thread and before serving (`agent/store/journal.py`'s `replay`: one
    transaction, segments that can't be put back moved aside rather than stop the start)."""
    undecodable = 0

    def apply(con: duckdb.DuckDBPyConnection, records: list[bytes]) -> int:
        nonlocal undecodable
        items: list[_Item] = []
        for rec in records:
            try:
                items.append(tuple(orjson.loads(rec)))
            except orjson.JSONDecodeError:
                undecodable += 1
        rows = 0
        for n, tbl in PredictionLog.chunks(items, CHUNK_ROWS):
            insert_arrow(con, TABLE, LOG_COLUMNS, tbl)
            rows += n
        return rows

    rep = replay(con, directory, JOURNAL_KEY, apply, "prediction journal")
    if undecodable:
        log.warning("prediction journal: %d undecodable records were skipped", undecodable)
    requests = rep.records - undecodable
    if rep.problem:
        rep.problem += f"; {requests} answered requests are not in the prediction log"
        return Replayed(rep.journal, 0, 0, rep.problem)
    if requests:
        log.warning("prediction journal: %d answered requests (%d rows) a crash left unwritten are now logged",
                    requests, rep.applied)  # fmt: skip
    return Replayed(rep.journal, requests, rep.applied)
