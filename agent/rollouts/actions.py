"""What people do to a rollout: approve, reject, promote, pause, resume, abort, roll back (who may, and when)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.auth.roles import APPROVE, OPERATE
from agent.rollouts.state import ACTIONS, ACTIVE, APPROVER_ACTIONS, Rollout, RolloutError, _ended
from agent.schemas import ApprovalOut, Principal, RolloutAction, RolloutOut

log = logging.getLogger("watchkeeper.rollouts")


class RolloutActions:
    """The actions; mixed into RolloutEngine (agent/rollouts/engine.py), whose state and transitions it uses."""

    # ------------------------------------------------------------------ actions

    def act(
        self,
        rollout_id: str,
        action: str,
        body: RolloutAction,
        principal: Principal,
        client: str | None = None,
        audit: Callable[[dict], None] | None = None,
    ) -> RolloutOut:
        """approve / reject / promote (approver role; never the author under the two-person rule) and
        pause / resume / abort / rollback (operator role). Raises RolloutError; `audit(detail)` commits
        the audit entry (fail closed) after the checks and before anything changes."""
        if action not in ACTIONS:
            raise RolloutError(404, "not_found", f"no action {action!r}: one of {', '.join(ACTIONS)}", "action")
        need = APPROVE if action in APPROVER_ACTIONS else OPERATE
        if principal.role not in need:
            who = "an approver" if action in APPROVER_ACTIONS else "an operator"
            raise RolloutError(403, "forbidden", f"role {principal.role!r} may not {action} a rollout: it takes {who}")
        with self._lock:
            r = self._find(rollout_id)
            reverting = action == "rollback" and r.state == "promoted"
        if reverting:  # load the old version before taking the lock: the switch back is then instant
            try:
                self.serving.ensure_loaded_blocking(self.registry.get(r.model, r.stable_version))
            except Exception as e:
                raise RolloutError(503, "model_unavailable", f"the stable version could not be loaded: {e}") from None
        with self._lock:
            self._check(r, action, body, principal)
            now = self.clock()
            detail = {**self._audit_detail(r), "action": action, "reason": body.reason, "client": client}
            if body.step_index is not None:
                detail["approved_step"] = body.step_index
            if audit is not None:
                audit(detail)
            who = principal.name
            if action in ("approve", "reject"):
                ap = ApprovalOut(
                    step_index=r.step_index, decision="approved" if action == "approve" else "rejected",
                    principal=who, at=now, reason=body.reason, client=client,
                )  # fmt: skip
                r.approvals.append(ap)
                extra = {"approval": ap.model_dump()}
                if action == "approve":
                    note = f"step {ap.step_index} approved by {who}"
                    self._enter(r, r.step_index + 1, who, now, note, "approval", extra)
                else:
                    why = f"step {ap.step_index} rejected by {who}: {body.reason}".rstrip(": ")
                    self._end(r, "aborted", why, who, extra=extra)
            elif action == "promote":
                self._promote(r, who, now, f"promoted by {who}: {body.reason}".rstrip(": "))
            elif action == "pause":
                r.resume_state = r.state
                r.paused_elapsed = now - r.step_started_at
                r.state, r.awaiting_approval_for = "paused", None
                self._commit(r, "paused", who, {"note": body.reason})
            elif action == "resume":
                self._resume(r, who, now, body.reason)
            elif action == "abort":
                self._end(r, "aborted", f"aborted by {who}: {body.reason}".rstrip(": "), who)
            elif action == "rollback":
                self._rollback(r, who, body.reason)
            self._wake.set()
            return self._out(r)

    def _check(self, r: Rollout, action: str, body: RolloutAction, principal: Principal) -> None:
        if action in APPROVER_ACTIONS and r.spec.two_person_rule and principal.name == r.started_by:
            raise RolloutError(
                403, "two_person_rule",
                f"{principal.name} started rollout {r.id}: under the two-person rule another approver must {action} it",
            )  # fmt: skip
        if action == "rollback":
            if r.state in ACTIVE or r.state == "promoted":
                return
            raise RolloutError(409, "conflict", f"rollout {r.id} is {r.state}: its traffic is already on stable", "id")
        if _ended(r):
            raise RolloutError(409, "conflict", f"rollout {r.id} has ended ({r.state})", "id")
        if action in ("approve", "reject"):
            if body.step_index is None:
                raise RolloutError(422, "invalid_request", f"{action} needs the step_index it applies to", "step_index")
            if r.state != "awaiting_approval" or r.awaiting_approval_for != body.step_index:
                now_at = (
                    f"step {r.awaiting_approval_for} awaits approval"
                    if r.state == "awaiting_approval"
                    else f"it is {r.state} at step {r.step_index}"
                )
                raise RolloutError(
                    409, "stale", f"step {body.step_index} of rollout {r.id} is not awaiting approval: {now_at}",
                    "step_index",
                )  # fmt: skip
        elif action == "promote" or action == "abort":
            if r.state == "validating" and action == "promote":
                raise RolloutError(409, "conflict", f"rollout {r.id} is still being validated", "id")
        elif action == "pause":
            if r.state not in ("progressing", "awaiting_approval"):
                raise RolloutError(409, "conflict", f"rollout {r.id} is {r.state}; only a running one pauses", "id")
        elif action == "resume" and r.state != "paused":
            raise RolloutError(409, "conflict", f"rollout {r.id} is {r.state}, not paused", "id")

    def _resume(self, r: Rollout, who: str, now: float, reason: str) -> None:
        if r.resume_advances:
            self._enter(r, r.step_index + 1, who, now, f"resumed by {who} after an inconclusive analysis")
            return
        r.step_started_at = now - (r.paused_elapsed or 0.0)
        r.state = r.resume_state if r.resume_state in ("progressing", "awaiting_approval") else "progressing"
        if r.state == "awaiting_approval":
            r.awaiting_approval_for = r.step_index
        r.paused_elapsed = r.resume_state = None
        self._commit(r, "resumed", who, {"note": reason})

    def _rollback(self, r: Rollout, who: str, reason: str) -> None:
        why = f"rolled back by {who}: {reason}".rstrip(": ")
        if r.state != "promoted":
            self._end(r, "rolled_back", why, who)
            return
        ep = self.serving.endpoints.get(r.endpoint)
        current = ep.version.version if ep is not None and ep.version is not None else None
        if ep is None or current != r.candidate_version:
            raise RolloutError(
                409, "conflict",
                f"{r.endpoint!r} no longer serves version {r.candidate_version} (now {current}): nothing to roll back",
                "id",
            )  # fmt: skip
        cfg = ep.config.model_copy(update={"version": r.stable_version, "alias": None})
        self.serving.put(r.endpoint, cfg, who)
        r.state, r.weight, r.ended_at, r.end_reason = "rolled_back", 0.0, self.clock(), why
        self._commit(r, "ended", who, {"note": why})
