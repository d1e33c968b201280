"""Rollout plans: the default plan of each strategy and the checks every plan passes before it runs.

A plan is a list of steps (Argo Rollouts' model; `agent.schemas.RolloutStep`), each with exactly one of:

- `set_weight` (percent): the candidate's share of live traffic from now on; the next step follows at once;
- `shadow` (0..1): the share of stable's requests also sent to the candidate, whose answers are only compared;
- `pause_s`: wait that long (guards keep watching);
- `approval`: wait for a principal with the approver role (never the rollout's author under the two-person rule);
- `analysis_s`: hold that long; any guard breached in that time fails the rollout (abort); a hold in which no
  guard could be judged (too few requests) is inconclusive and pauses the rollout for a human.

Finishing the last step promotes the candidate (the endpoint is switched to it), so a plan that ends with an
approval ends "awaiting an approver to promote".

Default plans:

- canary:    5 %, approval, 25 %, pause 60 s, 50 %, approval, 100 %
- bluegreen: shadow 0.1 (preview on mirrored traffic), analysis 120 s, approval, 100 % (one switch); the old
             version then stays loaded `keep_stable_warm_s` so a rollback is instant
- shadow:    shadow 1.0, analysis 300 s, approval (then promotion)
- ab:        50 % with sticky assignment by the caller-key header, approval (the A/B result is shown)

Default guards per strategy (`resolve_guards`): a shadow test is there to *measure* how differently the
candidate answers (its disagreement and score shift are reported), so by default it stops only on errors
and latency; an A/B test's arms score different callers' rows, so drift between them measures the callers,
not the model, and an A/B test is judged on its outcome metric (agent/rollouts/abtest.py). For both,
`max_prediction_drift` applies only when the request sets it (`max_shadow_disagreement` is off by default
for every strategy).
"""

from __future__ import annotations

from agent.schemas import RolloutGuards, RolloutStep, RolloutStrategy

MAX_STEPS = 64
STEP_FIELDS = ("set_weight", "shadow", "pause_s", "approval", "analysis_s")


def _w(weight: float) -> RolloutStep:
    return RolloutStep(set_weight=weight)


def _approval() -> RolloutStep:
    return RolloutStep(approval=True)


DEFAULT_PLANS: dict[str, list[RolloutStep]] = {
    "canary": [_w(5), _approval(), _w(25), RolloutStep(pause_s=60), _w(50), _approval(), _w(100)],
    "bluegreen": [RolloutStep(shadow=0.1), RolloutStep(analysis_s=120), _approval(), _w(100)],
    "shadow": [RolloutStep(shadow=1.0), RolloutStep(analysis_s=300), _approval()],
    "ab": [_w(50), _approval()],
}


class PlanError(ValueError):
    """A plan that can't run; `field` names the step (`steps[i]`)."""

    def __init__(self, message: str, field: str = "steps") -> None:
        super().__init__(message)
        self.field = field


def default_plan(strategy: RolloutStrategy) -> list[RolloutStep]:
    return [s.model_copy() for s in DEFAULT_PLANS[strategy]]


def resolve_guards(strategy: RolloutStrategy, guards: RolloutGuards) -> RolloutGuards:
    """The guards a rollout runs with: the request's, with the strategy's defaults for what it left out."""
    if strategy in ("ab", "shadow") and "max_prediction_drift" not in guards.model_fields_set:
        return guards.model_copy(update={"max_prediction_drift": None})
    return guards


def step_kind(step: RolloutStep) -> str:
    """The one field a valid step sets."""
    for name in STEP_FIELDS:
        if getattr(step, name) is not None:
            return name
    raise PlanError("a step must set one of " + ", ".join(STEP_FIELDS))


def describe(step: RolloutStep) -> str:
    kind = step_kind(step)
    if kind == "set_weight":
        return f"weight {step.set_weight:g} %"
    if kind == "shadow":
        return f"shadow {step.shadow:g}"
    if kind == "pause_s":
        return f"pause {step.pause_s:g} s"
    if kind == "analysis_s":
        return f"analysis {step.analysis_s:g} s"
    return "approval"


def validate_plan(strategy: RolloutStrategy, steps: list[RolloutStep] | None) -> list[RolloutStep]:
    """The plan to run: `steps`, checked against the strategy, or the strategy's default. Raises PlanError."""
    if steps is None:
        return default_plan(strategy)
    if not steps:
        raise PlanError("a plan needs at least one step (or leave steps out for the strategy's default)")
    if len(steps) > MAX_STEPS:
        raise PlanError(f"a plan has at most {MAX_STEPS} steps, this one {len(steps)}")
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        given = [name for name in STEP_FIELDS if getattr(step, name) is not None]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise PlanError(f"{where}: set exactly one of {', '.join(STEP_FIELDS)} (got {what})", where)
        kind = given[0]
        if kind == "approval" and step.approval is not True:
            raise PlanError(f"{where}: approval must be true (leave the step out for no approval)", where)
        if strategy == "bluegreen" and kind == "set_weight" and step.set_weight not in (0, 100):
            raise PlanError(
                f"{where}: blue/green switches all traffic at once: set_weight must be 0 or 100, "
                f"not {step.set_weight:g} (use the canary strategy for partial weights)",
                where,
            )
        if strategy == "shadow" and kind == "set_weight" and step.set_weight:
            raise PlanError(
                f"{where}: a shadow rollout never answers callers with the candidate: set_weight is not "
                "allowed (finishing the plan promotes it)",
                where,
            )
        if strategy == "ab" and kind == "shadow" and step.shadow:
            raise PlanError(f"{where}: an A/B test splits callers; shadow traffic would not be measured", where)
    return [s.model_copy() for s in steps]
