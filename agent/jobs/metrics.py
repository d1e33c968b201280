"""Jobs and quotas for /metrics, read from the jobs service's memory at scrape time.

- `watchkeeper_jobs{pipeline,state}`: active jobs (PENDING, RUNNING) per pipeline, 0 included;
- `watchkeeper_jobs_finished_total{pipeline,state}`: jobs that reached a final state since the agent started;
- `watchkeeper_quota_limit{pipeline,resource}`, `watchkeeper_quota_usage{pipeline,resource}` (what running
  jobs were allocated: their requests, what admission counts against the limit) and
  `watchkeeper_quota_used{pipeline,resource}` (measured now; absent where not measurable);
  resources cpu (cores), mem and gpu_mem (bytes), gpus, jobs. An unlimited resource has no limit sample.
- `watchkeeper_jobs_store_commits_total`, `watchkeeper_jobs_store_rows_total`: the group commit at work;
  `watchkeeper_jobs_store_journaled_total` (saves answered from the jobs journal),
  `watchkeeper_jobs_store_commit_retries_total` (failed commits of those, tried again: the store is in trouble)
  and `watchkeeper_jobs_journal_pending_bytes` (what is only in the journal; it stays up while commits fail).
- `watchkeeper_slurm_polls_total`, `watchkeeper_slurm_poll_seconds_total`, `watchkeeper_slurm_up`: the Slurm
  backend's `squeue --json` polls (one per interval while it has jobs) and whether the last one was answered;
  `watchkeeper_slurm_orphans_cancelled_total`: jobs tagged as ours that no job of ours recorded (an earlier
  run died between sbatch and the commit), cancelled at start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.jobs.service import JobService


def jobs_metrics(svc: JobService) -> Iterator:
    active = GaugeMetricFamily("watchkeeper_jobs", "Active jobs by pipeline and state", labels=["pipeline", "state"])
    counts: dict[tuple[str, str], int] = {}
    with svc.lock:
        for r in svc.jobs.values():
            if r.active:
                counts[(r.job.pipeline, r.state)] = counts.get((r.job.pipeline, r.state), 0) + 1
        pipes = {r.job.pipeline for r in svc.jobs.values() if r.active}
        finished = dict(svc.finished_total)
    for p in sorted(pipes):
        for s in ("PENDING", "RUNNING"):
            active.add_metric([p, s], counts.get((p, s), 0))
    yield active
    done = CounterMetricFamily(
        "watchkeeper_jobs_finished",
        "Jobs that ended, by final state, since the agent started",
        labels=["pipeline", "state"],
    )
    for (p, s), n in sorted(finished.items()):
        done.add_metric([p, s], n)
    yield done
    limit = GaugeMetricFamily("watchkeeper_quota_limit", "A pipeline's quota", labels=["pipeline", "resource"])
    usage = GaugeMetricFamily(
        "watchkeeper_quota_usage", "A pipeline's running jobs' requests", labels=["pipeline", "resource"]
    )
    measured = GaugeMetricFamily(
        "watchkeeper_quota_used", "A pipeline's measured use now", labels=["pipeline", "resource"]
    )
    for q in svc.quota_list().quotas:
        for res, lim in q.limit.items():
            if lim is not None:
                limit.add_metric([q.pipeline, res], lim)
            usage.add_metric([q.pipeline, res], q.allocated.get(res, 0.0))
            used = q.used.get(res)
            if used is not None:
                measured.add_metric([q.pipeline, res], used)
    yield from (limit, usage, measured)
    st = svc.store.stats
    commits = CounterMetricFamily("watchkeeper_jobs_store_commits", "Job-row commits (one per group)")
    commits.add_metric([], st.commits)
    rows = CounterMetricFamily("watchkeeper_jobs_store_rows", "Job rows committed")
    rows.add_metric([], st.rows)
    journaled = CounterMetricFamily("watchkeeper_jobs_store_journaled", "Job saves answered from the jobs journal")
    journaled.add_metric([], st.journaled)
    retries = CounterMetricFamily(
        "watchkeeper_jobs_store_commit_retries", "Failed commits of journaled job rows, tried again (the store)"
    )
    retries.add_metric([], st.retries)
    pending = GaugeMetricFamily(
        "watchkeeper_jobs_journal_pending_bytes", "Jobs-journal bytes not yet committed to the store (0 at rest)"
    )
    pending.add_metric([], svc.store.journal_pending_bytes)
    yield from (commits, rows, journaled, retries, pending)
    sb = svc.slurm
    polls = CounterMetricFamily("watchkeeper_slurm_polls", "squeue --json calls of the Slurm backend")
    polls.add_metric([], sb.polls)
    poll_s = CounterMetricFamily("watchkeeper_slurm_poll_seconds", "Wall time of those calls, parse included")
    poll_s.add_metric([], sb.poll_s_total)
    up = GaugeMetricFamily("watchkeeper_slurm_up", "1 when Slurm answered the last poll (or none was needed)")
    up.add_metric([], 0 if sb.down else 1)
    why = "Slurm jobs tagged as ours that no job of ours recorded, cancelled at start"
    orphans = CounterMetricFamily("watchkeeper_slurm_orphans_cancelled", why)
    orphans.add_metric([], sb.orphans_cancelled)
    yield from (polls, poll_s, up, orphans)


class JobsCollector(Collector):
    def __init__(self, svc: Callable[[], JobService | None]) -> None:
        self._svc = svc

    def collect(self) -> Iterator:
        svc = self._svc()
        if svc is not None:
            yield from jobs_metrics(svc)
