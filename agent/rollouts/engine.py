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

Its parts: the record and its states (agent/rollouts/state.py); the transitions, reads and the creation
of a rollout (here); what people do to it (actions.py); its events and their replay (journal.py); the
tick loop and the alert it raises (ticker.py). RolloutEngine is those mixed into one object with one lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from agent.auth.roles import OPERATE
from agent.rollouts.actions import RolloutActions
from agent.rollouts.gate import GateError, check_thresholds, run_gate
from agent.rollouts.journal import RolloutJournal, _created_body
from agent.rollouts.plans import PlanError, describe, resolve_guards, validate_plan
from agent.rollouts.state import (
    ACTIONS,
    ACTIVE,
    AGENT,
    LOAD_RETRY_S,
    PROMOTE_PIN_S,
    Rollout,
    RolloutError,
    _check_compatible,
    serving_change,
)
from agent.rollouts.ticker import RolloutTicker
from agent.schemas import GateResult, ModelVersion, Principal, RolloutCreate, RolloutOut, RolloutStep

__all__ = ["ACTIONS", "Rollout", "RolloutEngine", "RolloutError", "serving_change"]


log = logging.getLogger("watchkeeper.rollouts")


class RolloutEngine(RolloutTicker, RolloutJournal, RolloutActions):
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
