"""Pure builders for the jobs' alert kinds: the jobs service's wire types in, `Signal`s out.

`job_failed`, `job_duration` and `job_pending` per job (subject: its id), `quota_near_limit` per pipeline
and limited resource (subject: `pipeline/resource`). Every judgeable thing gets a signal, breached or not,
so an alert whose condition ended sees it end. Kinds and thresholds: agent/alerting/rules.py.
"""

from __future__ import annotations

from agent.alerting.rules import MIN_DURATIONS, Signal, breaches
from agent.alerting.signals import default_threshold
from agent.schemas.jobs import FAILED_STATES, Job, QuotaUsage

RECENT_S = 3600.0
UNJUDGED_PENDING = frozenset({"Held", "Dependency"})


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of at least MIN_DURATIONS values, else None."""
    if len(values) < MIN_DURATIONS:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def job_signals(jobs: list[Job], p95_by_pipeline: dict[str, float | None], now: float) -> list[Signal]:
    out: list[Signal] = []
    k = default_threshold("job_duration")
    wait_limit = default_threshold("job_pending")
    for j in jobs:
        labels = {"pipeline": j.pipeline, "state": j.state, "attempt": str(j.attempt)}
        if j.state in FAILED_STATES and (j.ended_at or 0) > now - RECENT_S:
            why = j.reason or j.state
            s = f"job {j.id} ({j.name or ' '.join(j.command)[:60]}) of pipeline {j.pipeline} ended {j.state}: {why}"
            if j.exit_code is not None:
                labels["exit_code"] = str(j.exit_code)
            out.append(Signal("job_failed", None, j.id, 1.0, None, True, s, labels))
        elif j.state == "RUNNING" and j.started_at is not None:
            ref = p95_by_pipeline.get(j.pipeline)
            elapsed = now - j.started_at
            ratio = elapsed / ref if ref else None
            s = (f"job {j.id} of pipeline {j.pipeline} has run {elapsed:.0f} s, {ratio:.1f}x the pipeline's recent "
                 f"p95 of {ref:.0f} s" if ratio is not None else
                 f"job {j.id}: fewer than {MIN_DURATIONS} completed runs of {j.pipeline} to compare with")  # fmt: skip
            out.append(Signal("job_duration", None, j.id, ratio, k, breaches(ratio, k), s, labels))
        elif j.state == "PENDING" and j.reason not in UNJUDGED_PENDING:
            waited = now - j.submitted_at
            s = f"job {j.id} of pipeline {j.pipeline} has waited {waited:.0f} s ({j.reason or 'queued'})"
            labels["reason"] = j.reason
            out.append(Signal("job_pending", None, j.id, waited, wait_limit, breaches(waited, wait_limit), s, labels))
    return out


def quota_signals(quotas: list[QuotaUsage]) -> list[Signal]:
    out: list[Signal] = []
    for q in quotas:
        for res, lim in q.limit.items():
            if not lim:
                continue
            used = q.used.get(res)
            level = max(q.allocated.get(res, 0.0), used if used is not None else 0.0)
            share = level / lim
            s = f"pipeline {q.pipeline}: {res} at {100 * share:.0f}% of its quota ({level:g} of {lim:g})"
            labels = {"pipeline": q.pipeline, "resource": res}
            breached = share >= q.quota.near_limit
            out.append(
                Signal("quota_near_limit", None, f"{q.pipeline}/{res}", share, q.quota.near_limit, breached, s, labels)
            )
    return out
