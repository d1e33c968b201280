"""Default plans and plan validation: every refusal names the step (`steps[i]`)."""

from __future__ import annotations

import pytest

from agent.rollouts.plans import DEFAULT_PLANS, PlanError, describe, validate_plan
from agent.schemas import RolloutStep


def plan(*steps: dict) -> list[RolloutStep]:
    return [RolloutStep.model_validate(s) for s in steps]


def test_default_plans_are_the_documented_ones():
    got = {k: [describe(s) for s in validate_plan(k, None)] for k in DEFAULT_PLANS}  # type: ignore[arg-type]
    assert got == {
        "canary": ["weight 5 %", "approval", "weight 25 %", "pause 60 s", "weight 50 %", "approval", "weight 100 %"],
        "bluegreen": ["shadow 0.1", "analysis 120 s", "approval", "weight 100 %"],
        "shadow": ["shadow 1", "analysis 300 s", "approval"],
        "ab": ["weight 50 %", "approval"],
    }
    # a copy: a rollout can't change the defaults
    p = validate_plan("canary", None)
    p[0].set_weight = 99
    assert DEFAULT_PLANS["canary"][0].set_weight == 5


@pytest.mark.parametrize(
    ("strategy", "steps", "field", "words"),
    [
        ("canary", [], "steps", "at least one step"),
        ("canary", [{"set_weight": 5}, {}], "steps[1]", "exactly one"),
        ("canary", [{"set_weight": 5}, {"pause_s": 5, "approval": True}], "steps[1]", "pause_s, approval"),
        ("canary", [{"approval": False}], "steps[0]", "must be true"),
        ("bluegreen", [{"shadow": 0.1}, {"set_weight": 50}], "steps[1]", "0 or 100"),
        ("shadow", [{"shadow": 1.0}, {"set_weight": 10}], "steps[1]", "never answers callers"),
        ("ab", [{"set_weight": 50}, {"shadow": 0.2}], "steps[1]", "splits callers"),
    ],
)
def test_bad_plans_name_the_step(strategy, steps, field, words):
    with pytest.raises(PlanError) as ei:
        validate_plan(strategy, plan(*steps))
    assert ei.value.field == field and words in str(ei.value)


def test_good_custom_plans_pass_as_given():
    steps = plan({"set_weight": 10}, {"analysis_s": 30}, {"set_weight": 40}, {"pause_s": 5}, {"approval": True})
    assert validate_plan("canary", steps) == steps
    assert validate_plan("bluegreen", plan({"set_weight": 0}, {"approval": True}, {"set_weight": 100}))
    assert validate_plan("shadow", plan({"shadow": 0.5}, {"set_weight": 0}))
