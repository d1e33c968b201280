"""The alert state machine: rules applied to signals, one deduplicated instance per fingerprint.

An alert's fingerprint is a stable hash of (rule name, endpoint, subject). Per fingerprint:

    breach              -> pending   (started_at; an instance is born)
    held >= rule's for  -> firing    (firing_at; notified once)
    no breach, or the signal went away (endpoint deleted, feature gone, rule removed)
                        -> resolved  (resolved_at; "resolved" notified if "firing" was)

A pending alert whose breach ends before its `for` is dropped (it never fired; the instance it
replaced, if any, comes back). A resolved alert that breaches again is a new instance with a new
`started_at`; its predecessor stays in the history (bounded). Acks belong to an instance; a
silence belongs to the fingerprint until it expires, so it also covers the next instance. While
silenced nothing is sent; a firing alert whose silence expires is notified then.

Every change is written through the store writer (`alerts` row upserted, `alert_events` row
appended, one `writer.call` per evaluation), so `load()` after a restart restores pending and
firing alerts, and which of them were already notified: a restart neither forgets nor re-sends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from agent.alerting.matching import _grouped, _Match, _summary, _worse, fingerprint
from agent.alerting.rules import THRESHOLD_KINDS, Signal, breaches, effective_rules, keep_firing_for, rule_out
from agent.alerting.signals import default_metric
from agent.config import AlertRuleConfig
from agent.schemas import AlertOut, AlertRuleOut, AlertsResponse

if TYPE_CHECKING:
    from agent.alerting.webhooks import Notifier
    from agent.store.writer import StoreWriter


__all__ = ["ACTIVE", "MAX_RESOLVED", "AlertEngine", "fingerprint"]

log = logging.getLogger("watchkeeper.alerting")

MAX_RESOLVED = 500  # resolved instances kept (memory and table), newest first
ACTIVE = ("pending", "firing")


class AlertEngine:
    """See the module docstring. Thread-safe: the alert loop evaluates in a worker thread while API
    threads list, ack and silence."""

    def __init__(
        self,
        writer: StoreWriter,
        reader_or_con_factory: Any,
        rules: list[AlertRuleConfig] | None,
        host_name: str,
        notifier: Notifier | None,
        clock: Callable[[], float] = time.time,
        max_resolved: int = MAX_RESOLVED,
    ) -> None:
        self._writer = writer
        self._con_source = reader_or_con_factory
        self.rules = effective_rules(rules)
        self._rule_by_name = {r.name: r for r in self.rules}
        self.host = host_name
        self.notifier = notifier
        self._clock = clock
        self._max_resolved = max_resolved
        # State under _lock (held briefly: list() serves the API). Store writes under _writing, taken
        # before _lock is let go, so rows are written in the order the state changed without the
        # state lock waiting on the disk.
        self._lock = threading.RLock()
        self._writing = threading.Lock()
        self._by_fp: dict[str, AlertOut] = {}  # the latest instance per fingerprint (= the table's rows)
        self._history: deque[AlertOut] = deque()  # resolved instances, oldest first
        self._replaced: dict[str, AlertOut] = {}  # pending fp -> the resolved instance it replaced
        self._notified: set[str] = set()  # firing instances whose "firing" notification went out
        self._clear_since: dict[str, float] = {}  # active fp whose condition is clear -> since when
        self._bad_signals = 0
        self.evaluations = 0
        self.last_evaluated_at: float | None = None

    # ------------------------------------------------------------------ start-up

    def _cursor(self) -> Any:
        src = self._con_source
        if hasattr(src, "con"):  # a StoreReader
            return src.con.cursor()
        if hasattr(src, "cursor"):  # a DuckDB connection
            return src.cursor()
        return src()  # a factory

    def load(self) -> int:
        """Restore alerts from the store (start-up). Returns how many are pending or firing."""
        cur = self._cursor()
        try:
            rows = cur.execute("SELECT fingerprint, body FROM alerts ORDER BY updated_at").fetchall()
            notified = dict(
                cur.execute(
                    "SELECT fingerprint, max(ts) FROM alert_events WHERE event = 'notified' GROUP BY fingerprint"
                ).fetchall()
            )
        finally:
            cur.close()
        with self._lock:
            self._by_fp.clear()
            self._history.clear()
            self._notified.clear()
            for fp, body in rows:
                try:
                    a = AlertOut.model_validate_json(body)
                except ValueError:
                    log.warning("alert %s: unreadable stored body, skipped", fp)
                    continue
                self._by_fp[fp] = a
                if a.state == "resolved":
                    self._history.append(a)
                elif a.state == "firing" and notified.get(fp) is not None and notified[fp] >= a.started_at:
                    self._notified.add(fp)
            while len(self._history) > self._max_resolved:
                self._history.popleft()
            return sum(1 for a in self._by_fp.values() if a.state in ACTIVE)

    # ------------------------------------------------------------------ evaluation

    def _matches(self, signals: Iterable[Signal]) -> dict[str, _Match]:
        """Every (rule, signal) pair that applies, judged, merged per fingerprint (worst wins)."""
        out: dict[str, _Match] = {}
        sigs = list(signals)
        for rule in self.rules:
            for sig in sigs:
                try:
                    if sig.kind != rule.kind:
                        continue
                    if rule.endpoints and sig.endpoint not in rule.endpoints:
                        continue
                    if rule.kind == "quality_drop" and sig.subject != (
                        rule.metric or default_metric(sig.labels.get("model_kind"))
                    ):
                        continue
                    if rule.threshold is not None and rule.kind in THRESHOLD_KINDS:
                        threshold = rule.threshold
                        breached = breaches(sig.value, threshold)
                    else:
                        threshold = sig.threshold
                        breached = bool(sig.breached)
                    fp = fingerprint(rule.name, sig.endpoint, sig.subject)
                    m = _Match(rule, sig, breached, threshold)
                    prev = out.get(fp)
                    if prev is None or _worse(m, prev):
                        out[fp] = m
                except Exception:  # a malformed signal must not stop the others
                    self._bad_signals += 1
                    if self._bad_signals <= 3:
                        log.exception("skipping a bad alert signal: %r", sig)
        return _grouped(out)

    def evaluate(
        self, signals: Iterable[Signal], now: float | None = None, covered: Collection[str] | None = None
    ) -> list[AlertOut]:
        """Apply the rules to `signals`; returns the alerts whose state changed. Never raises.

        `covered`: the kinds these signals speak for (None: all). An active alert of another kind
        whose signal is absent is left as it is (its source could not be read this time), rather
        than resolved.
        """
        try:
            return self._evaluate(signals, self._clock() if now is None else now, covered)
        except Exception:
            log.exception("alert evaluation failed")
            return []

    def _evaluate(self, signals: Iterable[Signal], now: float, covered: Collection[str] | None) -> list[AlertOut]:
        matches = self._matches(signals)
        ops: list[tuple] = []
        sends: list[tuple[AlertOut, str]] = []
        changed: list[AlertOut] = []
        with self._lock:
            for fp, m in matches.items():
                a = self._by_fp.get(fp)
                active = a is not None and a.state in ACTIVE
                if m.breached:
                    self._clear_since.pop(fp, None)
                    opened = not active
                    if opened:
                        a = self._open(fp, m, a, now, ops)
                    else:
                        self._refresh(a, m)
                    fired = a.state == "pending" and now - a.started_at >= m.rule.for_s
                    if fired:
                        self._fire(a, now, ops, sends)
                    if opened or fired:
                        changed.append(a)
                elif active:
                    hold = keep_firing_for(m.rule) if a.state == "firing" else 0.0
                    clear_since = self._clear_since.setdefault(fp, now)
                    if now - clear_since >= hold:
                        changed.append(self._close(a, now, "cleared", ops, sends))
                    else:
                        self._refresh(a, m, keep_breach=True)
            for fp, a in list(self._by_fp.items()):
                if a.state not in ACTIVE or fp in matches:
                    continue
                if a.rule not in self._rule_by_name:
                    changed.append(self._close(a, now, "rule removed", ops, sends))
                elif covered is None or a.kind in covered:
                    changed.append(self._close(a, now, "signal gone", ops, sends))
            # A firing alert whose notification a silence held back goes out once the silence ends.
            for fp, a in self._by_fp.items():
                if a.state == "firing" and fp not in self._notified and not _silenced(a, now):
                    self._notified.add(fp)
                    ops.append(("event", now, fp, "notified", {"status": "firing"}))
                    sends.append((a.model_copy(), "firing"))
            self._prune(ops)
            self.evaluations += 1
            self.last_evaluated_at = now
            self._writing.acquire()
        self._persist_and_release(ops)
        self._send(sends)
        return [a.model_copy() for a in changed]

    def _open(self, fp: str, m: _Match, old: AlertOut | None, now: float, ops: list) -> AlertOut:
        s, r = m.signal, m.rule
        a = AlertOut(
            fingerprint=fp,
            rule=r.name,
            kind=r.kind,
            severity=r.severity,
            state="pending",
            endpoint=s.endpoint,
            subject=s.subject,
            summary=_summary(s, m.threshold),
            value=s.value,
            threshold=m.threshold,
            labels=dict(s.labels),
            started_at=now,
            updated_at=now,
            host=self.host,
        )
        if old is not None:
            self._replaced[fp] = old
            if _silenced(old, now):  # a silence covers the fingerprint, not one instance
                a.silenced_until, a.silenced_by = old.silenced_until, old.silenced_by
        self._by_fp[fp] = a
        self._notified.discard(fp)
        ops.append(("upsert", a.model_copy()))
        ops.append(("event", now, fp, "pending", {"value": s.value, "threshold": m.threshold}))
        return a

    def _refresh(self, a: AlertOut, m: _Match, keep_breach: bool = False) -> None:
        """The breach goes on: keep what is shown current (written with the next change).

        `keep_breach`: the condition is clear but the alert is held firing (keep_firing_for); what
        it says about the breach stays, with a note that it is clearing."""
        if keep_breach:
            note = " (clear now; held firing against flapping)"
            if not a.summary.endswith(note):
                a.summary += note
            return
        a.value = m.signal.value
        a.threshold = m.threshold
        a.summary = _summary(m.signal, m.threshold)
        a.subject = m.signal.subject
        a.labels = dict(m.signal.labels)
        a.severity = m.rule.severity

    def _fire(self, a: AlertOut, now: float, ops: list, sends: list) -> None:
        a.state = "firing"
        a.firing_at = now
        a.updated_at = now
        self._replaced.pop(a.fingerprint, None)
        ops.append(("upsert", a.model_copy()))
        ops.append(("event", now, a.fingerprint, "firing", {"value": a.value, "threshold": a.threshold}))
        if not _silenced(a, now):
            self._notified.add(a.fingerprint)
            ops.append(("event", now, a.fingerprint, "notified", {"status": "firing"}))
            sends.append((a.model_copy(), "firing"))

    def _close(self, a: AlertOut, now: float, why: str, ops: list, sends: list) -> AlertOut:
        fp = a.fingerprint
        self._clear_since.pop(fp, None)
        if a.state == "pending":
            # Never fired: drop the instance; the one it replaced (if any) is the latest again.
            old = self._replaced.pop(fp, None)
            if old is not None:
                if a.silenced_until is not None and (old.silenced_until or 0) < a.silenced_until:
                    old.silenced_until, old.silenced_by = a.silenced_until, a.silenced_by
                self._by_fp[fp] = old
                ops.append(("upsert", old.model_copy()))
            else:
                del self._by_fp[fp]
                ops.append(("delete", fp))
            ops.append(("event", now, fp, "cancelled", {"reason": why}))
            a.state = "resolved"  # for the caller's list of changes; not kept
            a.resolved_at = a.updated_at = now
            return a
        a.state = "resolved"
        a.resolved_at = now
        a.updated_at = now
        ops.append(("upsert", a.model_copy()))
        ops.append(("event", now, fp, "resolved", {"reason": why}))
        if fp in self._notified:
            self._notified.discard(fp)
            if not _silenced(a, now):
                ops.append(("event", now, fp, "notified", {"status": "resolved"}))
                sends.append((a.model_copy(), "resolved"))
        self._history.append(a)
        return a

    def _prune(self, ops: list) -> None:
        while len(self._history) > self._max_resolved:
            old = self._history.popleft()
            if self._by_fp.get(old.fingerprint) is old:
                del self._by_fp[old.fingerprint]
                ops.append(("delete_resolved", old.fingerprint))

    def _persist_and_release(self, ops: list) -> None:
        """Write `ops` (one writer call), then release `_writing` (acquired under `_lock`)."""
        try:
            self._persist(ops)
        finally:
            self._writing.release()

    def _persist(self, ops: list) -> None:
        if not ops:
            return

        def write(con) -> None:
            con.execute("BEGIN TRANSACTION")
            try:
                _write_ops(con, ops)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        try:
            self._writer.call(write)
        except Exception:
            # Memory stays authoritative; the next change writes the whole row again.
            log.exception("could not persist %d alert change(s)", len(ops))

    def _send(self, sends: list[tuple[AlertOut, str]]) -> None:
        if self.notifier is None:
            return
        for a, status in sends:
            try:
                self.notifier.notify(a, status)
            except Exception:
                log.exception("notifier refused alert %s", a.fingerprint)

    # ------------------------------------------------------------------ operators

    def get(self, fp: str) -> AlertOut | None:
        with self._lock:
            a = self._by_fp.get(fp)
            return None if a is None else a.model_copy()

    def ack(self, fp: str, principal: str, comment: str = "") -> AlertOut | None:
        """Record who has this alert in hand. None: no such fingerprint."""
        now = self._clock()
        with self._lock:
            a = self._by_fp.get(fp)
            if a is None:
                return None
            a.acked_by, a.acked_at, a.ack_comment, a.updated_at = principal, now, comment, now
            out = a.model_copy()
            self._writing.acquire()
        self._persist_and_release(
            [("upsert", out), ("event", now, fp, "ack", {"principal": principal, "comment": comment})]
        )
        return out.model_copy()

    def silence(self, fp: str, duration_s: float, principal: str, comment: str = "") -> AlertOut | None:
        """No notifications for this fingerprint until now + duration_s; it stays listed. None: unknown."""
        now = self._clock()
        with self._lock:
            a = self._by_fp.get(fp)
            if a is None:
                return None
            a.silenced_until, a.silenced_by, a.silence_comment, a.updated_at = now + duration_s, principal, comment, now
            detail = {"principal": principal, "comment": comment, "until": a.silenced_until}
            out = a.model_copy()
            self._writing.acquire()
        self._persist_and_release([("upsert", out), ("event", now, fp, "silence", detail)])
        return out.model_copy()

    # ------------------------------------------------------------------ reading

    def list(self, state: str | None = None, limit: int = MAX_RESOLVED) -> list[AlertOut]:
        """Active alerts and resolved ones, most recently changed first."""
        with self._lock:
            items = {id(a): a for a in self._by_fp.values() if a.state in ACTIVE}
            for a in self._history:
                items[id(a)] = a
            out = [a.model_copy() for a in items.values() if state is None or a.state == state]
        out.sort(key=lambda a: a.updated_at, reverse=True)
        return out[:limit]

    def rules_out(self) -> list[AlertRuleOut]:
        return [rule_out(r) for r in self.rules]

    def response(self, state: str | None = None) -> AlertsResponse:
        webhooks = self.notifier.statuses() if self.notifier is not None else []
        return AlertsResponse(alerts=self.list(state), rules=self.rules_out(), webhooks=webhooks)

    def counts(self) -> dict[tuple[str, str], int]:
        """(state, severity) -> alerts now, for /metrics."""
        out: dict[tuple[str, str], int] = {}
        with self._lock:
            for a in self._by_fp.values():
                if a.state in ACTIVE:
                    out[(a.state, a.severity)] = out.get((a.state, a.severity), 0) + 1
        return out


def _silenced(a: AlertOut, now: float) -> bool:
    return a.silenced_until is not None and a.silenced_until > now


def _write_ops(con, ops: list) -> None:
    """`ops` in at most four statements: all events in one INSERT, and each alert's last word (upsert, delete
    or delete-if-resolved) grouped by kind. 50 alerts firing at once were 100 statements, an INSERT OR REPLACE
    costing milliseconds however few its rows. Order only matters per alert, and replaying it here keeps it."""
    events: list = []
    final: dict[str, tuple] = {}
    for op in ops:
        if op[0] == "event":
            _, ts, fp, event, detail = op
            events += [ts, fp, event, json.dumps(detail, default=str)]
        elif op[0] == "upsert":
            final[op[1].fingerprint] = op
        elif op[0] == "delete":
            final[op[1]] = op
        else:  # delete_resolved: decided here when this batch wrote the row, else by the row in the store
            prev = final.get(op[1])
            if prev is None:
                final[op[1]] = op
            elif prev[0] == "upsert" and prev[1].state == "resolved":
                final[op[1]] = ("delete", op[1])
    if events:
        rows = ", ".join(["(?, ?, ?, ?)"] * (len(events) // 4))
        con.execute(f"INSERT INTO alert_events (ts, fingerprint, event, detail) VALUES {rows}", events)
    for kind, cond in (("delete", ""), ("delete_resolved", " AND state = 'resolved'")):
        fps = [fp for fp, op in final.items() if op[0] == kind]
        if fps:
            con.execute(f"DELETE FROM alerts WHERE fingerprint IN ({', '.join(['?'] * len(fps))}){cond}", fps)
    ups = [op[1] for op in final.values() if op[0] == "upsert"]
    if ups:
        values: list = []
        for a in ups:
            values += [a.fingerprint, a.model_dump_json(), a.state, a.updated_at]
        rows = ", ".join(["(?, ?, ?, ?)"] * len(ups))
        con.execute(f"INSERT OR REPLACE INTO alerts (fingerprint, body, state, updated_at) VALUES {rows}", values)
