"""Append-only, hash-chained audit log; fail closed.

Each entry's hash is `sha256(canonical_json(entry) || prev_hash)`, so editing, deleting or
reordering any row breaks the chain from there on. The head hash is also written to
`audit.head` in the data dir after every append, so truncating the newest rows (which leaves a
valid but shorter chain) is detected too. A mutating request is acted on only after its entry is
committed: if the audit write fails, the request fails (503) and nothing happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import duckdb

from agent.api.schemas import AuditEntry, AuditVerify, Principal
from agent.store.reader import audit_row
from agent.store.writer import StoreWriter

GENESIS = "0" * 64


class AuditUnavailable(Exception):
    """The audit entry could not be committed, so the action must not happen."""


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(fields: dict, prev_hash: str) -> str:
    """The chain link: hash of the entry's fields (without `hash`) followed by the previous hash."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256((canonical_json(body) + prev_hash).encode()).hexdigest()


def _fields(e: AuditEntry) -> dict:
    return e.model_dump()


class AuditLog:
    def __init__(self, writer: StoreWriter, head_file: Path) -> None:
        self._writer = writer
        self._head_file = head_file
        self._lock = threading.Lock()

    def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        detail: dict | None = None,
        client: str | None = None,
    ) -> AuditEntry:
        """Commit one entry (on the writer thread) and return it; raises AuditUnavailable."""
        with self._lock:
            try:
                entry = self._writer.call(
                    lambda con: self._append(con, principal, action, target, detail or {}, client)
                )
            except Exception as e:
                raise AuditUnavailable(f"audit log write failed: {e}") from e
            self._write_head(entry.seq, entry.hash)
            return entry

    def _append(
        self,
        con: duckdb.DuckDBPyConnection,
        principal: Principal,
        action: str,
        target: str,
        detail: dict,
        client: str | None,
    ) -> AuditEntry:
        rows = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
        last = rows[0] if rows else None
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        fields = {
            "seq": seq,
            "ts": round(time.time(), 6),
            "principal": principal.name,
            "role": principal.role,
            "via": principal.via,
            "action": action,
            "target": target,
            # Round-trip through JSON so what is hashed is exactly what is stored and read back.
            "detail": json.loads(canonical_json(detail)),
            "client": client,
            "prev_hash": prev,
        }
        fields["hash"] = entry_hash(fields, prev)
        con.execute(
            "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                seq,
                fields["ts"],
                fields["principal"],
                fields["role"],
                fields["via"],
                action,
                target,
                canonical_json(fields["detail"]),
                client,
                prev,
                fields["hash"],
            ],
        )
        return AuditEntry(**fields)

    def _write_head(self, seq: int, h: str) -> None:
        tmp = self._head_file.with_suffix(".tmp")
        tmp.write_text(f"{seq} {h}\n")
        os.replace(tmp, self._head_file)


def read_head(head_file: Path) -> tuple[int, str] | None:
    try:
        seq, h = head_file.read_text().split()
        return int(seq), h
    except (OSError, ValueError):
        return None


def verify_chain(con: duckdb.DuckDBPyConnection, head_file: Path | None) -> AuditVerify:
    """Walk the whole chain; report the first entry whose link or content does not check out."""
    cur = con.cursor()
    try:
        rows = cur.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
    finally:
        cur.close()

    def broken(seq: int, head: str | None, problem: str) -> AuditVerify:
        return AuditVerify(ok=False, entries=len(rows), head=head, first_bad_seq=seq, problem=problem)

    prev, expected_seq = GENESIS, 1
    for r in rows:
        e = audit_row(r)
        if e.seq != expected_seq:
            return broken(expected_seq, prev, f"entry {expected_seq} is missing (next is {e.seq})")
        if e.prev_hash != prev:
            return broken(e.seq, prev, f"entry {e.seq} does not link to the entry before it")
        if entry_hash(_fields(e), prev) != e.hash:
            return broken(e.seq, prev, f"entry {e.seq} was modified after it was written")
        prev, expected_seq = e.hash, e.seq + 1
    head = prev if rows else None
    exported = read_head(head_file) if head_file else None
    if exported is not None:
        seq, h = exported
        # The head file is written just after the commit, so it may lag by an entry after a
        # crash; it must never be ahead of the table or disagree with the row it names.
        by_seq = {r[0]: r[-1] for r in rows}
        if seq > len(rows) or by_seq.get(seq, GENESIS) != h:
            return broken(
                min(seq, len(rows) + 1),
                head,
                f"chain head does not match the exported head (entry {seq}): entries were removed",
            )
    return AuditVerify(ok=True, entries=len(rows), head=head)
