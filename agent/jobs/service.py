"""The jobs service: what the API calls (submit, cancel, requeue, read, logs, quotas), the jobs in memory,
and the restart path (re-adopt or mark LOST). The runner thread (`runner.py`) does the rest.

Every change a caller is told about is committed first (`JobStore.save`); a job's in-memory record is
the one the API reads. Tier calls never run under the service's lock.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from agent.audit import AuditLog, PendingEntry
from agent.config import AgentConfig, ConfigError
from agent.jobs import logs
from agent.jobs.queue import never_fits
from agent.jobs.quotas import HostCapacity, QuotaBook, usage_of
from agent.jobs.record import JobRecord, new_job_id
from agent.jobs.store import JobStore
from agent.jobs.tiers.base import JobHandle, Tier
from agent.schemas import EnforcementInfo, Snapshot
from agent.schemas.jobs import (
    FAILED_STATES,
    FINAL_STATES,
    Job,
    JobList,
    JobLog,
    JobProgress,
    JobsSummary,
    JobSubmit,
    QuotaList,
    QuotaSpec,
    QuotaUsage,
    RetryPolicy,
)

log = logging.getLogger("watchkeeper.jobs")
_ID = re.compile(r"^j-[0-9a-z]{10}$")

# What a job's environment starts from (never the agent's whole environment: it may hold a token).
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TZ", "TMPDIR")
RECENT_FAILURE_S = 3600.0
MIN_DURATIONS = 5  # completed runs before a pipeline's p95 judges job_duration (agent/alerting/rules.py)


class JobError(Exception):
    """A refusal with its HTTP status, error code, words and the field it is about."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field


def choose_tier(info: EnforcementInfo, jobs_root: str, force: str, run_as: str | None = None) -> Tier:
    """The best tier the host offers, or the one `[jobs] tier` forces (`agent/jobs/tiers/select.py`).
    A forced tier the host can't offer is a start-up error."""
    from agent.jobs.tiers.select import select_tier

    try:
        return select_tier(info, jobs_root, None if force == "auto" else force, run_as)
    except ValueError as e:  # TierUnavailable
        raise ConfigError(f"jobs.tier: {e}") from None


def check_run_as(run_as: str | None) -> None:
    """`[jobs] run_as` must be an account of this host that the agent can switch to (it must be root to run
    jobs as anyone but itself). Raises ConfigError at start, not at each job's launch."""
    if run_as is None:
        return
    import pwd

    try:
        pw = pwd.getpwnam(run_as)
    except KeyError:
        raise ConfigError(f"jobs.run_as: no account {run_as!r} on this host") from None
    if os.geteuid() not in (0, pw.pw_uid):
        raise ConfigError(f"jobs.run_as: the agent runs as uid {os.geteuid()}, not root: it can't run jobs as "
                          f"{run_as!r}")  # fmt: skip


def gpu_inventory(snap: Snapshot | None) -> list[str]:
    """GPU UUIDs jobs may be given: MIG devices' UUIDs where MIG is on, else the GPUs'."""
    if snap is None:
        return []
    out: list[str] = []
    for g in snap.gpus:
        migs = [m.uuid for m in g.mig_devices if m.uuid] if g.mig_enabled else []
        out.extend(migs or [g.uuid])
    return out


class JobService:
    def __init__(
        self,
        cfg: AgentConfig,
        store: JobStore,
        tier: Tier,
        snapshot,  # () -> Snapshot | None: the sampler's latest (GPU inventory, per-process GPU memory)
        host: HostCapacity | None = None,
    ) -> None:
        self.cfg = cfg.jobs
        self.host_name = cfg.name
        self.root: Path = cfg.data_dir / "jobs"
        self.store = store
        self.tier = tier
        self.snapshot = snapshot
        self.host = host or HostCapacity.measure(cfg.jobs)
        self.quotas = QuotaBook(cfg.jobs, cfg.quotas, store)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified when a job reaches a final state
        self.jobs: dict[str, JobRecord] = {}
        # The jobs that may be active, each tick's whole view (`live_records`): finished jobs stay in `jobs` for
        # the log retention (7 days), and scanning them every tick took the idle agent from 2 % to 13 % of a
        # core at 12,000 of them, and a submit burst from 125/s to 70/s.
        self.live: dict[str, JobRecord] = {}
        self.finished_total: Counter[tuple[str, str]] = Counter()
        self._p95_cache: dict[str, tuple[float, float | None]] = {}
        self.version = 0  # moves whenever a job's state does (summary ETag, metrics)
        # Job -> JobProgress | None: set by the batch service (agent/batch/service.py), read on get/list.
        self.progress_of: Callable[[Job], JobProgress | None] | None = None
        from agent.jobs.runner import Runner
        from agent.jobs.slurm.backend import SlurmBackend

        self.runner = Runner(self)
        self.slurm = SlurmBackend(self)  # jobs of pipelines with backend "slurm" (polls only while it has some)

    # ------------------------------------------------------------------ lifecycle

    def restore(self) -> tuple[int, int]:
        """At start, before the listeners: load jobs; re-adopt each running one or mark it LOST.
        Returns (adopted, lost)."""
        adopted = lost = 0
        changed: list[JobRecord] = []
        prepare = getattr(self.tier, "prepare", None)  # one-time set-up (cgroup v2: the agent into a leaf)
        if prepare is not None:
            try:
                prepare()
            except Exception as e:
                log.error("jobs: the %s tier's set-up failed: %s", self.tier.name, e)
        for rec in self.store.load(time.time() - self.cfg.log_retention):
            self.put(rec)
            if rec.job.backend == "slurm":
                continue  # re-attached by the Slurm backend's first poll (its Slurm id is in the row)
            if rec.state != "RUNNING" and not rec.launching:
                continue
            h = rec.handle or _handle_file(self.root, rec.id)
            why: str | None
            if h is None:
                why = "the agent stopped while launching it and no handle was recorded; not started again"
            else:
                try:
                    why = self.tier.adopt(h)
                except Exception as e:  # a tier that can't even look is as good as lost
                    why = f"re-adoption failed: {e}"
            if why is None and h is not None:
                rec.handle, rec.launching = h, False
                rec.job.state, rec.job.pid = "RUNNING", h.pid
                if rec.job.started_at is None:
                    rec.job.started_at = h.started_at or time.time()
                adopted += 1
            else:
                rec.launching = False
                rec.job.state = "LOST"
                rec.job.reason = f"could not re-adopt after an agent restart: {why}"
                rec.job.ended_at = time.time()
                self.finished_total[(rec.job.pipeline, "LOST")] += 1
                lost += 1
            changed.append(rec)
        self.store.save(changed)
        if adopted or lost:
            log.info("jobs: re-adopted %d running job(s), %d lost", adopted, lost)
        return adopted, lost

    def start(self) -> None:
        self.runner.start()
        self.slurm.start()

    def stop(self) -> None:
        """Stop the runner; jobs keep running (a restarted agent re-adopts them)."""
        self.runner.stop()
        self.slurm.stop()

    # ------------------------------------------------------------------ API

    def submit(
        self, body: JobSubmit, principal: str, audited: Callable[[], tuple[AuditLog, PendingEntry]] | None = None
    ) -> Job:
        """Queue a job (durable, journaled, before this returns). Raises JobError (409 never fits, 422, 503).

        `audited`: called once the checks pass, it prepares the submit's audit entry (`AuditLog.prepare`, which
        may raise AuditUnavailable); the job row and the entry are then kept together (one journal record, or
        one transaction), so the job exists only if its entry does (fail closed)."""
        if body.array_parallel is not None and body.array is None:
            raise JobError(422, "invalid_request", "array_parallel limits the tasks of an array: give array too",
                           "array_parallel")  # fmt: skip
        if self.backend_of(body.pipeline) == "slurm":  # Slurm schedules: no admission or never_fits here
            if audited is not None:
                audit, entry = audited()
                audit.commit(audit.queue(entry))  # fail closed: the entry is committed before sbatch runs
            return self.slurm.submit(body, principal)
        if body.array is not None:
            raise JobError(422, "invalid_request", f"a job array runs in Slurm: pipeline {body.pipeline} runs its "
                           "jobs on this host (its backend is local)", "array")  # fmt: skip
        quota = self.quotas.spec(body.pipeline)
        cpu = body.cpu if body.cpu is not None else self.cfg.default_cpu
        mem = body.mem if body.mem is not None else self.cfg.default_mem
        uuids = body.gpus if isinstance(body.gpus, list) else None
        ngpus = len(uuids) if uuids else int(body.gpus or 0)
        inventory = gpu_inventory(self.snapshot())
        if uuids:
            unknown = [u for u in uuids if u not in inventory]
            if unknown:
                raise JobError(422, "invalid_request", f"no such GPU on this host: {unknown[0]}", "gpus")
            if isinstance(quota.gpus, list) and (outside := [u for u in uuids if u not in quota.gpus]):
                raise JobError(409, "never_fits", f"pipeline {body.pipeline}: GPU {outside[0]} is not in its quota",
                               "gpus")  # fmt: skip
        why = never_fits(cpu, mem, ngpus, quota, self.host, len(inventory))
        if why is not None:
            field = "cpu" if why.startswith("cpu") else "mem" if why.startswith("mem") else "gpus"
            raise JobError(409, "never_fits", f"pipeline {body.pipeline}: {why}", field)
        for dep in body.depends_on:
            if self.state_of(dep) is None:
                raise JobError(422, "invalid_request", f"depends_on: no job {dep!r}", "depends_on")
        retry = body.retry or RetryPolicy()
        if body.retries is not None:
            retry = retry.model_copy(update={"max_retries": body.retries})
        argv = ["/bin/sh", "-c", body.command[0], *body.command[1:]] if body.shell else list(body.command)
        now = time.time()
        job = Job(
            id=new_job_id(now), name=body.name, pipeline=body.pipeline, state="PENDING",
            reason="Held" if body.hold else "",
            command=argv, shell=body.shell, env=dict(body.env), workdir=body.workdir, cpu=cpu, mem=mem,
            gpus=list(uuids or []), gpus_requested=ngpus, gpu_mem=body.gpu_mem or quota.gpu_mem,
            time_limit=body.time_limit, submitted_by=principal, submit_reason=body.reason, submitted_at=now,
            max_retries=retry.max_retries, depends_on=list(body.depends_on), host=self.host_name,
            kill_on_invalid_dep=body.kill_on_invalid_dep,
        )  # fmt: skip
        rec = JobRecord(job=job, retry=retry, hold=body.hold, gpu_request=list(uuids) if uuids else None)
        if audited is None:
            self._save([rec])
        else:
            from agent.jobs.store import StoreUnavailable

            audit, entry = audited()
            try:
                self.store.save_audited([rec], audit, entry)
            except StoreUnavailable as e:
                raise JobError(503, "store_unavailable", str(e)) from None
        with self.lock:
            self.put(rec)
            self.version += 1
            out = rec.job.model_copy(deep=True)
        self.runner.wake()
        return out

    def cancel(self, job_id: str, principal: str, note: str = "", wait_s: float = 2.0) -> Job:
        """Cancel a pending job at once, or stop a running one (CANCELLED once it has ended; until then
        RUNNING with reason "cancelling")."""
        with self.lock:
            rec = self._get(job_id)
        if rec.job.backend == "slurm":
            return self.slurm.cancel(rec, principal, note, wait_s)
        with self.lock:
            rec = self._get(job_id)
            if rec.final:
                raise JobError(409, "conflict", f"job {job_id} is already {rec.state}", "id")
            before = (rec.job.model_copy(), rec.cancel_requested, rec.cancel_note)
            if rec.state == "PENDING" and not rec.launching:
                rec.job.state = "CANCELLED"
                rec.job.cancelled_by = principal
                rec.job.reason = f"cancelled by {principal}" + (f": {note}" if note else "")
                rec.job.ended_at = time.time()
            else:
                rec.cancel_requested, rec.cancel_note = principal, note
                rec.job.reason = "cancelling"
            try:
                self._save([rec])  # a cancel is on record before it takes effect (a restart still cancels)
            except JobError:
                rec.job, rec.cancel_requested, rec.cancel_note = before
                raise
            if rec.final:
                self.finished_total[(rec.job.pipeline, "CANCELLED")] += 1
                self.version += 1
                self.changed.notify_all()
                return rec.job.model_copy(deep=True)
        self.runner.wake()
        deadline = time.monotonic() + wait_s
        with self.lock:
            while not rec.final and time.monotonic() < deadline:
                self.changed.wait(timeout=max(0.0, deadline - time.monotonic()))
            return rec.job.model_copy(deep=True)

    def requeue(self, job_id: str, principal: str, note: str = "") -> Job:
        """A final job submitted again as its next attempt (same id, PENDING)."""
        with self.lock:
            rec = self._get(job_id)
        if rec.job.backend == "slurm":
            return self.slurm.requeue(rec, principal, note)
        with self.lock:
            rec = self._get(job_id)
            if not rec.final:
                raise JobError(409, "conflict", f"job {job_id} is {rec.state}: only a finished job is requeued", "id")
            nxt = next_attempt(rec, time.time(), f"requeued by {principal}" + (f": {note}" if note else ""))
            self._save([nxt])
            self.put(nxt)
            self.version += 1
            out = nxt.job.model_copy(deep=True)
        self.runner.wake()
        return out

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self._get(job_id).job.model_copy(deep=True)
        return self._with_progress(job)

    def _with_progress(self, job: Job) -> Job:
        """A job's own progress report (batch transform's rows), read outside the lock."""
        if self.progress_of is not None and job.progress is None:
            try:
                job.progress = self.progress_of(job)
            except Exception as e:  # a report is a nicety: never a reason to fail a read
                log.debug("jobs: progress of %s: %s", job.id, e)
        return job

    def list(self, state: str | None, pipeline: str | None, limit: int, since: float | None) -> JobList:
        """Active jobs first, then newest first."""
        with self.lock:
            recs = [r for r in self.jobs.values() if (state is None or r.state == state)
                    and (pipeline is None or r.job.pipeline == pipeline)
                    and (since is None or r.job.submitted_at >= since)]  # fmt: skip
            recs.sort(key=lambda r: (r.final, -r.job.submitted_at))
            jobs = [r.job.model_copy(deep=True) for r in recs[:limit]]
        return JobList(jobs=[self._with_progress(j) for j in jobs], total=len(recs))

    def logs(self, job_id: str, stream: str, offset: int, max_bytes: int, task: int | None = None) -> JobLog:
        """A stream from `offset`; a job array's output is per task (`task`: its index)."""
        with self.lock:
            rec = self._get(job_id)
            final, array = rec.final, rec.job.array
        if array and task is None:
            raise JobError(422, "invalid_request", f"job {job_id} is an array of {array} tasks: each has its own "
                           f"output (task=0..{array - 1})", "task")  # fmt: skip
        if task is not None and (not array or task >= array):
            why = f"job {job_id} has no task {task}" + (f" (tasks 0..{array - 1})" if array else ": it is not an array")
            raise JobError(422, "invalid_request", why, "task")
        name = stream if task is None else f"{stream}.{task}"
        start, nxt, data, cut = logs.read(logs.job_dir(self.root, job_id), name, offset, max_bytes)
        size = cut + _size(logs.job_dir(self.root, job_id) / name)
        return JobLog(job_id=job_id, stream=stream, offset=start, next_offset=nxt, task=task,  # type: ignore[arg-type]
                      text=data.decode("utf-8", "replace"), dropped_bytes=cut, eof=final and nxt >= size)  # fmt: skip

    def attempts(self, job_id: str) -> list[Job]:
        """Every attempt, oldest first; the current one as memory has it (its row may be a commit behind)."""
        with self.lock:
            current = self._get(job_id).job.model_copy(deep=True)
        rows = [j for j in self.store.attempts(job_id) if j.attempt != current.attempt]
        return [*rows, current]

    # ------------------------------------------------------------------ quotas

    def quota_usage(self, pipeline: str) -> QuotaUsage:
        spec, configured = self.quotas.get(pipeline)
        with self.lock:
            recs = [r for r in self.jobs.values() if r.job.pipeline == pipeline and r.active]
            u = usage_of(pipeline, spec, configured, recs)
        return u.model_copy(update={"backend": self.backend_of(pipeline)})

    def backend_of(self, pipeline: str) -> str:
        """Where a pipeline's new jobs run: its quota's `backend`, else `[jobs] backend`."""
        return self.quotas.spec(pipeline).backend or self.cfg.backend

    def quota_list(self) -> QuotaList:
        with self.lock:
            pipes = set(self.quotas.pipelines()) | {r.job.pipeline for r in self.jobs.values() if r.active}
        return QuotaList(
            quotas=[self.quota_usage(p) for p in sorted(pipes)],
            host_cpu=self.host.cpu, host_mem=self.host.mem, serving_reserved_cpu=self.host.reserved_cpu,
            serving_reserved_mem=self.host.reserved_mem, tier=self.tier.name,  # type: ignore[arg-type]
            tier_detail=self.tier.detail,
        )  # fmt: skip

    def put_quota(self, pipeline: str, spec: QuotaSpec, principal: str) -> QuotaUsage:
        self._quota_write(lambda: self.quotas.put(pipeline, spec, principal))
        self.runner.quota_changed(pipeline)
        return self.quota_usage(pipeline)

    def delete_quota(self, pipeline: str, principal: str) -> None:
        if not self._quota_write(lambda: self.quotas.delete(pipeline, principal)):
            raise JobError(404, "not_found", f"pipeline {pipeline!r} has no quota set", "pipeline")
        self.runner.quota_changed(pipeline)

    def _quota_write(self, fn):
        from agent.jobs.store import StoreUnavailable

        try:
            out = fn()
        except StoreUnavailable as e:
            raise JobError(503, "store_unavailable", str(e)) from None
        with self.lock:
            self.version += 1
        self.runner.wake()
        return out

    # ------------------------------------------------------------------ summary

    def summary(self) -> JobsSummary:
        now = time.time()
        with self.lock:
            running = sum(1 for r in self.jobs.values() if r.state == "RUNNING")
            pending = sum(1 for r in self.jobs.values() if r.state == "PENDING")
            failed = sum(1 for r in self.jobs.values() if r.state in FAILED_STATES
                         and (r.job.ended_at or 0) > now - RECENT_FAILURE_S)  # fmt: skip
        near = sum(1 for q in self.quota_list().quotas if q.near_limit)
        return JobsSummary(running=running, pending=pending, failed_recent=failed, quotas_near_limit=near)

    def alert_view(self) -> tuple[list[Job], dict[str, float | None], list[QuotaUsage]]:
        """What the jobs' alert kinds judge: active and recently failed jobs, each running pipeline's recent
        p95 of completed elapsed times (cached a minute: it reads the store), and quota usage. A job that ended
        otherwise gives no signal (agent/alerting/job_signals.py), so it is not copied: an hour of short jobs
        on a busy host was thousands of copies per evaluation."""
        since = time.time() - RECENT_FAILURE_S
        with self.lock:
            jobs = [r.job.model_copy() for r in self.jobs.values()
                    if r.active or (r.state in FAILED_STATES and (r.job.ended_at or 0) > since)]  # fmt: skip
        now = time.time()
        p95s: dict[str, float | None] = {}
        for p in {j.pipeline for j in jobs if j.state == "RUNNING"}:
            hit = self._p95_cache.get(p)
            if hit is None or hit[0] < now - 60:
                vals = sorted(self.store.recent_elapsed(p))
                p95 = vals[min(len(vals) - 1, int(0.95 * len(vals)))] if len(vals) >= MIN_DURATIONS else None
                hit = self._p95_cache[p] = (now, p95)
            p95s[p] = hit[1]
        return jobs, p95s, self.quota_list().quotas

    # ------------------------------------------------------------------ helpers

    def put(self, rec: JobRecord) -> None:
        """Hold `rec` as its job's current attempt (caller holds `lock`); an active one is `live` too."""
        self.jobs[rec.id] = rec
        if rec.active:
            self.live[rec.id] = rec

    def live_records(self) -> list[JobRecord]:
        """The active jobs (caller holds `lock`); those that ended since the last call leave `live`. A job
        becomes active again only as a new attempt, which comes in through `put`."""
        ended = [k for k, r in self.live.items() if not r.active]
        for k in ended:
            del self.live[k]
        return list(self.live.values())

    def _get(self, job_id: str) -> JobRecord:
        """A job from memory, or from the store when it ended before the retention window (read-only)."""
        rec = self.jobs.get(job_id)
        if rec is None and _ID.match(job_id):
            rec = self.store.latest(job_id)
        if rec is None:
            raise JobError(404, "not_found", f"no job {job_id!r}", "id")
        return rec

    def state_of(self, job_id: str) -> str | None:
        """A dependency's state (the store's for a job no longer in memory)."""
        rec = self.jobs.get(job_id)
        if rec is None and _ID.match(job_id):
            rec = self.store.latest(job_id)
        return rec.state if rec is not None else None

    def evict(self, before: float) -> int:
        """Drop from memory the jobs that ended before `before` (they stay in the store). Returns how many."""
        with self.lock:
            old = [r for r in self.jobs.values() if r.final and (r.job.ended_at or 0) < before]
            for r in old:
                del self.jobs[r.id]
        self.store.forget([(r.id, r.job.attempt) for r in old])
        return len(old)

    def _save(self, recs: list[JobRecord]) -> None:
        from agent.jobs.store import StoreUnavailable

        try:
            self.store.save(recs)
        except StoreUnavailable as e:
            raise JobError(503, "store_unavailable", str(e)) from None

    def job_env(self, rec: JobRecord) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.update(rec.job.env)
        env["WATCHKEEPER_JOB_ID"] = rec.id
        env["WATCHKEEPER_PIPELINE"] = rec.job.pipeline
        env["WATCHKEEPER_JOB_ATTEMPT"] = str(rec.job.attempt)
        # Always set, even empty: a job given no GPU must not see them all.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(rec.job.gpus)
        return env


def next_attempt(rec: JobRecord, now: float, reason: str, eligible_at: float | None = None,
                 mem: int | None = None) -> JobRecord:  # fmt: skip
    """The job's next attempt: same id and request (memory may grow), PENDING again."""
    j = rec.job
    job = Job(
        id=j.id, name=j.name, pipeline=j.pipeline, state="PENDING", reason=reason, command=j.command, shell=j.shell,
        env=j.env, workdir=j.workdir, cpu=j.cpu, mem=mem or j.mem, gpus=list(rec.gpu_request or []),
        gpus_requested=j.gpus_requested, gpu_mem=j.gpu_mem, time_limit=j.time_limit, submitted_by=j.submitted_by,
        submit_reason=j.submit_reason, submitted_at=now, attempt=j.attempt + 1, max_retries=j.max_retries,
        depends_on=j.depends_on, host=j.host, eligible_at=eligible_at, oom_retry_mem=mem,
        kill_on_invalid_dep=j.kill_on_invalid_dep, array=j.array, array_parallel=j.array_parallel,
    )  # fmt: skip
    return JobRecord(job=job, retry=rec.retry, hold=False, gpu_request=rec.gpu_request)


def _handle_file(root: Path, job_id: str) -> JobHandle | None:
    try:
        return JobHandle.from_json((logs.job_dir(root, job_id) / "handle.json").read_text())
    except (OSError, ValueError, TypeError):
        return None


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def is_final(state: str) -> bool:
    return state in FINAL_STATES
