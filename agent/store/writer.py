"""The store's single writer: one thread owns every write to DuckDB.

Producers (the sampler, later the prediction log) hand rows to `append` and never wait on disk.
Rows are buffered per table and written column-wise in one statement per table per flush
(`INSERT ... SELECT unnest($1), unnest($2) ...`: ~90k rows/s here without Arrow, against ~700
rows/s for `executemany`). The buffer is bounded: when the disk falls behind, the oldest rows
are dropped and counted rather than letting memory grow.

A batch source's batch (the prediction log's) is written in one transaction together with the
source's `mark` (its journal position), so its rows and "these journal records are in" commit
together; a failing batch is rolled back whole and counted as dropped.

Work that must be durable before the caller goes on (an audit entry, a token) uses `call`, which
runs a function on the writer thread and waits for its commit. A source with its own crash journal (the
jobs store) `post`s its commits instead and registers a settler, which readers that must see every
answered write run first (`settle`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import duckdb

if TYPE_CHECKING:
    import pyarrow as pa

from agent.store.sqltime import ts_from_unix

log = logging.getLogger("watchkeeper.store")

T = TypeVar("T")

# Columns holding unix seconds on the way in, stored as TIMESTAMP.
TIME_COLUMNS = frozenset({"ts", "bucket"})


@dataclass
class WriterStats:
    rows_written: int = 0
    rows_dropped: int = 0
    flushes: int = 0
    last_flush_duration_s: float = 0.0
    last_flush_at: float = 0.0
    flush_errors: int = 0
    last_error: str | None = None
    dropped_by_table: dict[str, int] = field(default_factory=dict)
    written_by_table: dict[str, int] = field(default_factory=dict)


class BatchSource(Protocol):
    """A producer that keeps its own column-friendly queue and hands the writer Arrow tables.

    The prediction log is one: it queues one object per request, not per row, and builds Arrow
    columns on the writer thread. Its queue bound and drop counting are its own (`count_dropped`).
    """

    table: str
    columns: tuple[str, ...]

    @property
    def pending_rows(self) -> int: ...

    def take(self) -> list: ...

    def chunks(self, items: list, max_rows: int) -> Iterable[tuple[int, pa.Table]]: ...

    def rows_in(self, items: list) -> int: ...

    def mark(self, con: duckdb.DuckDBPyConnection) -> None:
        """Called inside the batch's transaction, after its INSERTs (the journal position it covers)."""

    def committed(self) -> None:
        """Called once the batch is committed."""


class StoreWriter:
    """Owns the read-write connection's writes; see the module docstring."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        flush_interval: float = 5.0,
        max_buffered_rows: int = 200_000,
        flush_rows: int = 4_000,
        maintenance: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        maintenance_interval: float = 60.0,
    ) -> None:
        self._con = con
        self.flush_interval = flush_interval
        self.max_buffered_rows = max_buffered_rows
        self.flush_rows = flush_rows
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, tuple[str, ...]], deque[tuple]] = {}
        self._buffered = 0
        self._calls: queue.SimpleQueue[tuple[Callable, Future, bool] | None] = queue.SimpleQueue()
        self._settlers: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._sources: list[BatchSource] = []
        self.stats = WriterStats()

    # ------------------------------------------------------------------ producer side

    def start(self) -> None:
        self._thread.start()

    def append(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Queue rows for the next flush. Never blocks on disk; drops the oldest rows when full."""
        if not rows:
            return
        with self._lock:
            buf = self._buffers.get((table, columns))
            if buf is None:
                buf = self._buffers[(table, columns)] = deque()
            buf.extend(rows)
            self._buffered += len(rows)
            over = self._buffered - self.max_buffered_rows
            if over > 0:
                dropped = min(over, len(buf))
                for _ in range(dropped):
                    buf.popleft()
                self._buffered -= dropped
                self.stats.rows_dropped += dropped
                self.stats.dropped_by_table[table] = self.stats.dropped_by_table.get(table, 0) + dropped
            elif self._buffered >= self.flush_rows:
                # A burst (prediction logging under load): flush now rather than at the next tick.
                self._wake.set()

    def add_source(self, source: BatchSource) -> None:
        """Drain `source` at every flush, after the row buffers."""
        self._sources.append(source)

    def poke(self, pending_rows: int) -> None:
        """A source has `pending_rows` queued: flush now if that is a burst worth writing."""
        if pending_rows >= self.flush_rows:
            self._wake.set()

    def count_dropped(self, table: str, rows: int) -> None:
        """A source dropped rows past its bound: count them with the writer's own drops."""
        with self._lock:
            self.stats.rows_dropped += rows
            self.stats.dropped_by_table[table] = self.stats.dropped_by_table.get(table, 0) + rows

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def buffered_rows(self) -> int:
        return self._buffered + sum(src.pending_rows for src in self._sources)

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 10.0) -> T:
        """Run `fn(con)` on the writer thread after pending rows are flushed; wait for its result."""
        if self._stopping or not self._thread.is_alive():
            raise RuntimeError("store writer is not running")
        fut: Future = Future()
        self._calls.put((fn, fut, True))
        self._wake.set()
        return fut.result(timeout=timeout)

    def post(self, fn: Callable[[duckdb.DuckDBPyConnection], object]) -> Future:
        """Run `fn(con)` on the writer thread soon, without waiting and without flushing the row buffers first
        (a journaled source's commit: its records are already crash-safe, and flushing telemetry with every
        commit would turn one INSERT a second into one per job). Raises RuntimeError once stopped."""
        if self._stopping or not self._thread.is_alive():
            raise RuntimeError("store writer is not running")
        fut: Future = Future()
        self._calls.put((fn, fut, False))
        self._wake.set()
        return fut

    def add_settler(self, settle: Callable[[], None]) -> None:
        """`settle()` commits what a journaled source has acknowledged but not yet committed (and waits for it);
        `settle` below runs them all before a read that must see every answered write."""
        self._settlers.append(settle)

    def settle(self) -> None:
        """Commit what journaled sources hold (the jobs store's rows and audit entries), so a read of the store
        after this sees every write a caller was already answered for."""
        for s in self._settlers:
            try:
                s()
            except Exception as e:  # the read goes on, a moment behind; the rows stay in their journal
                log.warning("could not commit journaled rows before a read: %s", e)

    def flush(self, timeout: float = 10.0) -> None:
        """Write everything buffered so far and wait until it is committed."""
        self.call(lambda _con: None, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what journaled sources hold, flush, checkpoint (so the next start replays no WAL) and end the
        thread."""
        if not self._thread.is_alive():
            return
        self.settle()  # what it can't commit stays in its journal: the next start replays it
        self._stopping = True
        self._calls.put(None)
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        next_maint = time.monotonic() + self._maintenance_interval
        while True:
            self._wake.wait(timeout=max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            stop = False
            calls: list[tuple[Callable, Future, bool]] = []
            while True:
                try:
                    item = self._calls.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    calls.append(item)
            now = time.monotonic()
            flush_first = any(c[2] for c in calls)
            if flush_first or stop or now >= next_flush or self.buffered_rows >= self.flush_rows:
                self._flush_buffers()
                next_flush = now + self.flush_interval
            for fn, fut, _ in calls:
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(self._con))
                except BaseException as e:  # handed back to the caller, who decides
                    fut.set_exception(e)
            if self._maintenance is not None and now >= next_maint:
                next_maint = now + self._maintenance_interval
                try:
                    self._maintenance(self._con)
                except Exception:
                    log.exception("store maintenance failed")
            if stop:
                self._flush_buffers()
                try:
                    self._con.execute("CHECKPOINT")
                except duckdb.Error:
                    log.exception("checkpoint on stop failed")
                return

    def _flush_buffers(self) -> None:
        with self._lock:
            batches = [(k, list(v)) for k, v in self._buffers.items() if v]
            for k, _ in batches:
                self._buffers[k].clear()
            self._buffered = 0
        taken = [(src, src.take()) for src in self._sources]
        taken = [(src, items) for src, items in taken if items]
        if not batches and not taken:
            return
        t0 = time.perf_counter()
        written = 0
        for (table, columns), rows in batches:
            insert = lambda t=table, c=columns, r=rows: insert_columns(self._con, t, c, r)  # noqa: E731
            written += self._guarded(table, len(rows), insert)
        for src, items in taken:
            written += self._write_source(src, items)
        self.stats.rows_written += written
        self.stats.flushes += 1
        self.stats.last_flush_duration_s = time.perf_counter() - t0
        self.stats.last_flush_at = time.time()

    def _write_source(self, src: BatchSource, items: list) -> int:
        """One transaction per source batch: its rows and its `mark` (a journal position) commit together,
        so a crash can't leave rows committed whose journal records would be replayed again."""
        import pyarrow as pa

        con = self._con
        written = 0
        try:
            con.begin()
            # Conversion holds the GIL: done in chunks with a yield between them. The INSERT releases
            # it, and each statement costs ~1-4 ms however small, so the chunks go in together.
            tables: list[pa.Table] = []
            rows = 0
            for n, tbl in src.chunks(items, CHUNK_ROWS):
                tables.append(tbl)
                rows += n
                time.sleep(0)
                if rows >= INSERT_ROWS:
                    insert_arrow(con, src.table, src.columns, pa.concat_tables(tables))
                    written += rows
                    tables, rows = [], 0
            if tables:
                insert_arrow(con, src.table, src.columns, tables[0] if len(tables) == 1 else pa.concat_tables(tables))
                written += rows
            src.mark(con)
            con.commit()
        except Exception as e:  # a failing batch is counted and reported, never wedges the writer
            try:
                con.rollback()
            except duckdb.Error:
                pass
            lost = src.rows_in(items)
            self.stats.flush_errors += 1
            self.count_dropped(src.table, lost)
            self.stats.last_error = f"{src.table}: {e}"
            log.error("dropping %d rows for %s: %s", lost, src.table, e)
            return 0
        self.stats.written_by_table[src.table] = self.stats.written_by_table.get(src.table, 0) + written
        src.committed()
        return written

    def _guarded(self, table: str, rows: int, insert: Callable[[], None]) -> int:
        """Run one INSERT; a failing batch is counted and reported, never wedges the writer."""
        try:
            insert()
        except duckdb.Error as e:
            self.stats.flush_errors += 1
            self.count_dropped(table, rows)
            self.stats.last_error = f"{table}: {e}"
            log.error("dropping %d rows for %s: %s", rows, table, e)
            return 0
        self.stats.written_by_table[table] = self.stats.written_by_table.get(table, 0) + rows
        return rows


# Large batches (the prediction log under load) go through Arrow: ~180k rows/s with list columns
# here, against ~40k for DuckDB's conversion of Python parameters, and the GIL is held ~1.5 ms
# per 1k rows instead of ~10 ms, so the event loop serving requests doesn't stall. Batches are
# cut into chunks so no single conversion holds the GIL long. Small batches (host samples) keep
# the unnest path and never import pyarrow: an idle agent stays small.
ARROW_MIN_ROWS = 512
CHUNK_ROWS = 2048
INSERT_ROWS = 65_536


def insert_columns(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Column-wise INSERTs for many rows; unix-second floats become TIMESTAMPs."""
    insert = _insert_unnest
    if len(rows) >= ARROW_MIN_ROWS:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            insert = _insert_arrow
    for i in range(0, len(rows), CHUNK_ROWS):
        if i:
            time.sleep(0)  # let the event loop have the GIL between chunks
        insert(con, table, columns, rows[i : i + CHUNK_ROWS])


def _exprs(columns: tuple[str, ...], ready: frozenset[int] = frozenset()) -> str:
    """Select list turning unix-second time columns into TIMESTAMPs (except those in `ready`)."""
    return ", ".join(
        ts_from_unix(f"c{i}") if c in TIME_COLUMNS and i not in ready else f"c{i}" for i, c in enumerate(columns)
    )


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    import pyarrow as pa

    cols = zip(*rows, strict=True)
    insert_arrow(con, table, columns, pa.table({f"c{i}": pa.array(col) for i, col in enumerate(cols)}))


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], batch: pa.Table) -> None:
    """INSERT an Arrow table whose columns are c0..cN in `columns` order.

    Time columns may be unix seconds (converted in SQL) or already Arrow timestamps (taken as they are).
    """
    import pyarrow as pa

    ready = frozenset(i for i, f in enumerate(batch.schema) if pa.types.is_timestamp(f.type))
    con.register("_wk_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {_exprs(columns, ready)} FROM _wk_batch")
    finally:
        con.unregister("_wk_batch")


def _insert_unnest(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    data: list[Any] = [list(col) for col in zip(*rows, strict=True)]
    unnests = ", ".join(f"unnest(${i + 1}) AS c{i}" for i in range(len(columns)))
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {_exprs(columns)} FROM (SELECT {unnests})", data)
