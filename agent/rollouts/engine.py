"""The rollout state machine: start, step through the plan, guard, approve, promote, abort, roll back.

A rollout moves one endpoint from its stable model version to a candidate version of the same model. Its
states (agent.schemas.RolloutState):

    validating -> (gate failed) rejected
               -> progressing | awaiting_approval            (candidate loaded, step 0 entered)
    progressing <-> paused <-> awaiting_approval              (pause / resume; steps; approvals)
    any active  -> aborted      (abort, reject, a guard held breached, a failed analysis, the endpoint changed)
                -> rolled_back  (rollback: traffic back to stable; after a promotion, the endpoint back too)
                -> promoted     (the plan finished, or promote: the endpoint's config now pins the candidate)

Traffic is split by the serving layer (`ServingService.set_route`): `weight` percent of requests to the
candidate (sticky by a hashed caller key for A/B), `shadow` share mirrored to it; requests reach the
candidate only while it is loaded, so no request is routed to a version that isn't. Aborting or rolling
back removes the route: stable was serving all along, so nothing reloads.

Durability: every change is an event in `rollout_events` (one row: a snapshot of the mutable state plus
what happened: an approval, the gate's result), committed through the store writer before the API
answers. `restore()` replays the events at start-up: the same weights and pending approvals come back,
routes are set again (the candidate takes traffic once it has loaded), and a rollout caught validating
is aborted. Every action and every automatic change is in the hash-chained audit log; automatic ones
are by the principal "watchkeeper-agent", with `on_behalf_of` naming the human (or token) whose action
caused them (the author, the approver of the step that put the traffic there, whoever resumed it, or
whoever changed the endpoint) and `cause` saying what that action was.

While a rollout is active on an endpoint, what the endpoint serves changes only through the rollout:
the API's endpoint PUT/DELETE and the registry's alias moves hold `change_lock` and call `refuse_change` /
`refuse_alias_move`, which answer 409 naming the rollout (the engine's own switches don't go there).

A thread ticks every `tick_s` (0.25 s) while a rollout is live (else every IDLE_TICK_S): timers of pause
and analysis steps; guards (agent/rollouts/guards.py), judged once a second (GUARD_EVAL_S: they read every
request's window), with automatic abort when a breach holds for the guards' window (and an alert:
`signals()`); the A/B result (agent/rollouts/abtest.py); and loading candidates again after a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.auth.roles import APPROVE, OPERATE
from agent.rollouts import abtest
from agent.rollouts.gate import GateError, check_thresholds, run_gate
from agent.rollouts.guards import BreachTracker, feature_drift_share, judge
from agent.rollouts.plans import PlanError, describe, resolve_guards, validate_plan
from agent.schemas import (
    ROLLOUT_TERMINAL,
    ABResult,
    ApprovalOut,
    GateResult,
    GuardMetric,
    Lineage,
    ModelVersion,
    Principal,
    RolloutAction,
    RolloutCreate,
    RolloutOut,
    RolloutStep,
)

log = logging.getLogger("watchkeeper.rollouts")

AGENT = Principal(name="watchkeeper-agent", role="operator", via="anonymous")
ACTIVE = ("validating", "progressing", "paused", "awaiting_approval")
LIVE = ("progressing", "paused", "awaiting_approval")  # states with a route on the endpoint
ACTIONS = ("approve", "reject", "promote", "pause", "resume", "abort", "rollback")
APPROVER_ACTIONS = frozenset({"approve", "reject", "promote"})
# A rollout aborted by its guards keeps its `rollout_guard` alert breached this long (or until the next
# rollout on the endpoint starts), so the alert loop sees it whenever it runs.
ALERT_HOLD_S = 3600.0
AB_REFRESH_S = 2.0
FEATURE_DRIFT_REFRESH_S = 10.0
LOAD_RETRY_S = 2.0
GUARD_EVAL_S = 1.0  # how often a live rollout's guards are judged
IDLE_TICK_S = 5.0  # the ticker's period with no live rollout and nothing kept warm
PROMOTE_PIN_S = 120.0  # the candidate stays pinned through the switch of the endpoint's config
SNAPSHOT = (
    "state", "step_index", "step_started_at", "weight", "shadow", "awaiting_approval_for", "updated_at",
    "ended_at", "end_reason", "paused_elapsed", "resume_state", "resume_advances", "guard_abort",
)  # fmt: skip


class RolloutError(Exception):
    """A refused request; the API turns it into an ErrorBody with the same fields."""

    def __init__(self, status: int, error: str, detail: Any, field: str | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else error)
        self.status, self.error, self.detail, self.field = status, error, detail, field


@dataclass
class Rollout:
    id: str
    endpoint: str
    model: str
    stable_version: int
    candidate_version: int
    spec: RolloutCreate  # with the plan resolved: `steps` is never None
    lineage: Lineage | None
    started_by: str
    started_at: float
    host: str
    # the snapshot: what every event records
    state: str = "validating"
    step_index: int = 0
    step_started_at: float = 0.0
    weight: float = 0.0
    shadow: float = 0.0
    awaiting_approval_for: int | None = None
    updated_at: float = 0.0
    ended_at: float | None = None
    end_reason: str = ""
    paused_elapsed: float | None = None
    resume_state: str | None = None
    resume_advances: bool = False  # resuming goes to the next step (an inconclusive analysis accepted)
    guard_abort: bool = False  # aborted by a guard or a failed analysis (raises the rollout_guard alert)
    gate: GateResult | None = None
    approvals: list[ApprovalOut] = field(default_factory=list)
    # memory only
    guards: list[GuardMetric] = field(default_factory=list)
    tracker: BreachTracker = field(default_factory=BreachTracker)
    analysis_judged: bool = False
    ab: ABResult | None = None
    ab_at: float = 0.0
    feature_drift: tuple[float | None, float | None] | None = None
    feature_drift_at: float = 0.0
    guards_at: float = -1e18  # when the guards were last judged (GUARD_EVAL_S)
    # The last human (or token) who moved the rollout, and how: automatic changes are on their behalf.
    last_actor: str = ""
    last_action: str = ""

    def snapshot(self) -> dict:
        return {k: getattr(self, k) for k in SNAPSHOT}

    def apply(self, snap: dict) -> None:
        for k in SNAPSHOT:
            if k in snap:
                setattr(self, k, snap[k])

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    @property
    def steps(self) -> list[RolloutStep]:
        return self.spec.steps or []


def _ended(r: Rollout) -> bool:
    return r.state in ROLLOUT_TERMINAL


class RolloutEngine:
    """See the module docstring. Thread-safe: API threads act while the engine's thread ticks."""

    def __init__(
        self,
        writer: Any,
        con: Any,
        serving: Any,
        registry: Any,
        audit: Any,
        datasets: Any = None,
        alerts: Callable[[], Any] | None = None,
        host: str = "",
        clock: Callable[[], float] = time.time,
        tick_s: float = 0.25,
    ) -> None:
        self._writer = writer
        self._con = con
        self.serving = serving
        self.registry = registry
        self.audit = audit
        self.datasets = datasets
        self._alerts = alerts or (lambda: None)
        self.host = host
        self.clock = clock
        self.tick_s = tick_s
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {}
        self._starting: set[str] = set()  # endpoints whose rollout is being created
        self._warm: list[tuple[ModelVersion, float]] = []  # promoted-away versions kept loaded until
        self._loading: set[tuple[str, int]] = set()  # background loads in flight
        self._load_retry: dict[tuple[str, int], float] = {}  # a failed load is tried again after
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # With nothing live the thread sleeps (an idle agent pays ~nothing); a new rollout wakes it.
            self._wake.wait(self.tick_s if self._busy() else IDLE_TICK_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:
                log.exception("rollout tick failed")

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._warm) or any(not _ended(r) for r in self._rollouts.values())

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

    # ------------------------------------------------------------------ reads

    def list(self, active: bool | None = None, endpoint: str | None = None) -> list[RolloutOut]:
        with self._lock:
            rs = [
                r
                for r in self._rollouts.values()
                if (active is None or (r.state in ACTIVE) == active) and (endpoint is None or r.endpoint == endpoint)
            ]
            rs.sort(key=lambda r: r.started_at, reverse=True)
            return [self._out(r) for r in rs]

    def get(self, rollout_id: str) -> RolloutOut:
        with self._lock:
            return self._out(self._find(rollout_id))

    def _find(self, rollout_id: str) -> Rollout:
        r = self._rollouts.get(rollout_id)
        if r is None:
            raise RolloutError(404, "not_found", f"no rollout {rollout_id!r}", "id")
        return r

    def _out(self, r: Rollout) -> RolloutOut:
        return RolloutOut(
            id=r.id, endpoint=r.endpoint, model=r.model, stable_version=r.stable_version,
            candidate_version=r.candidate_version, strategy=r.strategy, state=r.state, steps=r.steps,  # type: ignore[arg-type]
            step_index=r.step_index, step_started_at=r.step_started_at, weight=r.weight, shadow=r.shadow,
            candidate_loaded=self._loaded(r.model, r.candidate_version),
            awaiting_approval_for=r.awaiting_approval_for, approvals=list(r.approvals), gate=r.gate,
            guards=[g.model_copy() for g in r.guards], ab=r.ab, candidate_lineage=r.lineage,
            started_by=r.started_by, started_at=r.started_at, updated_at=r.updated_at, ended_at=r.ended_at,
            end_reason=r.end_reason, two_person_rule=r.spec.two_person_rule, host=r.host,
        )  # fmt: skip

    def _loaded(self, model: str, version: int) -> bool:
        try:
            return bool(self.serving.is_version_loaded(model, version))
        except Exception:
            return False

    def active_on(self, endpoint: str) -> RolloutOut | None:
        """The rollout active on `endpoint` (validating, progressing, paused, awaiting approval), if any."""
        with self._lock:
            r = self._active_on(endpoint)
            return self._out(r) if r is not None else None

    @contextmanager
    def change_lock(self) -> Iterator[None]:
        """Hold while checking (`refuse_change`, `refuse_alias_move`) and making a change to what endpoints
        serve: no rollout starts, steps or promotes in between."""
        with self._lock:
            yield

    def refuse_change(self, endpoint: str, field: str | None) -> None:
        """RolloutError(409) when a rollout is active (or starting) on `endpoint`: what it serves (its version,
        the alias it follows, the endpoint itself) changes only through the rollout's verbs."""
        with self._lock:
            r = self._active_on(endpoint)
            if r is not None:
                raise RolloutError(
                    409, "conflict",
                    f"endpoint {endpoint} has rollout {r.id} in state {r.state}; use the rollout's verbs "
                    "(promote/abort/rollback)",
                    field,
                )  # fmt: skip
            if endpoint in self._starting:
                raise RolloutError(
                    409, "conflict", f"endpoint {endpoint} has a rollout being started; use the rollout's verbs "
                    "(promote/abort/rollback)", field,
                )  # fmt: skip

    def refuse_alias_move(self, model: str, alias: str) -> None:
        """RolloutError(409) when an endpoint that follows `model@alias` has an active rollout."""
        with self._lock:
            for name, ep in list(self.serving.endpoints.items()):
                if ep.config.model == model and ep.config.alias == alias:
                    self.refuse_change(name, "alias")

    def _active_on(self, endpoint: str) -> Rollout | None:
        return next((r for r in self._rollouts.values() if r.endpoint == endpoint and r.state in ACTIVE), None)

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

    # ------------------------------------------------------------------ traffic

    def _candidate_mv(self, r: Rollout) -> ModelVersion:
        return self.registry.get(r.model, r.candidate_version)

    def _apply_route(self, r: Rollout) -> None:
        from agent.serving.service import Route

        try:
            route = Route(
                rollout_id=r.id, candidate=self._candidate_mv(r), weight=r.weight, shadow=r.shadow,
                sticky_header=r.spec.ab_caller_header.lower() if r.strategy == "ab" else None,
            )  # fmt: skip
            self.serving.set_route(r.endpoint, route)
        except Exception as e:  # the endpoint or version went away: the next tick ends the rollout
            log.warning("rollout %s: cannot route %s: %s", r.id, r.endpoint, e)

    def _clear_route(self, r: Rollout) -> None:
        ep = self.serving.endpoints.get(r.endpoint)
        if ep is None or ep.route is None or ep.route.rollout_id != r.id:
            return
        try:
            self.serving.set_route(r.endpoint, None)
        except Exception as e:
            log.warning("rollout %s: cannot clear the route of %s: %s", r.id, r.endpoint, e)

    def _keep_warm(self, r: Rollout, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            self.serving.pin(r.model, r.stable_version, seconds)
            self._warm.append((self.registry.get(r.model, r.stable_version), self.clock() + seconds))
        except Exception as e:
            log.warning("rollout %s: cannot keep %s:%s warm: %s", r.id, r.model, r.stable_version, e)

    def _load_soon(self, mv: ModelVersion, now: float) -> None:
        """Load `mv` in a thread of its own (a candidate or a warm standby after a restart); a failed load
        is tried again after LOAD_RETRY_S."""
        key = (mv.name, mv.version)
        with self._lock:
            if key in self._loading or now < self._load_retry.get(key, 0.0):
                return
            self._loading.add(key)

        def run() -> None:
            try:
                self.serving.ensure_loaded_blocking(mv)
                self._load_retry.pop(key, None)
            except Exception as e:
                log.warning("loading %s:%s for a rollout: %s", mv.name, mv.version, e)
                self._load_retry[key] = self.clock() + LOAD_RETRY_S
            finally:
                with self._lock:
                    self._loading.discard(key)

        threading.Thread(target=run, name="rollout-load", daemon=True).start()

    # ------------------------------------------------------------------ transitions (under the lock)

    def _land(self, r: Rollout, idx: int, now: float) -> bool:
        """Run the instant steps from `idx` (weights, shadow shares) and stop at the next waiting step.
        Returns True when the plan is finished (the caller promotes)."""
        steps = r.steps
        while idx < len(steps):
            s = steps[idx]
            if s.set_weight is not None:
                r.weight = s.set_weight
            elif s.shadow is not None:
                r.shadow = s.shadow
            else:
                break
            idx += 1
        r.step_index = idx
        r.step_started_at = now
        r.analysis_judged = False
        r.paused_elapsed = r.resume_state = None
        r.resume_advances = False
        if idx >= len(steps):
            return True
        if steps[idx].approval:
            r.state, r.awaiting_approval_for = "awaiting_approval", idx
        else:
            r.state, r.awaiting_approval_for = "progressing", None
        return False

    def _enter(
        self, r: Rollout, idx: int, principal: str, now: float, note: str, kind: str = "step", extra: dict | None = None
    ) -> None:
        """Go to step `idx` (one durable event, with `extra`), then move the traffic; promote when the plan is done."""
        if self._land(r, idx, now):
            self._promote(r, principal, now, f"{note}; the plan finished" if note else "the plan finished", extra)
            return
        self._commit(r, kind, principal, {"note": note, **(extra or {})})
        self._apply_route(r)

    def _end(
        self, r: Rollout, state: str, reason: str, principal: str, guard_abort: bool = False, extra: dict | None = None
    ) -> None:
        """Abort / reject / roll back before a promotion: traffic back to stable first, then the event."""
        self._clear_route(r)
        r.state = state
        r.weight = r.shadow = 0.0
        r.awaiting_approval_for = None
        r.ended_at = self.clock()
        r.end_reason = reason
        r.guard_abort = guard_abort
        self._commit(r, "ended", principal, {"note": reason, **(extra or {})})

    def _promote(
        self, r: Rollout, principal: str, now: float, note: str, extra: dict | None = None,
        on_behalf_of: str | None = None, cause: str | None = None,
    ) -> None:  # fmt: skip
        """Pin the candidate in the endpoint's config (an endpoint event: survives restarts), drop the route,
        and keep the old version loaded `keep_stable_warm_s` for an instant rollback."""
        ep = self.serving.endpoints.get(r.endpoint)
        if ep is None:
            self._end(r, "aborted", "the endpoint was deleted", AGENT.name)
            return
        cand = self._candidate_mv(r)
        if ep.version is None or ep.version.version != r.candidate_version:
            if not self._loaded(r.model, r.candidate_version):
                self.serving.ensure_loaded_blocking(cand)
            self._clear_route(r)
            self.serving.pin(r.model, r.candidate_version, PROMOTE_PIN_S)
            cfg = ep.config.model_copy(update={"version": r.candidate_version, "alias": None})
            try:
                self.serving.put(r.endpoint, cfg, principal)
            except Exception as e:
                self._apply_route(r)  # still a rollout: its split comes back
                raise RolloutError(503, "unavailable", f"could not switch {r.endpoint!r} to the candidate: {e}") from e
        else:
            self._clear_route(r)
        self._keep_warm(r, r.spec.keep_stable_warm_s)
        r.state = "promoted"
        r.weight, r.shadow = 100.0, 0.0
        r.awaiting_approval_for = None
        r.ended_at = now
        r.end_reason = note
        self._commit(r, "promoted", principal, {"note": note, **(extra or {})})
        if principal == AGENT.name:  # the plan finished by itself (a pause or analysis was its last wait)
            self._audit_auto(r, "rollout.promote", {"reason": note}, on_behalf_of, cause)

    # ------------------------------------------------------------------ start

    def create(
        self,
        endpoint: str,
        body: RolloutCreate,
        principal: Principal,
        client: str | None = None,
        audit: Callable[[dict], None] | None = None,
    ) -> RolloutOut:
        """Start a rollout: checks, audit, the gate, the candidate loaded, then step 0. Raises RolloutError.

        `audit(detail)` commits the audit entry (fail closed) before anything is recorded.
        """
        if principal.role not in OPERATE:
            raise RolloutError(403, "forbidden", f"role {principal.role!r} may not start a rollout")
        ep = self.serving.endpoints.get(endpoint)
        if ep is None:
            raise RolloutError(404, "not_found", f"no endpoint {endpoint!r}", "name")
        if ep.version is None:
            raise RolloutError(409, "conflict", f"endpoint {endpoint!r} has no model version to roll from", "name")
        stable: ModelVersion = ep.version
        try:
            cand: ModelVersion = self.registry.get(ep.config.model, body.candidate_version)
        except Exception as e:
            raise RolloutError(404, "not_found", str(getattr(e, "detail", e)), "candidate_version") from None
        if cand.version == stable.version:
            raise RolloutError(
                422, "invalid_request", f"version {cand.version} is already what {endpoint!r} serves",
                "candidate_version",
            )  # fmt: skip
        _check_compatible(stable, cand, ep.config.missing_policy)
        try:
            steps = validate_plan(body.strategy, body.steps)
        except PlanError as e:
            raise RolloutError(422, "invalid_request", str(e), e.field) from None
        dataset = None
        if body.gate:
            if body.validation_dataset is None:
                raise RolloutError(
                    422, "invalid_request", "gate thresholds need a validation_dataset", "validation_dataset"
                )
            try:
                check_thresholds(body.gate)
            except GateError as e:
                raise RolloutError(422, "invalid_request", str(e), e.field) from None
        if body.validation_dataset is not None:
            if self.datasets is None:
                raise RolloutError(503, "unavailable", "datasets are not available on this agent")
            try:
                dataset = self.datasets.get(body.validation_dataset)
            except Exception as e:
                raise RolloutError(404, "not_found", str(getattr(e, "detail", e)), "validation_dataset") from None
        with self._lock:
            other = self._active_on(endpoint)
            if other is not None or endpoint in self._starting:
                what = f"rollout {other.id} is {other.state}" if other else "a rollout is being started"
                raise RolloutError(
                    409, "conflict", f"{what} on {endpoint!r}: finish, abort or roll it back first", "name"
                )
            self._starting.add(endpoint)
        try:
            return self._create(endpoint, body, principal, steps, stable, cand, dataset, client, audit)
        finally:
            with self._lock:
                self._starting.discard(endpoint)

    def _create(
        self, endpoint: str, body: RolloutCreate, principal: Principal, steps: list[RolloutStep],
        stable: ModelVersion, cand: ModelVersion, dataset: Any, client: str | None, audit: Callable | None,
    ) -> RolloutOut:  # fmt: skip
        now = self.clock()
        resolved = body.model_copy(update={"steps": steps, "guards": resolve_guards(body.strategy, body.guards)})
        r = Rollout(
            id="r-" + uuid.uuid4().hex[:12], endpoint=endpoint, model=cand.name, stable_version=stable.version,
            candidate_version=cand.version, spec=resolved,
            lineage=cand.lineage, started_by=principal.name, started_at=now, host=self.host,
            step_started_at=now, updated_at=now,
        )  # fmt: skip
        if audit is not None:
            audit({
                **self._audit_detail(r), "plan": [describe(s) for s in steps],
                "gate": [t.model_dump() for t in body.gate],
                "validation_dataset": f"{dataset.name}:{dataset.version}" if dataset else None,
                "dataset_digest": dataset.digest if dataset else None,
                "candidate_lineage": cand.lineage.model_dump(mode="json"), "two_person_rule": body.two_person_rule,
                "reason": body.reason, "client": client,
            })  # fmt: skip
        with self._lock:
            self._rollouts[r.id] = r
            try:
                self._commit(r, "created", principal.name, _created_body(r))
            except RolloutError:
                del self._rollouts[r.id]
                raise
        # The gate: both versions on the registered dataset, before any traffic moves.
        try:
            frame = self.datasets.load_frame(dataset) if dataset is not None else None
            gate = run_gate(self.serving.evaluate_blocking, stable, cand, body.gate, dataset, frame, self.clock())
        except GateError as e:
            self._reject(r, f"validation gate could not run: {e}", None)
            raise RolloutError(422, "invalid_request", str(e), e.field) from None
        except Exception as e:
            self._reject(r, f"validation gate could not run: {e}", None)
            raise RolloutError(422, "gate_error", f"the validation gate could not run: {e}", "gate") from None
        if not gate.passed:
            self._reject(r, f"validation gate failed: {gate.note}", gate)
            raise RolloutError(422, "gate_failed", gate.model_dump(), "gate")
        with self._lock:
            r.gate = gate
            self._commit(r, "gate", AGENT.name, {"gate": gate.model_dump()})
        try:
            self.serving.ensure_loaded_blocking(cand)
        except Exception as e:
            with self._lock:
                if r.state == "validating":
                    self._end(r, "aborted", f"the candidate could not be loaded: {e}", AGENT.name)
                    self._audit_auto(r, "rollout.abort", {"reason": r.end_reason})
            raise RolloutError(422, "candidate_unavailable", f"the candidate could not be loaded: {e}",
                               "candidate_version") from None  # fmt: skip
        with self._lock:
            if r.state == "validating":  # not aborted meanwhile
                self._enter(r, 0, principal.name, self.clock(), "started")
            self._wake.set()  # the ticker may be asleep (nothing was live)
            return self._out(r)

    def _reject(self, r: Rollout, reason: str, gate: GateResult | None) -> None:
        with self._lock:
            if r.state != "validating":  # aborted while the gate ran
                return
            r.gate = gate
            r.state, r.ended_at, r.end_reason = "rejected", self.clock(), reason
            self._commit(r, "ended", AGENT.name, {"note": reason, **({"gate": gate.model_dump()} if gate else {})})
        self._audit_auto(r, "rollout.rejected", {"reason": reason, "gate": gate.model_dump() if gate else None})

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

    # ------------------------------------------------------------------ the tick

    def tick(self, now: float | None = None) -> None:
        """One pass over live rollouts: endpoint checks, loading, routes, guards, timers, A/B."""
        now = self.clock() if now is None else now
        with self._lock:
            live = [r for r in self._rollouts.values() if r.state in LIVE]
            self._warm = [(mv, until) for mv, until in self._warm if until > now]
            warm = list(self._warm)
        for mv, _ in warm:
            if not self._loaded(mv.name, mv.version):
                self._load_soon(mv, now)
        alert = False
        for r in live:
            try:
                with self._lock:
                    if r.state in LIVE:
                        alert |= self._tick_one(r, now)
            except Exception:
                log.exception("rollout %s: tick failed", r.id)
        if alert:
            self.raise_alerts(now)
        for r in live:
            if r.strategy == "ab" and r.state in LIVE and now - r.ab_at >= AB_REFRESH_S:
                r.ab_at = now
                r.ab = self._ab(r)

    def _tick_one(self, r: Rollout, now: float) -> bool:
        """Returns True when the rollout was aborted by a guard (an alert to raise)."""
        ep = self.serving.endpoints.get(r.endpoint)
        current = ep.version.version if ep is not None and ep.version is not None else None
        if ep is None:
            self._end(r, "aborted", "the endpoint was deleted", AGENT.name)
            self._audit_auto(r, "rollout.abort", {"reason": r.end_reason})
            return False
        # Changes outside the rollout are refused (refuse_change), so these are what a crash left half done
        # (or a change at start-up): on record on behalf of whoever last changed the endpoint.
        changed_by = getattr(ep, "updated_by", None) or None
        cause = f"endpoint {r.endpoint} changed by {changed_by}" if changed_by else None
        if current == r.candidate_version:  # a promotion committed to the endpoint but not yet to the rollout
            self._promote(r, AGENT.name, now, "the endpoint already serves the candidate", None, changed_by, cause)
            return False
        if current != r.stable_version:
            self._end(r, "aborted", f"the endpoint now serves version {current} (changed outside the rollout)",
                      AGENT.name)  # fmt: skip
            self._audit_auto(r, "rollout.abort", {"reason": r.end_reason}, changed_by, cause)
            return False
        if not self._loaded(r.model, r.candidate_version):
            self._load_soon(self._candidate_mv(r), now)
        route = ep.route
        if route is None or route.rollout_id != r.id or route.weight != r.weight or route.shadow != r.shadow:
            self._apply_route(r)  # the endpoint was re-put (a new object) or the agent restarted
        g = r.spec.guards
        # Guards read every request's window (stats, scores): judged once a second, not at every tick, so a
        # watched endpoint's own latency doesn't pay for the watching (bench/serving.py agent-canary).
        if now - r.guards_at >= GUARD_EVAL_S or not r.guards:
            r.guards_at = now
            try:
                metrics = self.serving.route_metrics(r.endpoint, g.window_s)
            except Exception:
                metrics = None
            fd = None
            if g.max_feature_drift_share is not None:
                if now - r.feature_drift_at >= FEATURE_DRIFT_REFRESH_S:
                    r.feature_drift_at = now
                    r.feature_drift = self._feature_drift(r)
                fd = r.feature_drift
            r.guards = r.tracker.update(judge(metrics, g, fd), now)
        held = r.tracker.held(r.guards, now, g.window_s)
        if held is not None:
            why = (
                f"guard {held.name} breached for {now - (held.breached_since or now):.1f} s: candidate "
                f"{_fmt(held.candidate)} > limit {_fmt(held.limit)} (stable {_fmt(held.stable)})"
            )
            self._auto_abort(r, why, held)
            return True
        if r.state != "progressing" or r.step_index >= len(r.steps):
            return False
        step = r.steps[r.step_index]
        elapsed = now - r.step_started_at
        if step.analysis_s is not None:
            bad = next((m for m in r.guards if m.breached), None)
            if bad is not None:
                why = (
                    f"analysis at step {r.step_index} failed: guard {bad.name} candidate {_fmt(bad.candidate)} > "
                    f"limit {_fmt(bad.limit)}"
                )
                self._auto_abort(r, why, bad)
                return True
            if any(m.candidate is not None for m in r.guards):
                r.analysis_judged = True
            if elapsed >= step.analysis_s:
                if r.analysis_judged:
                    self._enter(r, r.step_index + 1, AGENT.name, now, f"analysis at step {r.step_index} passed")
                else:
                    r.state, r.resume_state, r.resume_advances = "paused", "progressing", True
                    r.paused_elapsed = elapsed
                    note = (
                        f"analysis at step {r.step_index} inconclusive: fewer than {g.min_requests} requests to judge "
                        "in the window; resume to accept it, or abort"
                    )
                    self._commit(r, "paused", AGENT.name, {"note": note})
                    self._audit_auto(r, "rollout.pause", {"reason": note})
        elif step.pause_s is not None and elapsed >= step.pause_s:
            note = f"pause of {step.pause_s:g} s at step {r.step_index} over"
            self._enter(r, r.step_index + 1, AGENT.name, now, note)
        return False

    def _auto_abort(self, r: Rollout, why: str, guard: GuardMetric) -> None:
        self._end(r, "aborted", why, AGENT.name, guard_abort=True)
        log.warning("rollout %s on %s aborted: %s", r.id, r.endpoint, why)
        self._audit_auto(r, "rollout.abort", {"reason": why, "guard": guard.model_dump()})

    def _ab(self, r: Rollout) -> ABResult | None:
        try:
            cand = self._candidate_mv(r)
            out = cand.signature.output
            pos = (out.labels or ["0", "1"])[1] if out.kind == "binary" else None
            cur = self._con.cursor()
            try:
                kind, s, c = abtest.outcomes(cur, r.endpoint, r.stable_version, r.candidate_version, r.started_at, pos)
            finally:
                cur.close()
            return abtest.ab_result(kind, s, c, r.spec.ab_min_samples)
        except Exception:
            log.exception("rollout %s: A/B result", r.id)
            return r.ab

    def _feature_drift(self, r: Rollout) -> tuple[float | None, float | None] | None:
        try:
            cur = self._con.cursor()
            try:
                return (
                    feature_drift_share(cur, r.endpoint, r.stable_version),
                    feature_drift_share(cur, r.endpoint, r.candidate_version),
                )
            finally:
                cur.close()
        except Exception:
            log.exception("rollout %s: feature drift", r.id)
            return None

    # ------------------------------------------------------------------ alerts

    def signals(self, now: float | None = None) -> list:
        """One `rollout_guard` signal per endpoint with rollouts: breached while its latest rollout stands
        aborted by a guard (for ALERT_HOLD_S, or until another rollout starts there)."""
        from agent.alerting.rules import Signal

        now = self.clock() if now is None else now
        with self._lock:
            latest: dict[str, Rollout] = {}
            for r in self._rollouts.values():
                if r.endpoint not in latest or r.started_at > latest[r.endpoint].started_at:
                    latest[r.endpoint] = r
            out = []
            for name, r in latest.items():
                if name not in self.serving.endpoints:
                    continue
                recent = r.ended_at is not None and now - r.ended_at < ALERT_HOLD_S
                breached = bool(r.state == "aborted" and r.guard_abort and recent)
                summary = (
                    f"rollout {r.id} of {name} ({r.strategy}, {r.model}:{r.candidate_version}) aborted: "
                    f"{r.end_reason}; traffic is back on {r.model}:{r.stable_version}"
                    if breached
                    else f"rollout {r.id} of {name}: {r.state}"
                )
                out.append(Signal(
                    kind="rollout_guard", endpoint=name, subject=None, value=1.0 if breached else 0.0, threshold=None,
                    breached=breached, summary=summary,
                    labels={"rollout": r.id, "model": r.model, "candidate_version": str(r.candidate_version)},
                ))  # fmt: skip
            return out

    def raise_alerts(self, now: float | None = None) -> None:
        """Evaluate the rollout_guard rule now (not at the alert loop's next turn)."""
        engine = self._alerts()
        if engine is None:
            return
        try:
            engine.evaluate(self.signals(now), now, covered={"rollout_guard"})
        except Exception:
            log.exception("raising the rollout alert")


# --------------------------------------------------------------------------- helpers


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _check_compatible(stable: ModelVersion, cand: ModelVersion, missing_policy: str) -> None:
    """The candidate must answer the endpoint's requests: same kind of output, features the requests carry."""
    if stable.signature.output.kind != cand.signature.output.kind:
        raise RolloutError(
            422, "invalid_request",
            f"the candidate predicts {cand.signature.output.kind}, the endpoint serves {stable.signature.output.kind}",
            "candidate_version",
        )  # fmt: skip
    have = {f.name for f in stable.signature.features}
    imputes = missing_policy == "impute"
    missing = [f.name for f in cand.signature.features if f.name not in have and not (imputes and f.impute is not None)]
    if missing:
        raise RolloutError(
            422, "invalid_request",
            f"the candidate needs features the endpoint's requests don't carry: {', '.join(missing)}",
            "candidate_version",
        )  # fmt: skip


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


def serving_change(old: Any, new: Any) -> str | None:
    """The field of an endpoint config whose change would change what it serves (None: none does)."""
    if old is None:
        return None
    for name in ("model", "version", "alias"):
        if getattr(old, name) != getattr(new, name):
            return name
    return None
