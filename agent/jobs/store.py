"""Jobs in DuckDB: durable job rows with group commit, usage series, quota events, and the read-back.

Every state a caller may be told about (a 201 to a submit, RUNNING, a final state) is durable first:
in the agent, appended to the jobs journal (`agent/store/journal.py`, the prediction log's kind: a write
into the page cache survives kill -9), with the submit's audit entry in the same record, linked onto the
chain then; the writer thread commits the queued rows, the entries and the journal position they cover in
one transaction soon after, and `replay_jobs_journal` puts back at start what a crash left only in the
journal. Waiting for each commit held a submit to ~100/s from one client (INSERT, audit INSERT and
commit, then the runner's RUNNING and end UPDATEs each their own commit); an append costs ~20 us (a
submit's, with its audit entry linked and hashed, ~50 us). Readers of the tables that must see every
answered save call `settle` first. Without a journal (tools, tests), or when an append fails, a save waits
for its commit as before.

Measured here (a wide jobs row): one statement + commit costs ~5 ms, and 100 rows in one
transaction of one statement each ~150 ms (the statement, not the fsync, is the cost), while 100 rows
as one `INSERT OR REPLACE ... SELECT unnest(...)` cost ~10 ms. So saves are grouped: a commit takes every
queued row into one statement and one transaction (a waiting caller's rows with those of callers that
arrived meanwhile). Measured per statement: `INSERT OR REPLACE` ~4 ms, a plain `INSERT` ~1.1 ms, an
`UPDATE` by key ~0.8 ms, a commit ~0.2 ms; so a row's first save is an INSERT and later saves UPDATE it (`_known`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson

from agent.audit import AuditLog, AuditUnavailable, PendingEntry
from agent.jobs.record import JOB_COLUMNS, JobRecord, seen_job_id
from agent.schemas.jobs import Job
from agent.store.journal import Journal, Replay, replay, set_committed_seq
from agent.store.writer import StoreWriter

log = logging.getLogger("watchkeeper.jobs")

USAGE_COLUMNS = ("ts", "job_id", "attempt", "pipeline", "cpu_seconds", "cpu_now", "rss_bytes", "gpu_mem_bytes")
QUOTA_USAGE_COLUMNS = ("ts", "pipeline", "resource", "allocated", "used", "limit_value")
# meta key: the highest jobs-journal segment whose records are committed (agent/store/journal.py).
JOURNAL_KEY = "jobs.journal_committed"
RETRY_S = 1.0  # after a failed commit of journaled rows
MAX_JOURNAL_BYTES = 64 * 2**20


class StoreUnavailable(Exception):
    """The rows could not be committed; the caller must not act on them (a 503 for the API)."""


@dataclass
class _Batch:
    rows: list[tuple]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    journaled: bool = False  # in the journal, its caller answered: a failed commit retries it


@dataclass
class CommitStats:
    commits: int = 0
    rows: int = 0
    saves: int = 0
    commit_s_total: float = 0.0
    last_rows: int = 0
    journaled: int = 0  # saves answered from the journal, before their commit
    retries: int = 0  # commits of journaled rows that failed and were tried again


class JobStore:
    def __init__(self, writer: StoreWriter, con: duckdb.DuckDBPyConnection, journal: Journal | None = None) -> None:
        self._writer = writer
        self._con = con
        self._lock = threading.Lock()  # the queue, the journal, and the journal's order against the queue
        self._queue: list[_Batch] = []
        self._known: set[tuple[str, int]] = set()  # (id, attempt) rows committed: an UPDATE, not an INSERT
        self._journal = journal
        self._audit: AuditLog | None = None  # the agent's audit log, once a submit brought it
        self._posted = False  # a commit is asked of the writer and has not yet taken the queue
        self._in_flight = 0  # commits that took rows and have not yet finished
        self.stats = CommitStats()
        if journal is not None:
            writer.add_settler(self.settle)

    # ------------------------------------------------------------------ durable writes

    def save(self, recs: list[JobRecord], timeout: float = 10.0) -> None:
        """Make these records' rows (as they are now) durable; raises StoreUnavailable if that fails.

        With a journal: one append to it (it survives kill -9 of the agent), the DuckDB commit follows on the
        writer thread. Without one, or when the append fails: wait for the commit."""
        if not recs:
            return
        if self._journal is not None:
            with self._lock:
                # Rows taken under the lock: two saves of one job (a cancel's, the runner's end) reach the
                # journal and the queue in the order of their snapshots, so the newest state is the last.
                rows = [r.row() for r in recs]
                if self._append({"rows": rows}):
                    self._queue.append(_Batch(rows, journaled=True))
                    self.stats.saves += 1
                    self._post_locked()
                    return
        batch = self._enqueue(recs)
        try:
            self._writer.call(self._commit_queued, timeout=timeout)
        except Exception as e:  # writer stopped or too slow: maybe not committed
            if not batch.done.is_set():
                raise StoreUnavailable(f"could not commit the job: {e}") from e
        if batch.error is not None:
            raise StoreUnavailable(f"could not commit the job: {batch.error}") from batch.error

    def save_audited(self, recs: list[JobRecord], audit: AuditLog, entry: PendingEntry, timeout: float = 10.0) -> None:
        """Make these rows and a prepared audit entry (`AuditLog.prepare`, not yet queued) durable together: the
        job exists only if its entry does. With a journal, one record holds both (the entry linked onto the chain
        now); without one, they commit in one transaction, grouped with whatever else is queued in either.
        Raises AuditUnavailable or StoreUnavailable (nothing kept)."""
        self._audit = audit
        if self._journal is not None:
            with self._lock:
                rows = [r.row() for r in recs]
                if audit.link_journaled(entry, lambda values: self._append({"rows": rows, "audit": [values]})):
                    self._queue.append(_Batch(rows, journaled=True))
                    self.stats.saves += 1
                    self._post_locked()
                    return
        audit.queue(entry)
        batch = self._enqueue(recs)
        try:
            self._writer.call(lambda con: self._commit_queued(con, audit), timeout=timeout)
        except Exception as e:
            if not batch.done.is_set():
                raise AuditUnavailable(f"audit log write failed: {e}") from e
        audit.outcome(entry)  # raises when the transaction failed
        if batch.error is not None:
            raise StoreUnavailable(f"could not commit the job: {batch.error}") from batch.error

    def settle(self, timeout: float = 10.0) -> None:
        """Commit what the journal holds and wait for it (a read that must see every answered save; the
        writer's `settle`, and its stop)."""
        with self._lock:
            idle = not self._queue and not self._in_flight
        if not idle:
            self._writer.call(self._commit_queued, timeout=timeout)

    @property
    def journal_pending_bytes(self) -> int:
        """Journal bytes whose rows are not yet committed (0 without a journal)."""
        return self._journal.pending_bytes if self._journal is not None else 0

    def _settled_for_read(self) -> None:
        if self._journal is not None:
            self._writer.settle()

    def _append(self, record: dict) -> bool:
        """Under `_lock`: one journal record; False when it could not be written."""
        assert self._journal is not None
        if not self._journal.append(orjson.dumps(record)):
            return False
        self.stats.journaled += 1
        return True

    def _post_locked(self) -> None:
        if self._posted:
            return
        try:
            self._writer.post(self._commit_queued)
        except RuntimeError:  # stopping: the journal keeps the rows for the next start
            return
        self._posted = True

    def _retry_later(self) -> None:
        def again() -> None:
            with self._lock:
                if self._queue:
                    self._post_locked()

        t = threading.Timer(RETRY_S, again)
        t.daemon = True
        t.start()

    def _enqueue(self, recs: list[JobRecord]) -> _Batch:
        with self._lock:
            batch = _Batch([r.row() for r in recs])
            self._queue.append(batch)
            self.stats.saves += 1
        return batch

    def _commit_queued(self, con: duckdb.DuckDBPyConnection, audit: AuditLog | None = None) -> None:
        """On the writer thread: every queued row in one statement and one transaction, with every queued audit
        entry (when an audit log is known) and the journal position they cover."""
        audit = audit or self._audit
        with self._lock:
            self._posted = False
            batches, self._queue = self._queue, []
            upto = self._journal.seal() if self._journal is not None and batches else None
            # Under the lock: every entry journaled before the seal is in the audit queue now.
            try:
                entries = audit.take(con) if audit is not None else []
            except Exception:  # (its one-time read of the chain's head) the rows wait for the next commit
                self._queue[:0] = batches
                raise
            self._in_flight += 1
        try:
            self._commit(con, batches, entries, upto, audit)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _commit(
        self,
        con: duckdb.DuckDBPyConnection,
        batches: list[_Batch],
        entries: list[PendingEntry],
        upto: int | None,
        audit: AuditLog | None,
    ) -> None:
        if not batches and not entries:
            return
        latest: dict[tuple[str, int], tuple] = {}
        for b in batches:
            for row in b.rows:
                latest[(row[0], row[1])] = row  # the newest save of a (job, attempt) wins
        rows = list(latest.values())
        fresh = [r for r in rows if (r[0], r[1]) not in self._known]
        known = [r for r in rows if (r[0], r[1]) in self._known]
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            con.begin()
            if audit is not None:
                audit.insert(con, entries)
            for i in range(0, len(fresh), 50):
                _insert(con, fresh[i : i + 50])
            if known:
                _update(con, known)
            if upto is not None:
                set_committed_seq(con, JOURNAL_KEY, upto)
            if audit is not None:
                with audit.lock:  # the audit head moves with the commit (verify reads under this lock)
                    con.commit()
                    audit.published(entries)
            else:
                con.commit()
        except Exception as e:
            err = e
            try:
                con.rollback()
            except duckdb.Error:
                pass
            if audit is not None:
                audit.failed(entries, e)  # before taking `_lock`: a journaled save may wait on it under the lock
            log.error("could not commit %d job row(s): %s", len(rows), e)
            kept = [b for b in batches if b.journaled]
            if kept:  # answered already: they stay queued (and in the journal) and are tried again
                with self._lock:
                    self._queue[:0] = kept
                    self.stats.retries += 1
                self._retry_later()
            batches = [b for b in batches if not b.journaled]
        else:
            self._known.update((r[0], r[1]) for r in fresh)
            if upto is not None:
                assert self._journal is not None
                with self._lock:
                    self._journal.release(upto)
        if rows:
            self.stats.commits += 1
            self.stats.rows += len(rows)
            self.stats.last_rows = len(rows)
            self.stats.commit_s_total += time.perf_counter() - t0
        for b in batches:
            b.error = err
            b.done.set()

    # ------------------------------------------------------------------ buffered series

    def usage(self, rows: list[tuple]) -> None:
        """Job usage samples (USAGE_COLUMNS); buffered like telemetry, lost at most a flush on a crash."""
        self._writer.append("job_usage", USAGE_COLUMNS, rows)

    def quota_usage(self, rows: list[tuple]) -> None:
        self._writer.append("quota_usage", QUOTA_USAGE_COLUMNS, rows)

    # ------------------------------------------------------------------ quotas set over the API

    def quota_event(self, seq: int, ts: float, pipeline: str, body: str | None, principal: str) -> None:
        """Durable before the API answers (a PUT or DELETE of a quota)."""
        row = [seq, ts, pipeline, body, principal]
        try:
            self._writer.call(lambda con: con.execute("INSERT INTO quota_events VALUES (?, ?, ?, ?, ?)", row))
        except Exception as e:
            raise StoreUnavailable(f"could not record the quota: {e}") from e

    def quota_events(self) -> list[tuple[int, str, str | None]]:
        """(seq, pipeline, body) in order; body None: deleted."""
        cur = self._con.cursor()
        try:
            return cur.execute("SELECT seq, pipeline, body FROM quota_events ORDER BY seq").fetchall()
        finally:
            cur.close()

    # ------------------------------------------------------------------ reads

    def load(self, ended_since: float) -> list[JobRecord]:
        """Start-up: every job's newest attempt that is active or ended after `ended_since` (older ones
        stay in the store, read one at a time by `latest`)."""
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT job, spec, handle FROM (SELECT * FROM jobs"
                " QUALIFY row_number() OVER (PARTITION BY id ORDER BY attempt DESC) = 1)"
                " WHERE ended_at IS NULL OR ended_at >= ? ORDER BY id",
                [ended_since],
            ).fetchall()
            last = cur.execute("SELECT max(id) FROM jobs").fetchone()
        finally:
            cur.close()
        if last and last[0]:
            seen_job_id(last[0])
        out = []
        for job, spec, handle in rows:
            try:
                rec = JobRecord.from_row(job, spec, handle)
            except Exception:
                log.exception("unreadable job row, skipped: %s", job[:200])
                continue
            out.append(rec)
            self._known.add((rec.id, rec.job.attempt))
        return out

    def latest(self, job_id: str) -> JobRecord | None:
        """A job's newest attempt from the store (one no longer held in memory). No `settle`: a job whose rows
        may be only in the journal is in memory (callers hold the service's lock here, too)."""
        cur = self._con.cursor()
        try:
            row = cur.execute(
                "SELECT job, spec, handle FROM jobs WHERE id = ? ORDER BY attempt DESC LIMIT 1", [job_id]
            ).fetchone()
        finally:
            cur.close()
        if row is None:
            return None
        rec = JobRecord.from_row(*row)
        self._known.add((rec.id, rec.job.attempt))
        return rec

    def forget(self, keys: list[tuple[str, int]]) -> None:
        """Rows of jobs dropped from memory (no longer updated)."""
        with self._lock:
            self._known.difference_update(keys)

    def attempts(self, job_id: str) -> list[Job]:
        """Earlier attempts of a job, oldest first."""
        self._settled_for_read()
        cur = self._con.cursor()
        try:
            rows = cur.execute("SELECT job FROM jobs WHERE id = ? ORDER BY attempt", [job_id]).fetchall()
        finally:
            cur.close()
        return [Job.model_validate_json(r[0]) for r in rows]

    def recent_elapsed(self, pipeline: str, limit: int = 50) -> list[float]:
        """Elapsed seconds of the pipeline's latest completed attempts (job_duration's p95, cached a minute: the
        newest ends may be a commit behind)."""
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT ended_at - started_at FROM jobs WHERE pipeline = ? AND state = 'COMPLETED'"
                " AND started_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?",
                [pipeline, limit],
            ).fetchall()
        finally:
            cur.close()
        return [float(r[0]) for r in rows if r[0] is not None]


_PH = "(" + ", ".join("?" * len(JOB_COLUMNS)) + ")"
_SETS = ", ".join(f"{c} = n.{c}" for c in JOB_COLUMNS[2:])


def _insert(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """New rows: a plain multi-row INSERT (INSERT OR REPLACE costs ~4 ms a statement here, INSERT ~1 ms)."""
    sql = f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES " + ", ".join([_PH] * len(rows))
    con.execute(sql, [v for r in rows for v in r])


def _update(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """Rows already there: one UPDATE (~0.8 ms for one row, ~3 ms for 50 from unnest)."""
    if len(rows) == 1:
        sets = ", ".join(f"{c} = ?" for c in JOB_COLUMNS[2:])
        r = rows[0]
        con.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND attempt = ?", [*r[2:], r[0], r[1]])
        return
    data = [list(col) for col in zip(*rows, strict=True)]
    sel = ", ".join(f"unnest(${i + 1}) AS {c}" for i, c in enumerate(JOB_COLUMNS))
    con.execute(f"UPDATE jobs SET {_SETS} FROM (SELECT {sel}) AS n WHERE jobs.id = n.id AND jobs.attempt = n.attempt",
                data)  # fmt: skip


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)


def _upsert(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """Rows that may or may not be there (a replay): one INSERT OR REPLACE from unnest per 500 rows."""
    sel = ", ".join(f"unnest(${i + 1})" for i in range(len(JOB_COLUMNS)))
    for i in range(0, len(rows), 500):
        data = [list(col) for col in zip(*rows[i : i + 500], strict=True)]
        con.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) SELECT {sel}", data)


@dataclass
class JobsReplay:
    replay: Replay
    audit_seqs: tuple[int, int] | None = None  # the audit entries put back (first, last): the head trails them


def replay_jobs_journal(con: duckdb.DuckDBPyConnection, directory: Path) -> JobsReplay:
    """At start, before the audit chain is checked and before the jobs service loads: put back the job rows
    and audit entries a crash left only in the jobs journal (each job's newest row wins; entries the chain
    already holds are skipped), then open the journal for writing."""
    seqs: list[int] = []

    def apply(con: duckdb.DuckDBPyConnection, records: list[bytes]) -> int:
        latest: dict[tuple[str, int], tuple] = {}
        entries: dict[int, list] = {}
        for rec in records:
            try:
                d = orjson.loads(rec)
            except orjson.JSONDecodeError:
                log.warning("jobs journal: an undecodable record was skipped")
                continue
            for row in d.get("rows") or []:
                latest[(row[0], row[1])] = tuple(row)
            for values in d.get("audit") or []:
                entries[int(values[0])] = values
        have = con.execute("SELECT coalesce(max(seq), 0) FROM audit_log").fetchone()[0]
        missing = [entries[k] for k in sorted(entries) if k > have]
        if missing:
            seqs[:] = [int(missing[0][0]), int(missing[-1][0])]
            ph = "(" + ", ".join("?" * len(missing[0])) + ")"
            values = [v for e in missing for v in e]
            con.execute("INSERT INTO audit_log VALUES " + ", ".join([ph] * len(missing)), values)
        if latest:
            _upsert(con, list(latest.values()))
        if latest or missing:
            log.warning("jobs journal: %d job row(s) and %d audit entr%s a crash left uncommitted are now stored",
                        len(latest), len(missing), "y" if len(missing) == 1 else "ies")  # fmt: skip
        return len(latest)

    rep = replay(con, directory, JOURNAL_KEY, apply, "jobs journal")
    rep.journal.unwritten = "job saves wait for their commit"
    # Past this much uncommitted (the store failing for a while), saves wait for their commit again, which
    # then fail: 503s rather than an unbounded queue of rows in memory (~40,000 job saves).
    rep.journal.max_pending_bytes = MAX_JOURNAL_BYTES
    return JobsReplay(rep, (seqs[0], seqs[1]) if seqs and rep.problem is None else None)
