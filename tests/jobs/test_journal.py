"""The jobs journal: saves answered before their DuckDB commit, put back after a crash, retried after a failed
commit, and the audit chain kept whole (a real DuckDB file, the real writer thread, real journal files)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

import agent.jobs.store as jobs_store
from agent.audit import AuditLog
from agent.audit_verify import verify_chain
from agent.jobs.record import JobRecord, new_job_id
from agent.jobs.store import JobStore, replay_jobs_journal
from agent.schemas import Principal
from agent.schemas.jobs import Job
from agent.store.db import open_store
from agent.store.journal import segments
from agent.store.writer import StoreWriter

ALICE = Principal(name="alice", role="operator", via="token")


def _rec() -> JobRecord:
    now = time.time()
    job = Job(id=new_job_id(now), pipeline="p", state="PENDING", command=["true"], cpu=1, mem=1,
              submitted_by="alice", submitted_at=now)  # fmt: skip
    return JobRecord(job=job)


class Agent:
    """The parts of an agent the jobs store lives among: the store file, its writer, the audit log, the
    journal replayed at start."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.opened = open_store(tmp / "wk.duckdb")
        self.replayed = replay_jobs_journal(self.opened.con, tmp / "jobs-journal")
        self.writer = StoreWriter(self.opened.con, flush_interval=5)
        self.writer.start()
        self.audit = AuditLog(self.writer, tmp / "audit.head")
        self.check = self.audit.start(self.opened.con, self.replayed.audit_seqs)
        self.store = JobStore(self.writer, self.opened.con, self.replayed.replay.journal)

    def submit(self, rec: JobRecord) -> None:
        entry = self.audit.prepare(ALICE, "job.submit", "pipeline:p", {"job": rec.id})
        self.store.save_audited([rec], self.audit, entry)

    def rows(self) -> dict[str, str]:
        cur = self.opened.con.cursor()
        try:
            return dict(cur.execute("SELECT id, state FROM jobs").fetchall())
        finally:
            cur.close()

    def entries(self) -> list[tuple]:
        cur = self.opened.con.cursor()
        try:
            return cur.execute("SELECT seq, action, detail FROM audit_log ORDER BY seq").fetchall()
        finally:
            cur.close()

    def crash(self) -> None:
        """Like kill -9 before the writer committed the journaled saves: nothing more reaches DuckDB."""
        self.writer._settlers.clear()  # a dying process commits nothing on its way out
        self.writer.stop()
        self.opened.con.close()


def test_a_journaled_save_returns_before_its_commit_and_a_crash_keeps_it(tmp_path: Path, monkeypatch) -> None:
    a = Agent(tmp_path)
    held: list = []
    monkeypatch.setattr(a.writer, "post", lambda fn: held.append(fn) or Future())  # the commits never run
    recs = [_rec() for _ in range(5)]
    for r in recs:
        a.submit(r)  # returns: answered from the journal alone
    recs[0].job.state = "RUNNING"
    a.store.save([recs[0]])
    recs[1].job.state, recs[1].job.exit_code = "COMPLETED", 0
    a.store.save([recs[1]])
    assert held and a.rows() == {} and a.entries() == []  # nothing in DuckDB yet
    assert a.store.stats.journaled == 7 and a.store.journal_pending_bytes > 0
    a.crash()

    b = Agent(tmp_path)
    assert b.replayed.replay.records == 7 and b.replayed.audit_seqs == (1, 5)
    want = {r.id: "PENDING" for r in recs} | {recs[0].id: "RUNNING", recs[1].id: "COMPLETED"}
    assert b.rows() == want  # each job's newest row
    assert [(s, act) for s, act, _ in b.entries()] == [(i, "job.submit") for i in range(1, 6)]
    # The chain holds and its head moved to the replayed entries: nothing reported broken.
    assert "BROKEN" not in b.check
    v = verify_chain(b.opened.con, tmp_path / "audit.head", None)
    assert v.ok and v.head_seq == 5, v.problem
    # Replayed once: a second start puts nothing back twice.
    b.crash()
    c = Agent(tmp_path)
    assert c.replayed.replay.records == 0 and len(c.entries()) == 5
    c.writer.stop()


def test_the_commit_follows_and_the_journal_is_emptied(tmp_path: Path) -> None:
    a = Agent(tmp_path)
    recs = [_rec() for _ in range(50)]
    for r in recs:
        a.submit(r)
    a.writer.settle()  # what a read of the tables does first
    assert set(a.rows()) == {r.id for r in recs} and len(a.entries()) == 50
    assert a.store.stats.commits < 50  # saves arriving while a commit runs share the next one
    deadline = time.monotonic() + 5
    while any(s.path.stat().st_size for s in segments(tmp_path / "jobs-journal")):
        assert time.monotonic() < deadline, "committed records stay in the journal"
        time.sleep(0.01)
    assert a.store.journal_pending_bytes == 0
    a.writer.stop()


def test_a_failed_commit_of_answered_rows_is_tried_again(tmp_path: Path, monkeypatch) -> None:
    a = Agent(tmp_path)
    monkeypatch.setattr(jobs_store, "RETRY_S", 0.05)
    real = jobs_store._insert
    fails = {"n": 2}

    def flaky(con, rows):
        if fails["n"]:
            fails["n"] -= 1
            raise RuntimeError("disk trouble")
        real(con, rows)

    monkeypatch.setattr(jobs_store, "_insert", flaky)
    recs = [_rec() for _ in range(3)]
    for r in recs:
        a.submit(r)  # answered, though the commits behind them fail
    deadline = time.monotonic() + 5
    while len(a.rows()) < 3:
        assert time.monotonic() < deadline, f"answered rows never committed: {a.store.stats}"
        time.sleep(0.02)
    assert a.store.stats.retries >= 1
    a.writer.settle()
    assert len(a.entries()) == 3
    assert verify_chain(a.opened.con, tmp_path / "audit.head", None).ok
    a.writer.stop()


def test_an_entry_refused_by_a_failed_commit_leaves_no_hole_in_the_chain(tmp_path: Path, monkeypatch) -> None:
    """A synchronous entry (a cancel's) is refused when its commit fails; journaled submits around it are kept,
    and the chain links them without the refused one."""
    a = Agent(tmp_path)
    first = _rec()
    a.submit(first)
    a.writer.settle()
    real = a.audit.insert
    broke = threading.Event()

    def failing(con, items):
        if not broke.is_set() and any(not it.journaled for it in items):
            broke.set()
            raise RuntimeError("disk trouble")
        real(con, items)

    monkeypatch.setattr(a.audit, "insert", failing)
    monkeypatch.setattr(jobs_store, "RETRY_S", 0.05)
    with pytest.raises(Exception, match="disk trouble"):
        a.audit.record(ALICE, "job.cancel", f"job:{first.id}", {})
    later = [_rec() for _ in range(3)]
    for r in later:
        a.submit(r)
    a.audit.record(ALICE, "job.cancel", f"job:{later[0].id}", {})
    a.writer.settle()
    acts = [act for _, act, _ in a.entries()]
    assert acts == ["job.submit"] * 4 + ["job.cancel"]
    v = verify_chain(a.opened.con, tmp_path / "audit.head", None)
    assert v.ok and v.head_seq == 5, v.problem
    a.writer.stop()


def test_without_a_journal_a_save_waits_for_its_commit(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "wk.duckdb")
    writer = StoreWriter(opened.con, flush_interval=5)
    writer.start()
    store = JobStore(writer, opened.con)
    rec = _rec()
    store.save([rec])
    assert opened.con.cursor().execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    assert store.stats.journaled == 0
    writer.stop()


def test_past_its_bound_a_save_waits_for_its_commit_instead(tmp_path: Path, monkeypatch) -> None:
    """A store that stopped committing must not queue answered rows without end: past the journal's bound a
    save is not journaled, and waits for its commit (which then takes every queued row)."""
    a = Agent(tmp_path)
    monkeypatch.setattr(a.writer, "post", lambda fn: Future())  # the journaled saves' commits never come
    a.store._journal.max_pending_bytes = 4_000  # a few rows' worth
    recs = [_rec() for _ in range(10)]
    for r in recs:
        a.store.save([r])
    assert 0 < a.store.stats.journaled < 10, a.store.stats
    assert a.rows(), "no save waited for a commit"  # only a waiting save commits here: posted commits never run
    a.writer.settle()
    assert set(a.rows()) == {r.id for r in recs}
    a.writer.stop()


def test_concurrent_submits_and_other_entries_through_failing_commits_keep_one_whole_chain(
    tmp_path: Path, monkeypatch
) -> None:
    """Journaled submits from several threads, other audited actions beside them, and every few commits
    failing: every answered submit and every committed action is in the chain exactly once, the refused
    actions are not, and the chain checks."""
    a = Agent(tmp_path)
    monkeypatch.setattr(jobs_store, "RETRY_S", 0.01)
    real_insert = a.audit.insert
    n_commits = {"n": 0}

    def flaky(con, items):
        n_commits["n"] += 1
        if n_commits["n"] % 4 == 0:
            raise RuntimeError("disk trouble")
        real_insert(con, items)

    monkeypatch.setattr(a.audit, "insert", flaky)
    submitted: list[str] = []
    recorded: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def submitter() -> None:
        for _ in range(40):
            r = _rec()
            entry = a.audit.prepare(ALICE, "job.submit", "pipeline:p", {"job": r.id})
            try:
                a.store.save_audited([r], a.audit, entry)
            except Exception:
                continue  # refused (not journaled, and its commit failed): must leave no trace
            with lock:
                submitted.append(r.id)

    def recorder() -> None:
        for i in range(40):
            name = f"t{i}"
            try:
                a.audit.record(ALICE, "token.create", f"token:{name}", {"job": name})
            except Exception:
                with lock:
                    refused.append(name)
                continue
            with lock:
                recorded.append(name)

    threads = [threading.Thread(target=submitter) for _ in range(4)] + [threading.Thread(target=recorder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 10
    while True:
        a.writer.settle()
        got = [json.loads(d)["job"] for _, _, d in a.entries()]
        if len([g for g in got if g.startswith("j-")]) >= len(submitted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert refused, "no commit failed with an action in it: the test exercised nothing"
    assert sorted(g for g in got if g.startswith("j-")) == sorted(submitted)
    assert sorted(g for g in got if not g.startswith("j-")) == sorted(recorded)
    seqs = [s for s, _, _ in a.entries()]
    assert seqs == list(range(1, len(seqs) + 1))
    v = verify_chain(a.opened.con, tmp_path / "audit.head", None)
    assert v.ok, v.problem
    assert set(a.rows()) == set(submitted)
    a.writer.stop()


def test_two_saves_of_one_job_land_in_the_order_of_their_snapshots(tmp_path: Path, monkeypatch) -> None:
    """A cancel's save and the runner's save of the job's end can race: the newer state must be the one the
    store keeps, though the older snapshot was slow to reach the journal."""
    a = Agent(tmp_path)
    rec = _rec()
    a.store.save([rec])
    real_row = JobRecord.row
    slow = threading.Event()

    def row(self):
        snap = real_row(self)
        if threading.current_thread().name == "older":
            slow.set()
            time.sleep(0.1)  # the older snapshot taken, not yet appended
        return snap

    monkeypatch.setattr(JobRecord, "row", row)
    rec.job.state = "RUNNING"
    older = threading.Thread(target=a.store.save, args=([rec],), name="older")
    older.start()
    slow.wait(5)
    rec.job.state, rec.job.exit_code = "COMPLETED", 0
    a.store.save([rec])
    older.join()
    a.writer.settle()
    assert a.rows() == {rec.id: "COMPLETED"}
    a.writer.stop()
