"""A rollout's record and its states: what every event snapshots, the states and actions, refusals.

The state machine that moves a record is agent/rollouts/engine.py (with actions.py); its persistence
and replay agent/rollouts/journal.py; its clock agent/rollouts/ticker.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agent.rollouts.guards import BreachTracker
from agent.schemas import (
    ROLLOUT_TERMINAL,
    ABResult,
    ApprovalOut,
    GateResult,
    GuardMetric,
    Lineage,
    ModelVersion,
    Principal,
    RolloutCreate,
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


def serving_change(old: Any, new: Any) -> str | None:
    """The field of an endpoint config whose change would change what it serves (None: none does)."""
    if old is None:
        return None
    for name in ("model", "version", "alias"):
        if getattr(old, name) != getattr(new, name):
            return name
    return None
