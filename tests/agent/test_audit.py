"""Audit chain: entries link, tampering anywhere is found, truncation is found, writes fail closed."""

from __future__ import annotations

import pytest

from agent.audit import AuditLog, AuditUnavailable, read_head, verify_chain
from agent.schemas import Principal
from agent.store.db import open_store
from agent.store.writer import StoreWriter

ALICE = Principal(name="alice", role="admin", via="token")


@pytest.fixture
def audit(tmp_path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    log = AuditLog(w, tmp_path / "audit.head")
    yield log, opened.con, w, tmp_path / "audit.head"
    w.stop()
    opened.con.close()


def _fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.record(ALICE, "token.create", f"token:t{i}", {"role": "viewer", "i": i, "note": "ünïcode"}, "127.0.0.1:5")


def test_chain_verifies_and_head_is_exported(audit):
    log, con, _, head = audit
    _fill(log)
    v = verify_chain(con, head)
    assert v.ok and v.entries == 5
    assert read_head(head) == (5, v.head)


@pytest.mark.parametrize(
    ("sql", "bad_seq", "problem"),
    [
        ('UPDATE audit_log SET detail = \'{"role":"admin"}\' WHERE seq = 3', 3, "modified"),
        ("UPDATE audit_log SET principal = 'mallory' WHERE seq = 1", 1, "modified"),
        ("DELETE FROM audit_log WHERE seq = 2", 2, "missing"),
        ("UPDATE audit_log SET prev_hash = repeat('0', 64) WHERE seq = 4", 4, "link"),
    ],
)
def test_tampering_is_detected(audit, sql, bad_seq, problem):
    log, con, _, head = audit
    _fill(log)
    con.execute(sql)
    v = verify_chain(con, head)
    assert not v.ok and v.first_bad_seq == bad_seq and problem in v.problem


def test_rehashing_the_tail_is_caught_by_exported_head(audit):
    log, con, _, head = audit
    _fill(log)
    con.execute("DELETE FROM audit_log WHERE seq = 5")  # a valid but shorter chain
    v = verify_chain(con, head)
    assert not v.ok and "removed" in v.problem


def test_audit_fails_closed_when_store_is_gone(audit):
    log, _, w, _ = audit
    _fill(log, 1)
    w.stop()
    with pytest.raises(AuditUnavailable):
        log.record(ALICE, "token.revoke", "token:x")


def test_concurrent_entries_share_commits_and_the_chain_still_verifies(audit):
    """Group commit: callers that arrive while a commit runs go into the next one together; every caller
    is answered with its own committed entry, and the chain links in exactly the order entries were linked."""
    import threading

    log, con, _, head = audit
    _fill(log, 1)
    got: list = []
    errors: list = []

    def one(i: int) -> None:
        try:
            for j in range(10):
                got.append(log.record(ALICE, "job.submit", f"pipeline:p{i}", {"i": i, "j": j}))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    v = verify_chain(con, head)
    assert v.ok and v.entries == 161, v.problem
    assert read_head(head) == (161, v.head)
    stored = {r[0]: r[1] for r in con.execute("SELECT seq, hash FROM audit_log").fetchall()}
    assert sorted(e.seq for e in got) == list(range(2, 162))
    assert all(stored[e.seq] == e.hash for e in got)  # each caller was answered with what is stored
    assert log.entries == 161 and log.commits < log.entries  # some commits held more than one entry


def test_a_failed_group_commit_fails_its_callers_and_leaves_the_head(audit):
    """Fail closed: a commit that fails answers nobody with an entry, the head stays, and the next entry links
    onto the last committed one."""
    log, con, _, head = audit
    _fill(log, 2)
    before = read_head(head)
    con.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    with pytest.raises(AuditUnavailable):
        log.record(ALICE, "token.revoke", "token:x")
    assert read_head(head) == before and log.head == before
    con.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
    e = log.record(ALICE, "token.revoke", "token:y")
    assert e.seq == 3 and e.prev_hash == before[1]
    v = verify_chain(con, head)
    assert v.ok and v.entries == 3


def _group(log: AuditLog, n: int, tag: str) -> None:
    """`n` entries committed as one group (queued first, then one commit takes them all)."""
    items = [log.enqueue(ALICE, "token.create", f"token:{tag}{i}", {"i": i}) for i in range(n)]
    log.commit(items[-1])


def test_a_crash_between_a_groups_commit_and_its_export_is_not_reported_broken(audit, monkeypatch):
    """The head is exported after the commit: kill -9 between the two leaves it a whole group behind (a burst's
    entries commit together). At start that group is recognised as the agent's own, from the `meta` row the
    commit wrote with it, and the head is exported again; anything else past the head is still reported."""
    log, con, _, head = audit
    _group(log, 3, "a")
    assert read_head(head)[0] == 3

    def crash(*_a):
        raise OSError("killed before the export")

    monkeypatch.setattr(log, "_write_head", crash)
    _group(log, 4, "b")  # committed as entries 4-7; the head still says 3
    assert read_head(head)[0] == 3
    monkeypatch.undo()
    again = AuditLog(log._writer, head)
    check = again.start(con)
    assert "BROKEN" not in check, check
    assert read_head(head)[0] == 7 and verify_chain(con, head).ok
    # An entry added behind the agent's back (a valid link, no export) is not the last group: reported.
    prev = con.execute("SELECT hash FROM audit_log WHERE seq = 7").fetchone()[0]
    from agent.audit import canonical_json, entry_hash

    fields = {"seq": 8, "ts": 1.0, "principal": "mallory", "role": "admin", "via": "token", "action": "token.create",
              "target": "token:m", "detail": {}, "client": None, "prev_hash": prev}  # fmt: skip
    fields["hash"] = entry_hash(fields, prev)
    con.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [8, 1.0, "mallory", "admin", "token", "token.create", "token:m", canonical_json({}), None, prev,
                 fields["hash"]])  # fmt: skip
    third = AuditLog(log._writer, head)
    assert "BROKEN at start" in third.start(con)
