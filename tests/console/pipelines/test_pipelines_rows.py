"""The pure parts of the pipelines console: a run's DAG as a tree, metrics beside the previous run, K=V."""

from __future__ import annotations

import pytest

from agent.schemas.pipelines import Run, StepRun, StepSpec
from console.pipelines.cli import UsageError, parse_param
from console.pipelines.rows import metrics_beside, run_tree


def _run(*steps: StepRun, run_id: str = "run-000000000001") -> Run:
    return Run(id=run_id, pipeline="p", pipeline_version="sha256:x", state="RUNNING", created_by="t",
               created_at=100.0, steps=list(steps))  # fmt: skip


def test_a_diamond_puts_each_step_under_its_longest_path_and_times_a_running_step_so_far() -> None:
    # prep -> (train_a, train_b) -> pick; train_b reads prep's output (an input edge, not `after`).
    specs = [
        StepSpec(name="pick", depends_on=["train_a", "train_b"]),
        StepSpec(name="train_b", inputs={"data": "prep.data", "extra": "file:x.csv"}),
        StepSpec(name="train_a", depends_on=["prep"]),
        StepSpec(name="prep"),
    ]
    run = _run(
        StepRun(step="pick", state="PENDING"),
        StepRun(step="train_b", state="RUNNING", started_at=190.0, job_id="j-1"),
        StepRun(step="train_a", state="FAILED", reason="exit code 1", duration_s=3.0),
        StepRun(step="prep", state="COMPLETED", cache_hit=True, reused_from="run-0", duration_s=0.2),
    )
    lines = run_tree(run, specs, now=200.0)
    assert [(t.step, t.depth) for t in lines] == [("prep", 0), ("train_b", 1), ("train_a", 1), ("pick", 2)]
    text = {t.step: t.text for t in lines}
    assert text["prep"].startswith("✓ prep") and "cache hit (from run-0)" in text["prep"]
    assert text["train_b"].startswith("  └ ▶ train_b  running  10s") and "job j-1" in text["train_b"]
    assert "✗ train_a  failed  3.0s  exit code 1" in text["train_a"]
    assert text["pick"].startswith("    └ · pick  pending  -")


def test_metrics_beside_the_previous_run_with_the_change() -> None:
    now = _run(StepRun(step="eval", state="COMPLETED", metrics={"auc": 0.81, "new": 1.0}))
    before = _run(StepRun(step="eval", state="COMPLETED", metrics={"auc": 0.78, "gone": 2.0}), run_id="run-0")
    assert metrics_beside(now, before) == [
        ("eval.auc", "0.81", "0.78", "+0.03"),
        ("eval.gone", "-", "2", ""),
        ("eval.new", "1", "-", ""),
    ]
    assert metrics_beside(now, None)[0] == ("eval.auc", "0.81", "-", "")


def test_a_param_is_read_as_toml_reads_a_scalar() -> None:
    assert [parse_param(p) for p in ("a=3", "b=0.5", "c=true", "d=false", "e=x=y", "f=")] == [
        ("a", 3), ("b", 0.5), ("c", True), ("d", False), ("e", "x=y"), ("f", ""),
    ]  # fmt: skip
    with pytest.raises(UsageError, match="say K=V"):
        parse_param("=3")
