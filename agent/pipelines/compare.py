"""Two runs side by side: parameters, metrics (per `STEP.key`) and steps (state, duration, cache, outputs)."""

from __future__ import annotations

from agent.schemas.pipelines import Run, RunCompare, RunSummary, StepDiff, ValueDiff


def summary(r: Run) -> RunSummary:
    """A run without its steps."""
    return RunSummary.model_validate(r.model_dump(include=set(RunSummary.model_fields)))


def compare_runs(a: Run, b: Run) -> RunCompare:
    """What differs between `a` and `b` (every key of either, `changed` where the values differ)."""
    params = [ValueDiff(key=k, a=a.params.get(k), b=b.params.get(k), changed=a.params.get(k) != b.params.get(k))
              for k in sorted(set(a.params) | set(b.params))]  # fmt: skip
    ma = {f"{s.step}.{k}": v for s in a.steps for k, v in s.metrics.items()}
    mb = {f"{s.step}.{k}": v for s in b.steps for k, v in s.metrics.items()}
    metrics = [ValueDiff(key=k, a=ma.get(k), b=mb.get(k), changed=ma.get(k) != mb.get(k))
               for k in sorted(set(ma) | set(mb))]  # fmt: skip
    sa, sb = {s.step: s for s in a.steps}, {s.step: s for s in b.steps}
    steps = []
    for n in [*sa, *(x for x in sb if x not in sa)]:
        x, y = sa.get(n), sb.get(n)
        steps.append(StepDiff(
            step=n, a_state=x.state if x else None, b_state=y.state if y else None,
            a_duration_s=x.duration_s if x else None, b_duration_s=y.duration_s if y else None,
            a_cache_hit=bool(x and x.cache_hit), b_cache_hit=bool(y and y.cache_hit),
            outputs_changed=({k: v.digest for k, v in x.outputs.items()} if x else {})
            != ({k: v.digest for k, v in y.outputs.items()} if y else {}),
        ))  # fmt: skip
    return RunCompare(a=summary(a), b=summary(b), params=params, metrics=metrics, steps=steps)
