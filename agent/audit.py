"""Append-only, hash-chained audit log, keyed with a secret kept outside the data dir; fail closed.

Each entry's hash links it to the one before: `HMAC-SHA256(key, canonical_json(entry) || prev_hash)` with
the audit key (`[audit] key_file`, or systemd's `$CREDENTIALS_DIRECTORY/audit-key`), or, with no key,
`sha256(canonical_json(entry) || prev_hash)`. Editing, deleting or reordering a row breaks the chain from
there on; without the key nobody can rewrite it so that it verifies again — whoever can write the data dir
can recompute plain SHA-256 links, which is why an unkeyed chain is warned about at start and in /readyz.

The head (`seq hash`, keyed: `seq hash keyed_since mac`) is exported to `audit.head` after every append,
so truncating the newest rows (a valid but shorter chain) is caught; a keyed head carries an HMAC, so it
can't be rewritten to match a truncated chain, and a missing head is reported. Entries written before a key
was configured stay plain SHA-256 links; `keyed_since` (in the keyed head, and the first keyed entry) says
where keying began, and verify refuses a plain link after it. What a whole-chain rewrite as plain links
plus an unkeyed head can fake — "never keyed" — the console catches: it remembers each agent's head and
says when a later chain no longer holds it (console/core/audit_heads.py).

A mutating request is acted on only after its entry is committed: if the audit write fails, the request
fails (503) and nothing happens. Verification: agent/audit_verify.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from agent.config import AgentConfig, ConfigError
from agent.schemas import AuditEntry, AuditHead, Principal
from agent.store.writer import StoreWriter

log = logging.getLogger("watchkeeper.audit")

GENESIS = "0" * 64
LAST_GROUP_KEY = "audit.last_group"  # meta: "first last" seq of the newest committed group of entries
KEY_CREDENTIAL = "audit-key"  # systemd LoadCredential= name
MIN_KEY_BYTES = 16
UNKEYED_WARNING = (
    "audit chain unkeyed: no [audit] key_file and no $CREDENTIALS_DIRECTORY/audit-key, so anyone who can write "
    "the data dir can rewrite the chain and audit.head undetected (docs/operations.md)"
)


class AuditUnavailable(Exception):
    """The audit entry could not be committed, so the action must not happen."""


class AuditKeyError(Exception):
    """The configured audit key can't be used (unreadable, too short, inside the data dir)."""


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(fields: dict, prev_hash: str, key: bytes | None = None) -> str:
    """The chain link: (keyed) hash of the entry's fields (without `hash`) followed by the previous hash."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    msg = (canonical_json(body) + prev_hash).encode()
    if key is not None:
        return hmac.new(key, msg, hashlib.sha256).hexdigest()
    return hashlib.sha256(msg).hexdigest()


def head_mac(key: bytes, seq: int, h: str, keyed_since: int) -> str:
    return hmac.new(key, f"audit.head {seq} {h} {keyed_since}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Head:
    """What `audit.head` says: the last entry, and for a keyed chain where keying began and the head's MAC."""

    seq: int
    hash: str
    keyed_since: int | None = None
    mac: str | None = None


def read_head_record(head_file: Path) -> Head | None:
    try:
        parts = head_file.read_text().split()
        if len(parts) == 2:
            return Head(int(parts[0]), parts[1])
        if len(parts) == 4:
            return Head(int(parts[0]), parts[1], int(parts[2]), parts[3])
    except (OSError, ValueError):
        pass
    return None


def read_head(head_file: Path) -> tuple[int, str] | None:
    """(seq, hash) of the exported head, or None when missing or unreadable."""
    h = read_head_record(head_file)
    return None if h is None else (h.seq, h.hash)


def load_key(key_file: Path | None, data_dir: Path) -> tuple[bytes | None, str]:
    """The audit key and where it came from: `key_file`, else $CREDENTIALS_DIRECTORY/audit-key, else none.

    Raises AuditKeyError for a configured key that can't be used: an agent told to key its chain must not
    quietly run unkeyed."""
    path = key_file
    if path is None and (creds := os.environ.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(creds) / KEY_CREDENTIAL
        path = candidate if candidate.exists() else None
    if path is None:
        return None, "none"
    try:
        resolved, home = Path(path).resolve(), data_dir.resolve()
    except OSError as e:
        raise AuditKeyError(f"audit key {path}: {e.strerror or e}") from None
    if resolved == home or home in resolved.parents:
        raise AuditKeyError(
            f"audit key {path} is inside the data dir {data_dir}: whoever can rewrite the chain could read it"
        )
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise AuditKeyError(f"cannot read the audit key {path}: {e.strerror or e}") from None
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(f"audit key {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES} (32 random bytes)")
    return key, str(path)


_ROW = "(" + ", ".join("?" * 11) + ")"


@dataclass
class PendingEntry:
    """An entry waiting for the group commit, and what became of it."""

    principal: Principal
    action: str
    target: str
    detail: dict
    client: str | None
    done: threading.Event = field(default_factory=threading.Event)
    entry: AuditEntry | None = None
    error: BaseException | None = None
    values: list | None = None  # its audit_log row, once linked onto the chain
    # Acknowledged from a crash journal (the jobs store's): a failed commit keeps it queued, never refuses it.
    journaled: bool = False


class AuditLog:
    def __init__(self, writer: StoreWriter, head_file: Path, key: bytes | None = None) -> None:
        self._writer = writer
        self._head_file = head_file
        self._lock = threading.Lock()
        self.key = key
        self.keyed_since: int | None = None  # the first keyed entry (set by start())
        self.head: tuple[int, str] | None = None  # (seq, hash) of the newest entry, in memory
        self.refusing: str | None = None  # why every append fails closed (a keyed chain and no key)
        self._qlock = threading.Lock()  # the group commit's queue, and the tip
        self._queue: list[PendingEntry] = []
        self._head_loaded = False  # the last hash is kept in memory after the first commit's one SELECT
        self._group_row = False  # the meta row naming the last committed group exists (an UPDATE will do)
        # The newest entry linked onto the chain: the head, or past it by entries queued but not yet committed
        # (journaled ones, and a batch being committed). Entries are linked in `take` or `link_journaled`.
        self._tip: tuple[int, str] | None = None
        # Set while a taken batch holds entries that a failed commit would refuse: their links are undone then,
        # so no journaled entry may link after them until the commit's outcome is known.
        self._settling = threading.Condition(self._qlock)
        self._refusable_in_flight = False
        self.commits = 0  # group commits, and the entries they held (entries / commits: the batching)
        self.entries = 0

    @property
    def head_file(self) -> Path:
        return self._head_file

    @property
    def lock(self) -> threading.Lock:
        """Held across a group commit's COMMIT and its head export (verify reads under it)."""
        return self._lock

    def current_head(self) -> AuditHead | None:
        h = self.head
        if h is None:
            return None
        return AuditHead(seq=h[0], hash=h[1], keyed=self.key is not None, keyed_since=self.keyed_since)

    def start(self, con: duckdb.DuckDBPyConnection, replayed: tuple[int, int] | None = None) -> str:
        """At start-up: verify the chain, anchor keying, re-export a head a crash left behind, and put on
        record (a keyed entry, which can't be removed unnoticed) anything found wrong. Returns the
        /readyz check line. `replayed`: the entries (first, last seq) just put back from the jobs journal:
        answered before their commit, so never exported; the head moves to them."""
        from agent.audit_verify import verify_chain

        v = verify_chain(con, self._head_file, self.key)
        last = (v.head_seq or 0, v.head or GENESIS)
        self.head = last if v.head_seq else None
        self._load_head(con)  # the chain's last row as stored, which a broken chain's verified head may not be
        exported = read_head_record(self._head_file)
        if self.key is None and exported is not None and exported.mac is not None:
            # Plain links after keyed ones would break the chain for good: mutations fail closed (503)
            # until the key is back; predictions and reads go on.
            self.refusing = (
                "the audit chain is keyed (audit.head) but no audit key is configured: restore [audit] key_file "
                "or the audit-key credential; actions that need an audit entry are refused until then"
            )
            log.error(self.refusing)
            return f"BROKEN: {self.refusing}"
        # Entries past the exported head (or a whole chain with none exported) that the agent itself wrote and
        # had no chance to export: its last committed group, cut off by a crash before the export, and those
        # just replayed from the jobs journal (never exported: answered before their commit).
        ours = (
            bool(v.head_seq)
            and v.status in ("head_behind", "head_missing")
            and _unexported_tail(
                con,
                v.exported_head_seq or 0,
                v.head_seq,
                replayed,  # type: ignore[arg-type]
            )
        )
        if self.key is None:
            log.warning(UNKEYED_WARNING)
            if ours:
                self._write_head(*last)
                return "unkeyed (no audit key configured)"
            if not v.ok:
                self._anomaly(v)
                return f"unkeyed; BROKEN at start: {v.problem}"
            return "unkeyed (no audit key configured)"
        began = v.keyed_since is None  # keying begins now: the next entry is the first keyed one
        self.keyed_since = v.keyed_since if v.keyed_since is not None else last[0] + 1
        # A keyed head now: on first keying, or after a crash between a keyed commit and its export (keyed
        # entries past the head are the agent's own: only it has the key).
        self._write_head(*last)
        if began:
            log.info("audit chain keyed from entry %d", self.keyed_since)
            if last[0]:
                self.record(
                    _AGENT, "audit.keyed", "audit",
                    {"keyed_since": self.keyed_since, "unkeyed_entries": last[0],
                     "note": "entries before keyed_since are plain SHA-256 links"},
                )  # fmt: skip
        if not v.ok and v.status != "unkeyed" and not ours:  # "unkeyed": a key configured since the last start
            self._anomaly(v)
            return f"keyed since entry {self.keyed_since}; BROKEN at start: {v.problem}"
        return f"keyed since entry {self.keyed_since}"

    def _anomaly(self, v) -> None:
        log.error("audit chain check at start: %s", v.problem)
        detail = {
            "status": v.status, "problem": v.problem, "first_bad_seq": v.first_bad_seq,
            "exported_head_seq": v.exported_head_seq, "chain_head_seq": v.head_seq,
        }  # fmt: skip
        try:
            self.record(_AGENT, "audit.anomaly", "audit", detail)
        except AuditUnavailable as e:
            log.error("could not record the audit anomaly: %s", e)

    def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        detail: dict | None = None,
        client: str | None = None,
    ) -> AuditEntry:
        """Commit one entry and return it once it is committed; raises AuditUnavailable.

        Group commit: the entry is queued and the writer thread is asked to commit the queue; the first such
        call to run links every queued entry (its own and those of callers that arrived meanwhile) onto the
        in-memory head, in queue order, and commits them in one INSERT and one transaction. Each caller is
        answered only after the commit that holds its entry (fail closed: a failed commit fails them all,
        and the head stays where it was)."""
        return self.commit(self.enqueue(principal, action, target, detail, client))

    def commit(self, item: PendingEntry) -> AuditEntry:
        """Commit the queue holding `item` (if no other caller did yet) and return its entry once committed;
        raises AuditUnavailable."""
        try:
            self._writer.call(self._commit_queued)
        except Exception as e:  # writer stopped or too slow: maybe not committed
            if not item.done.is_set():
                raise AuditUnavailable(f"audit log write failed: {e}") from e
        return self.outcome(item)

    # The group commit in parts, so that another store (the jobs') can put its rows into the same
    # transaction as the entries (agent/jobs/store.py): enqueue -> [writer thread: take, insert, commit under
    # `lock`, published | failed] -> outcome.

    def enqueue(
        self, principal: Principal, action: str, target: str, detail: dict | None = None, client: str | None = None
    ) -> PendingEntry:
        """Queue an entry for the next group commit; raises AuditUnavailable while the log refuses."""
        return self.queue(self.prepare(principal, action, target, detail, client))

    def prepare(
        self, principal: Principal, action: str, target: str, detail: dict | None = None, client: str | None = None
    ) -> PendingEntry:
        """An entry not yet queued: for `queue`, or `link_journaled`. Raises AuditUnavailable while the log
        refuses."""
        if self.refusing is not None:
            raise AuditUnavailable(self.refusing)
        # Round-trip through JSON so what is hashed is exactly what is stored and read back.
        return PendingEntry(principal, action, target, json.loads(canonical_json(detail or {})), client)

    def queue(self, item: PendingEntry) -> PendingEntry:
        """Queue a prepared entry for the next group commit."""
        with self._qlock:
            self._queue.append(item)
        return item

    def outcome(self, item: PendingEntry) -> AuditEntry:
        """The committed entry, or AuditUnavailable when its commit failed or never ran."""
        if item.error is not None:
            raise AuditUnavailable(f"audit log write failed: {item.error}") from item.error
        if not item.done.is_set() or item.entry is None:
            raise AuditUnavailable("audit log write failed: not committed")
        return item.entry

    def link_journaled(self, item: PendingEntry, write: Callable[[list], bool]) -> bool:
        """Link a prepared entry onto the chain now, hand its row to `write` (the jobs journal's append, which
        holds it with the job rows) and queue it, all under the queue lock, so no commit sees it half-done.
        True: it is journaled, and its caller may answer before the commit (a failed commit then retries it,
        never refuses it). False: not linked, not queued (`write` failed, or the head is not read yet)."""
        if not self._head_loaded:  # the first commit reads it (a caller here may hold a lock that commit needs)
            return False
        with self._qlock:
            while self._refusable_in_flight:
                self._settling.wait()
            before = self._tip
            self._link(item)
            if not write(item.values):  # type: ignore[arg-type]
                item.entry, item.values, self._tip = None, None, before
                return False
            item.journaled = True
            self._queue.append(item)
            return True

    def take(self, con: duckdb.DuckDBPyConnection) -> list[PendingEntry]:
        """Writer thread: the queued entries, each linked onto the chain (journaled ones already are)."""
        self._load_head(con)
        with self._qlock:
            items, self._queue = self._queue, []
            for it in items:
                if it.entry is None:
                    self._link(it)
                    self._refusable_in_flight = True
        return items

    def _load_head(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._head_loaded:  # the chain's last row as stored (a broken chain's too): read once
            return
        cur = con.cursor()  # its own transaction: start() reads while the writer thread may be in one
        try:
            rows = cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
        finally:
            cur.close()
        with self._qlock:
            if not self._head_loaded:
                self.head = self._tip = (rows[0][0], rows[0][1]) if rows else None
                self._head_loaded = True

    def _link(self, it: PendingEntry) -> None:
        """Under the queue lock: `it` becomes the entry after the tip."""
        seq, prev = self._tip or (0, GENESIS)
        seq += 1
        fields = {
            "seq": seq, "ts": round(time.time(), 6), "principal": it.principal.name,
            "role": it.principal.role, "via": it.principal.via, "action": it.action, "target": it.target,
            "detail": it.detail, "client": it.client, "prev_hash": prev,
        }  # fmt: skip
        fields["hash"] = entry_hash(fields, prev, self.key)
        it.values = [seq, fields["ts"], fields["principal"], fields["role"], fields["via"], it.action, it.target,
                     canonical_json(it.detail), it.client, prev, fields["hash"]]  # fmt: skip
        it.entry = AuditEntry(**fields)
        self._tip = (seq, fields["hash"])

    def insert(self, con: duckdb.DuckDBPyConnection, items: list[PendingEntry]) -> None:
        """Writer thread, inside the caller's transaction: INSERT the taken `items` (one statement). The head
        moves only in `published`, after the commit."""
        if not items:
            return
        ordered = sorted(items, key=lambda it: it.values[0])  # type: ignore[index]
        values = [v for it in ordered for v in it.values]  # type: ignore[union-attr]
        con.execute("INSERT INTO audit_log VALUES " + ", ".join([_ROW] * len(items)), values)
        # The group this transaction commits: a crash between its COMMIT and the head's export leaves the head
        # exactly this group behind, which start() then re-exports rather than report (an UPDATE: ~0.8 ms).
        group = f"{ordered[0].values[0]} {ordered[-1].values[0]}"  # type: ignore[index]
        if self._group_row:
            con.execute("UPDATE meta SET value = ? WHERE key = ?", [group, LAST_GROUP_KEY])
        else:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [LAST_GROUP_KEY, group])

    def published(self, items: list[PendingEntry]) -> None:
        """Writer thread, right after the COMMIT and under `lock` (so verify never sees the rows without their
        head): move the head, export it, answer the callers."""
        if items:
            last = max(items, key=lambda it: it.entry.seq).entry  # type: ignore[union-attr]
            assert last is not None
            self.head = (last.seq, last.hash)
            if self.key is not None and self.keyed_since is None:  # start() not run (tools, tests)
                self.keyed_since = min(it.entry.seq for it in items)  # type: ignore[union-attr]
            try:
                self._write_head(last.seq, last.hash)
            except OSError as e:  # committed: the entries stand; the next start re-exports the head
                log.error("could not export the audit head: %s", e)
            self.commits += 1
            self.entries += len(items)
            self._group_row = True
        self._settled()
        for it in items:
            it.done.set()

    def failed(self, items: list[PendingEntry], err: BaseException) -> None:
        """Writer thread: the transaction holding `items` was rolled back. Their callers are refused, except
        journaled entries (already answered): those go back to the queue's front, links kept, for the next
        commit. The links of the refused ones are undone (they were made last, in `take`)."""
        keep = [it for it in items if it.journaled]
        refused = [it for it in items if not it.journaled]
        if refused:
            log.error("could not commit %d audit entr%s: %s", len(refused), "y" if len(refused) == 1 else "ies", err)
        with self._qlock:
            self._queue[:0] = keep
            for it in refused:
                it.entry, it.values, it.error = None, None, err
            if refused:
                linked = [it.entry for it in self._queue if it.entry is not None]
                newest = max(linked, key=lambda e: e.seq) if linked else None
                self._tip = (newest.seq, newest.hash) if newest else self.head
        self._settled()
        for it in refused:
            it.done.set()

    def _settled(self) -> None:
        with self._qlock:
            self._refusable_in_flight = False
            self._settling.notify_all()

    def _commit_queued(self, con: duckdb.DuckDBPyConnection) -> None:
        """On the writer thread: every queued entry in one INSERT and one transaction."""
        items = self.take(con)
        if not items:
            return
        try:
            con.begin()
            self.insert(con, items)
            with self._lock:
                con.commit()
                self.published(items)
        except Exception as e:
            try:
                con.rollback()
            except duckdb.Error:
                pass
            self.failed(items, e)

    def _write_head(self, seq: int, h: str) -> None:
        line = f"{seq} {h}"
        if self.key is not None and self.keyed_since is not None:
            line += f" {self.keyed_since} {head_mac(self.key, seq, h, self.keyed_since)}"
        tmp = self._head_file.with_suffix(".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, self._head_file)


def _unexported_tail(
    con: duckdb.DuckDBPyConnection, exported: int, chain_head: int, replayed: tuple[int, int] | None
) -> bool:
    """Whether entries `exported`+1 .. `chain_head` are exactly: the last group a commit recorded in `meta`
    (or a single entry, as before that record existed), then the entries `replayed` from the jobs journal."""
    cur = con.cursor()
    try:
        row = cur.execute("SELECT value FROM meta WHERE key = ?", [LAST_GROUP_KEY]).fetchone()
    finally:
        cur.close()
    try:
        first, last = (int(x) for x in row[0].split()) if row else (exported + 1, exported + 1)
    except ValueError:
        return False
    ends = {exported}  # where the committed-but-unexported part may end: nothing, or the whole last group
    if first == exported + 1 and last <= chain_head:
        ends.add(last)
    if replayed is not None:
        ends |= {replayed[1] for at in ends if replayed[0] == at + 1}
    return chain_head in ends


def open_audit(
    cfg: AgentConfig,
    writer: StoreWriter,
    con: duckdb.DuckDBPyConnection,
    replayed: tuple[int, int] | None = None,
) -> tuple[AuditLog, str]:
    """The agent's audit log, keyed when a key is configured, checked at start (`replayed`: see `start`); and
    its /readyz line. Raises ConfigError for a configured key that can't be used."""
    try:
        key, source = load_key(cfg.audit.key_file, cfg.data_dir)
    except AuditKeyError as e:
        raise ConfigError(str(e)) from None
    audit = AuditLog(writer, cfg.data_dir / "audit.head", key)
    check = audit.start(con, replayed)
    if key is not None:
        log.info("audit chain keyed with %s: %s", source, check)
    return audit, check


_AGENT = Principal(name="watchkeeper-agent", role="operator", via="anonymous")


def verify_chain(*args, **kwargs):  # type: ignore[no-untyped-def]
    """agent.audit_verify.verify_chain, importable from here as before."""
    from agent.audit_verify import verify_chain as verify

    return verify(*args, **kwargs)
