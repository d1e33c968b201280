"""A rollout's persistence: every change one event in `rollout_events` (committed before the API answers),
the audit trail of automatic changes, and `restore()`, which replays the events at start-up.
"""

from __future__ import annotations

import json
import logging

from agent.rollouts.state import AGENT, LIVE, Rollout, RolloutError
from agent.schemas import ApprovalOut, GateResult, Lineage, RolloutCreate

log = logging.getLogger("watchkeeper.rollouts")


class RolloutJournal:
    """Events and their replay; mixed into RolloutEngine (agent/rollouts/engine.py), whose state it uses."""

    def restore(self) -> int:
        """Replay `rollout_events` (start-up); set routes of live rollouts again. Returns how many are active."""
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT seq, rollout_id, kind, body, principal FROM rollout_events ORDER BY seq"
            ).fetchall()
        finally:
            cur.close()
        with self._lock:
            for seq, rid, kind, body, principal in rows:
                self._seq = max(self._seq, seq)
                try:
                    data = json.loads(body)
                    if kind == "created":
                        self._rollouts[rid] = _from_created(rid, data)
                    r = self._rollouts.get(rid)
                    if r is None:
                        continue
                    r.apply(data.get("snapshot", {}))
                    _note_actor(r, kind, principal, data)
                    if "approval" in data:
                        r.approvals.append(ApprovalOut.model_validate(data["approval"]))
                    if "gate" in data:
                        r.gate = GateResult.model_validate(data["gate"])
                except Exception:
                    log.exception("rollout %s: unreadable event %d (%s), skipped", rid, seq, kind)
            now = self.clock()
            active = 0
            for r in self._rollouts.values():
                if r.state == "validating":
                    self._end(r, "aborted", "the agent restarted while the rollout was being validated", AGENT.name)
                    self._audit_auto(r, "rollout.abort", {"reason": r.end_reason})
                elif r.state in LIVE:
                    active += 1
                    self._apply_route(r)
                elif r.state == "promoted" and r.ended_at is not None:
                    until = r.ended_at + r.spec.keep_stable_warm_s
                    if until > now:
                        self._keep_warm(r, until - now)
        if active:
            log.info("restored %d active rollout(s)", active)
        return active

    # ------------------------------------------------------------------ events

    def _commit(self, r: Rollout, kind: str, principal: str, extra: dict | None = None) -> None:
        """Append one event (durable on return). Raises RolloutError(503) when the store can't take it."""
        r.updated_at = self.clock()
        self._seq += 1
        _note_actor(r, kind, principal, extra)
        body = json.dumps({"snapshot": r.snapshot(), **(extra or {})}, default=str)
        row = [self._seq, r.updated_at, r.id, r.endpoint, kind, body, principal]
        try:
            self._writer.call(lambda con: con.execute("INSERT INTO rollout_events VALUES (?, ?, ?, ?, ?, ?, ?)", row))
        except Exception as e:
            log.error("rollout %s: could not record %s: %s", r.id, kind, e)
            raise RolloutError(503, "store_unavailable", f"could not record the rollout event: {e}") from e

    def _audit_auto(
        self, r: Rollout, action: str, detail: dict, on_behalf_of: str | None = None, cause: str | None = None
    ) -> None:
        """An automatic change, on record as the agent's, on behalf of the principal whose action caused it
        (by default the last one who moved the rollout). A failing audit never stops a safety action."""
        who = on_behalf_of or r.last_actor or r.started_by
        why = cause or (f"{r.last_actor} {r.last_action}" if r.last_actor else f"{r.started_by} started it")
        detail = {**self._audit_detail(r), **detail, "automatic": True, "on_behalf_of": who, "cause": why}
        try:
            self.audit.record(AGENT, action, f"rollout:{r.id}", detail)
        except Exception as e:
            log.error("rollout %s: audit of %s failed: %s", r.id, action, e)

    def _audit_detail(self, r: Rollout) -> dict:
        return {
            "rollout": r.id, "endpoint": r.endpoint, "model": r.model, "stable_version": r.stable_version,
            "candidate_version": r.candidate_version, "strategy": r.strategy, "state": r.state,
            "step_index": r.step_index, "weight": r.weight, "host": self.host,
        }  # fmt: skip


def _created_body(r: Rollout) -> dict:
    return {
        "spec": r.spec.model_dump(mode="json"), "model": r.model, "stable_version": r.stable_version,
        "candidate_version": r.candidate_version, "lineage": r.lineage.model_dump(mode="json") if r.lineage else None,
        "started_by": r.started_by, "started_at": r.started_at, "host": r.host, "endpoint": r.endpoint,
    }  # fmt: skip


def _from_created(rid: str, data: dict) -> Rollout:
    spec = RolloutCreate.model_validate(data["spec"])
    return Rollout(
        id=rid, endpoint=data["endpoint"], model=data["model"], stable_version=data["stable_version"],
        candidate_version=data["candidate_version"], spec=spec,
        lineage=Lineage.model_validate(data["lineage"]) if data.get("lineage") else None,
        started_by=data["started_by"], started_at=data["started_at"], host=data.get("host", ""),
    )  # fmt: skip


def _note_actor(r: Rollout, kind: str, principal: str, extra: dict | None) -> None:
    """Remember who last moved the rollout (not the agent itself) and how, for automatic changes' audit."""
    if not principal or principal == AGENT.name:
        return
    r.last_actor = principal
    approval = (extra or {}).get("approval") or {}
    if kind == "approval" and "step_index" in approval:
        r.last_action = f"approved step {approval['step_index']}"
    elif kind in ("created", "step") and (extra or {}).get("note", "started") == "started":
        r.last_action = "started the rollout"
    else:
        actions = {"resumed": "resumed it", "paused": "paused it", "promoted": "promoted it", "step": "moved it on"}
        r.last_action = actions.get(kind, kind)
