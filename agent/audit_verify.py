"""Verify the audit chain (agent/audit.py): every link, where keying began, and the exported head.

The answer (`AuditVerify`) says one of: `ok`; `altered` (the first altered entry: its seq, action and
target — a changed or missing row, a broken link, or a plain SHA-256 link where the chain is keyed, i.e.
rewritten without the key); `head_missing`; `head_behind` (entries after the exported head); `chain_shorter`
(the head names an entry the chain no longer has: the tail was removed); `head_altered` (a keyed head whose
MAC doesn't check, or an unkeyed head over a keyed chain); `unkeyed` (a key is configured but nothing is
keyed yet: the agent keys the chain at its next start); `key_needed` (keyed links checked without the key);
`not_extending` (asked with `since`: the chain no longer holds an entry seen before — it was rewritten).
`audit.anomaly` entries (what the agent found wrong at a start) are listed as warnings.
"""

from __future__ import annotations

import hmac
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import duckdb

from agent.audit import GENESIS, UNKEYED_WARNING, entry_hash, head_mac, read_head_record
from agent.schemas import AuditVerify
from agent.store.reader import audit_row


def verify_chain(
    con: duckdb.DuckDBPyConnection,
    head_file: Path | None = None,
    key: bytes | None = None,
    since: tuple[int, str] | None = None,
    lock: AbstractContextManager | None = None,
) -> AuditVerify:
    """Walk the chain from entry 1; report the first thing that does not check out (see the module).

    `since` (seq, hash), a head seen before (a console's): the walk starts there instead — that entry must
    still be in the chain with that hash and its content, and every later one must link on from it — so a
    poller's check costs the entries since its last one, not the whole log.
    `lock`: the audit log's, held while the rows and the head are read, so an append in between (committed,
    head not yet exported) isn't mistaken for a lagging or truncated chain."""
    first_seq = since[0] if since is not None and since[0] >= 1 else 1
    with lock if lock is not None else nullcontext():
        cur = con.cursor()
        try:
            rows = cur.execute("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq", [first_seq]).fetchall()
            total = cur.execute("SELECT count(*) FROM audit_log").fetchall()[0][0]
            first = cur.execute("SELECT hash FROM audit_log WHERE seq = 1").fetchall()
        finally:
            cur.close()
        exported = read_head_record(head_file) if head_file is not None else None
    warnings: list[str] = [] if key is not None else [UNKEYED_WARNING]
    head_keyed_since: int | None = None
    head_mac_ok: bool | None = None
    if exported is not None and exported.mac is not None:
        if key is None:
            warnings.append("the exported head is keyed: verify with the audit key to check it")
        else:
            want = head_mac(key, exported.seq, exported.hash, exported.keyed_since or 0)
            head_mac_ok = hmac.compare_digest(want, exported.mac)
            if head_mac_ok:
                head_keyed_since = exported.keyed_since

    base = {"entries": total, "keyed": key is not None, "warnings": warnings,
            "exported_head_seq": exported.seq if exported else None,
            "genesis": first[0][0] if first else None}  # fmt: skip

    def result(status: str, problem: str | None, bad: object = None, **kw) -> AuditVerify:
        fields = dict(base, **kw)
        if bad is not None:
            fields.update(first_bad_seq=bad.seq, first_bad_action=bad.action, first_bad_target=bad.target)
        return AuditVerify(ok=status == "ok", status=status, problem=problem, **fields)

    prev, expected_seq = GENESIS, 1
    if first_seq > 1:  # from a head seen before: it must still be there, as it was
        assert since is not None
        start = audit_row(rows[0]) if rows else None
        if start is None or start.seq != first_seq or start.hash != since[1]:
            held = "ends before it" if start is None or start.seq != first_seq else f"holds another entry {first_seq}"
            return result(
                "not_extending",
                f"the chain no longer extends the head seen before (entry {first_seq}, {since[1][:12]}…): it {held} "
                "— it was rewritten or replaced", None, extends=False, first_bad_seq=first_seq,
                head=rows[-1][-1] if rows else None, head_seq=rows[-1][0] if rows else None,
            )  # fmt: skip
        prev, expected_seq = start.prev_hash, first_seq
        warnings.append(f"checked from entry {first_seq} (the head seen before) on")
    first_keyed: int | None = None
    marked: int | None = None  # keyed_since named by an `audit.keyed` entry (keying began on an old chain)
    by_seq: dict[int, str] = {}
    for r in rows:
        e = audit_row(r)
        where = {"head": prev, "head_seq": expected_seq - 1, "keyed_since": first_keyed or head_keyed_since}
        if e.seq != expected_seq:
            return result("altered", f"entry {expected_seq} is missing (next is {e.seq})", None,
                          first_bad_seq=expected_seq, **where)  # fmt: skip
        if e.prev_hash != prev:
            return result("altered", f"entry {e.seq} does not link to the entry before it", e, **where)
        fields = e.model_dump()
        if key is not None and hmac.compare_digest(entry_hash(fields, prev, key), e.hash):
            first_keyed = first_keyed or e.seq
        elif entry_hash(fields, prev) == e.hash:
            keyed_from = first_keyed or head_keyed_since or marked
            if e.action == "audit.keyed":  # the entry that says keying began is itself keyed
                keyed_from = e.seq
            if key is not None and keyed_from is not None and e.seq >= keyed_from:
                return result(
                    "altered",
                    f"entry {e.seq} is a plain SHA-256 link but the chain is keyed from entry {keyed_from}: "
                    "it was rewritten without the key", e, **where,
                )  # fmt: skip
        elif key is None and exported is not None and exported.mac is not None:  # a keyed chain, no key here
            return result(
                "key_needed",
                f"entry {e.seq} is not a plain SHA-256 link: it is keyed (verify with the audit key) or altered",
                e, **where,
            )  # fmt: skip
        else:
            return result("altered", f"entry {e.seq} was modified after it was written", e, **where)
        if e.action == "audit.keyed" and isinstance(e.detail.get("keyed_since"), int):
            marked = marked or e.detail["keyed_since"]
        if e.action == "audit.anomaly":
            warnings.append(f"entry {e.seq} (at start, ts {e.ts:.0f}): {e.detail.get('problem')}")
        by_seq[e.seq] = e.hash
        prev, expected_seq = e.hash, e.seq + 1

    last = expected_seq - 1
    keyed_since = first_keyed or head_keyed_since
    end = {"head": prev if rows else None, "head_seq": last or None, "keyed_since": keyed_since}
    if exported is None:
        if rows and head_file is not None:
            return result(
                "head_missing",
                f"the exported head ({head_file.name}) is missing: a truncated or rewritten chain can't be told "
                "from this one", None, **end,
            )  # fmt: skip
    elif head_mac_ok is False:
        return result("head_altered", "the exported head's MAC does not check: it was rewritten", None, **end)
    elif key is not None and exported.mac is None and first_keyed is not None:
        return result(
            "head_altered", f"the exported head is not keyed but the chain is from entry {first_keyed}: it was "
            "rewritten", None, **end,
        )  # fmt: skip
    elif exported.seq > last:
        return result(
            "chain_shorter",
            f"the chain ends at entry {last} but the exported head is entry {exported.seq}: "
            f"entries {last + 1}..{exported.seq} were removed", None, first_bad_seq=last + 1, **end,
        )  # fmt: skip
    elif exported.seq >= first_seq and by_seq.get(exported.seq) != exported.hash:
        bad = audit_row(rows[exported.seq - first_seq])
        return result("altered", f"entry {exported.seq} differs from the exported head", bad, **end)
    elif exported.seq < last:
        after = [r for r in rows if r[0] > exported.seq]
        if key is not None and first_keyed is not None and all(r[0] >= first_keyed for r in after):
            warnings.append(
                f"the exported head is entry {exported.seq}, the chain goes on to {last} (keyed entries: a crash "
                "between a commit and its export); the agent re-exports it at start"
            )
        else:
            return result(
                "head_behind",
                f"the exported head is entry {exported.seq} but the chain goes on to entry {last}: entries were "
                "added without exporting the head", audit_row(after[0]), **end,
            )  # fmt: skip
    if since is not None:
        seq, h = since
        if by_seq.get(seq) != h:
            held = "ends before it" if seq > last else f"holds another entry {seq}"
            return result(
                "not_extending",
                f"the chain no longer extends the head seen before (entry {seq}, {h[:12]}…): it {held} — "
                "it was rewritten or replaced", None, extends=False, first_bad_seq=min(seq, last + 1), **end,
            )  # fmt: skip
        end["extends"] = True
    if key is not None and rows and keyed_since is None:
        return result(
            "unkeyed", "an audit key is configured but no entry is keyed yet: the agent keys the chain at its "
            "next start (or the chain and its head were rewritten without the key)", None, **end,
        )  # fmt: skip
    return result("ok", None, None, **end)
