"""The audit chain's anchor (issue 9, item 4): a keyed chain someone who can write the data dir can't rewrite
unnoticed, a missing or lagging head reported, the first altered entry named, keying begun on an old chain.

The attacker here has the data dir (the DuckDB file and audit.head) but not the key: they recompute plain
SHA-256 links — exactly what the unkeyed chain could not tell from the real thing.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from agent.audit import (
    GENESIS,
    AuditKeyError,
    AuditLog,
    AuditUnavailable,
    canonical_json,
    entry_hash,
    load_key,
    read_head_record,
)
from agent.audit_verify import verify_chain
from agent.schemas import Principal
from agent.store.db import open_store
from agent.store.writer import StoreWriter

KEY = b"k" * 32
ALICE = Principal(name="alice", role="admin", via="token")


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    yield opened.con, w, tmp_path / "audit.head"
    w.stop()
    opened.con.close()


def _log(store, key: bytes | None = KEY) -> AuditLog:
    con, w, head = store
    log = AuditLog(w, head, key)
    log.start(con)
    return log


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.record(ALICE, "token.create", f"token:t{i}", {"role": "viewer", "i": i}, "127.0.0.1:5")


def _rows(con) -> list[dict]:
    cols = ["seq", "ts", "principal", "role", "via", "action", "target", "detail", "client", "prev_hash", "hash"]
    out = []
    for r in con.execute("SELECT * FROM audit_log ORDER BY seq").fetchall():
        d = dict(zip(cols, r, strict=True))
        d["detail"] = json.loads(d["detail"])
        out.append(d)
    return out


def _forge_from(con, head, seq: int, change: dict) -> None:
    """The attacker without the key: change entry `seq`, recompute plain links from there, export a head."""
    rows = _rows(con)
    prev = rows[seq - 2]["hash"] if seq > 1 else GENESIS
    for r in rows[seq - 1 :]:
        if r["seq"] == seq:
            r.update(change)
        r["prev_hash"] = prev
        r["hash"] = entry_hash(r, prev)
        con.execute(
            "UPDATE audit_log SET principal = ?, detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            [r["principal"], canonical_json(r["detail"]), r["prev_hash"], r["hash"], r["seq"]],
        )
        prev = r["hash"]
    head.write_text(f"{rows[-1]['seq']} {prev}\n")


def test_a_keyed_chain_verifies_and_its_head_carries_a_mac(store):
    con, _, head = store
    log = _log(store)
    _fill(log, 5)
    v = verify_chain(con, head, KEY)
    assert v.ok and v.status == "ok" and v.keyed and v.keyed_since == 1 and v.head_seq == 5 and not v.warnings
    h = read_head_record(head)
    assert (h.seq, h.hash, h.keyed_since) == (5, v.head, 1) and h.mac
    assert log.current_head().seq == 5 and log.current_head().keyed
    # Without the key nothing keyed verifies: said so, not "OK".
    assert verify_chain(con, head).status == "key_needed"
    assert all(r["hash"] != entry_hash(r, r["prev_hash"]) for r in _rows(con))  # not plain SHA-256


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
def test_deleting_the_head_and_the_last_row_is_reported(store, key):
    con, _, head = store
    _fill(_log(store, key), 5)
    con.execute("DELETE FROM audit_log WHERE seq = 5")
    head.unlink()
    v = verify_chain(con, head, key)
    assert not v.ok and v.status == "head_missing" and "missing" in v.problem
    assert v.exported_head_seq is None and v.head_seq == 4


def test_truncating_the_tail_is_reported_and_the_keyed_head_cannot_be_rewritten_to_match(store):
    con, _, head = store
    _fill(_log(store), 5)
    exported = head.read_text()
    con.execute("DELETE FROM audit_log WHERE seq = 5")
    v = verify_chain(con, head, KEY)
    assert v.status == "chain_shorter" and v.first_bad_seq == 5 and "5..5 were removed" in v.problem
    h4 = _rows(con)[-1]["hash"]
    head.write_text(f"4 {h4}\n")  # an unkeyed head over the keyed chain
    assert verify_chain(con, head, KEY).status == "head_altered"
    _, _, since, _ = exported.split()
    head.write_text(f"4 {h4} {since} {'0' * 64}\n")  # a keyed head with a MAC made up
    v = verify_chain(con, head, KEY)
    assert v.status == "head_altered" and "MAC" in v.problem


def test_rewriting_the_chain_and_the_head_without_the_key_names_the_first_altered_entry(store):
    con, _, head = store
    _fill(_log(store), 6)
    _forge_from(con, head, 3, {"principal": "mallory"})
    v = verify_chain(con, head, KEY)
    assert not v.ok and v.status == "altered" and v.first_bad_seq == 3
    assert (v.first_bad_action, v.first_bad_target) == ("token.create", "token:t2")
    assert "rewritten without the key" in v.problem
    # The same rewrite of an unkeyed chain verifies: what the warning is about.
    assert verify_chain(con, head).warnings


def test_the_unkeyed_chain_is_fooled_by_the_same_rewrite_and_warns(tmp_path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    try:
        log = _log((opened.con, w, tmp_path / "audit.head"), None)
        _fill(log, 4)
        _forge_from(opened.con, tmp_path / "audit.head", 2, {"principal": "mallory"})
        v = verify_chain(opened.con, tmp_path / "audit.head")
        assert v.ok and not v.keyed and "unkeyed" in v.warnings[0]  # the limit of an unkeyed chain, said
    finally:
        w.stop()
        opened.con.close()


def test_keying_begins_on_an_existing_chain_and_is_enforced_from_there(store):
    con, w, head = store
    _fill(_log(store, None), 3)  # an agent before the key was configured
    log = AuditLog(w, head, KEY)
    assert log.start(con) == "keyed since entry 4"
    rows = _rows(con)
    assert rows[3]["action"] == "audit.keyed" and rows[3]["detail"]["keyed_since"] == 4
    _fill(log, 2)
    v = verify_chain(con, head, KEY)
    assert v.ok and v.keyed_since == 4 and v.head_seq == 6
    # A restart keeps keying from entry 4, adds nothing.
    assert AuditLog(w, head, KEY).start(con) == "keyed since entry 4" and len(_rows(con)) == 6
    # Rewriting from an unkeyed entry on (and the head, unkeyed) carries plain links past keying's start:
    # entries 1-3 were plain all along, so the first entry that proves it is the `audit.keyed` one.
    _forge_from(con, head, 2, {"principal": "mallory"})
    assert read_head_record(head).mac is None
    v = verify_chain(con, head, KEY)
    assert not v.ok and v.status == "altered" and v.first_bad_seq == 4 and v.first_bad_action == "audit.keyed"


def test_a_missing_head_at_start_is_put_on_record(store):
    con, w, head = store
    _fill(_log(store), 4)
    head.unlink()
    log = AuditLog(w, head, KEY)
    check = log.start(con)
    assert "BROKEN" in check and "missing" in check
    rows = _rows(con)
    assert rows[-1]["action"] == "audit.anomaly" and rows[-1]["detail"]["status"] == "head_missing"
    v = verify_chain(con, head, KEY)  # the head is exported again, the anomaly stays in the keyed chain
    assert v.ok and any("missing" in x for x in v.warnings)


def test_a_head_a_crash_left_behind_is_a_warning_when_the_entries_are_keyed(store):
    con, w, head = store
    log = _log(store)
    _fill(log, 3)
    behind = head.read_text()
    _fill(log, 1)
    head.write_text(behind)  # the commit of entry 4 landed, its export didn't
    v = verify_chain(con, head, KEY)
    assert v.ok and any("crash" in x for x in v.warnings)
    AuditLog(w, head, KEY).start(con)
    assert read_head_record(head).seq == 4
    # Unkeyed, entries past the head can't be told from inserted rows.
    assert verify_chain(con, head, None).status == "key_needed"


def test_a_keyed_chain_without_its_key_refuses_to_append(store):
    con, w, head = store
    _fill(_log(store), 2)
    log = AuditLog(w, head, None)  # the credential went missing
    assert log.start(con).startswith("BROKEN: the audit chain is keyed")
    with pytest.raises(AuditUnavailable, match="no audit key"):
        log.record(ALICE, "token.create", "token:x")
    assert len(_rows(con)) == 2  # nothing plain appended to the keyed chain
    assert verify_chain(con, head, KEY).ok


def test_since_says_whether_the_chain_still_holds_a_head_seen_before(store):
    con, _, head = store
    log = _log(store)
    _fill(log, 3)
    seen = (3, log.current_head().hash)
    _fill(log, 2)
    v = verify_chain(con, head, KEY, since=seen)
    assert v.ok and v.extends is True and v.entries == 5 and v.head_seq == 5
    assert any("checked from entry 3" in x for x in v.warnings)  # the walk starts at the head seen before
    con.execute("UPDATE audit_log SET target = 'token:zz' WHERE seq = 4")
    v = verify_chain(con, head, KEY, since=seen)
    assert v.status == "altered" and v.first_bad_seq == 4  # what came after it is still checked
    con.execute("UPDATE audit_log SET target = 'token:t0' WHERE seq = 4")
    assert verify_chain(con, head, KEY, since=seen).ok
    _forge_from(con, head, 1, {"principal": "mallory"})
    for key in (None, KEY):  # even where the rewrite would fool an unkeyed check
        v = verify_chain(con, head, key, since=seen)
        assert not v.ok and v.status == "not_extending" and v.extends is False and v.first_bad_seq == 3
    v = verify_chain(con, head, KEY, since=(9, "f" * 64))
    assert v.status == "not_extending" and "ends before it" in v.problem


def test_the_key_comes_from_outside_the_data_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "audit.key").write_bytes(os.urandom(32))
    with pytest.raises(AuditKeyError, match="inside the data dir"):
        load_key(data / "audit.key", data)
    (tmp_path / "short.key").write_bytes(b"abc")
    with pytest.raises(AuditKeyError, match="at least"):
        load_key(tmp_path / "short.key", data)
    with pytest.raises(AuditKeyError, match="cannot read"):
        load_key(tmp_path / "absent.key", data)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_key(None, data) == (None, "none")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "audit-key").write_bytes(hashlib.sha256(b"x").hexdigest().encode() + b"\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    key, source = load_key(None, data)
    assert key == hashlib.sha256(b"x").hexdigest().encode() and source.endswith("audit-key")
