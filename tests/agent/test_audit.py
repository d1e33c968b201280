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
