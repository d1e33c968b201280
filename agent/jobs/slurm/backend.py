"""The Slurm backend: jobs of a pipeline with `backend = "slurm"` are handed to Slurm and watched there.

The same job API: submit is `sbatch --parsable` (answered only once Slurm took the job and its row is
committed), cancel is `scancel`, requeue is `scontrol requeue` (or a fresh sbatch once Slurm has
forgotten the job). Slurm schedules and enforces: the agent's admission and quotas never gate these
jobs (their `tier` is "slurm"); a pipeline's quota is its configured share, shown beside its usage.

State: one thread calls `squeue --json` once per `[jobs.slurm] poll_interval` for all of the agent's
Slurm jobs (never once per job: that trips slurmctld's RPC limits) and records what changed. A job that
ends is recorded by the agent itself (without slurmdbd there is no sacct, and Slurm forgets a finished
job after MinJobAge): from squeue's record while Slurm still lists it, checked against the job's rc
file; once Slurm no longer lists it, from `scontrol show job`, then the rc file; LOST only when none
can say. While Slurm can't be reached nothing is marked: jobs keep their last known state and
`status()` says Slurm is down.

Memory: Slurm reports OUT_OF_MEMORY only with task/cgroup. Without it (jobacct_gather's OverMemoryKill)
an over-memory job ends FAILED, reason JobLaunchFailure, SIGKILL, and writes no rc file; slurmstepd
writes "exceeded memory limit" into the job's stderr. We say OUT_OF_MEMORY only on that evidence
(Slurm's state, or slurmstepd's own line with no rc file), never from a SIGKILL alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from typing import TYPE_CHECKING

from agent.jobs import logs
from agent.jobs.record import JobRecord, new_job_id
from agent.jobs.retry import plan_retry
from agent.jobs.slurm.client import SlurmClient
from agent.jobs.slurm.squeue import SlurmJob
from agent.jobs.slurm.states import Mapped, map_job
from agent.jobs.slurm.submit import SbatchRequest, SlurmRefused
from agent.jobs.store import StoreUnavailable
from agent.schemas.jobs import Job, JobSubmit, RetryPolicy, SlurmInfo

if TYPE_CHECKING:
    from agent.jobs.service import JobService

log = logging.getLogger("watchkeeper.jobs.slurm")

# slurmstepd's words in the job's stderr when jobacct_gather's OverMemoryKill (or task/cgroup) killed it.
_OOM_LINE = re.compile(r"^.*(exceeded memory limit|Exceeded job memory limit|oom-kill event).*$", re.M | re.I)
_ERRORS = {503: "slurm_unavailable", 404: "not_found", 409: "slurm_refused", 422: "invalid_request"}


def job_error(e: SlurmRefused, what: str):
    """Slurm's refusal as the API's JobError (Slurm's own words kept)."""
    from agent.jobs.service import JobError

    return JobError(e.status, _ERRORS.get(e.status, "slurm_error"), f"{what}: {e.message}", e.field)


def job_name(j: Job) -> str:
    """The `--job-name` of our jobs: how a jobcomp record (which carries no comment) is told ours."""
    return f"wk-{j.pipeline}"


class SlurmBackend:
    def __init__(self, svc: JobService) -> None:
        self.svc = svc
        self.cfg = svc.cfg.slurm
        self.client = SlurmClient(self.cfg)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self.down: str | None = None  # Slurm's words while it can't be reached
        self.down_since: float | None = None
        self.polls = 0
        self.poll_s_total = 0.0
        self.last_poll_at: float | None = None
        self.started_at = time.time()
        self.orphans_cancelled = 0
        self._swept = False  # the start's look for orphans is done

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jobs-slurm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(self.cfg.command_timeout + 5)

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> str:
        """For /readyz: whether Slurm answered the last poll."""
        if self.down:
            return f"Slurm unreachable since {time.strftime('%H:%M:%S', time.gmtime(self.down_since))}Z: {self.down}"
        return "ok"

    def tracked(self) -> list[JobRecord]:
        with self.svc.lock:
            return [r for r in self.svc.live_records() if r.job.backend == "slurm" and r.active and r.job.slurm]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._swept:
                try:
                    self._swept = self.sweep_orphans()
                except Exception:
                    log.exception("slurm: the look for orphaned jobs failed")
            urgent = any(r.cancel_requested for r in self.tracked())
            self._wake.wait(min(self.cfg.poll_interval, 0.5) if urgent else self.cfg.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.poll()
            except Exception:  # one bad poll must not end the watch
                log.exception("slurm poll failed")
                time.sleep(0.5)

    def uses_slurm(self) -> bool:
        """Whether any of this agent's jobs go, or went, to Slurm."""
        svc = self.svc
        if svc.cfg.backend == "slurm" or self.tracked():
            return True
        return any(svc.quotas.spec(p).backend == "slurm" for p in svc.quotas.pipelines())

    def sweep_orphans(self) -> bool:
        """Once at start: cancel the Slurm jobs tagged as this agent's whose job id it never recorded. They were
        sbatch'ed by an earlier run of the agent that died before committing the job (so its caller got no
        201, and nothing will ever watch them). A job submitted since this process started is left alone:
        its row may be on its way. Returns False when Slurm could not be asked (tried again next loop)."""
        if not self.uses_slurm():
            return True
        try:
            snap = self.client.squeue()
        except SlurmRefused:
            return False
        prefix = f"wk:{self.svc.host_name}:"
        for sj in snap.jobs:
            if not sj.comment.startswith(prefix) or sj.state not in ("PENDING", "RUNNING", "SUSPENDED"):
                continue
            if sj.submit_time is None or sj.submit_time >= self.started_at - 1:  # Slurm's times are whole seconds
                continue
            job_id = sj.comment[len(prefix) :]
            if self.svc.state_of(job_id) is not None:
                continue  # a job we answered for (a retry of it is adopted by its own poll)
            target = sj.array_job_id or sj.job_id
            try:
                self.client.scancel(target)
            except SlurmRefused as e:
                log.error("slurm: orphaned job %d (%s) could not be cancelled: %s", target, sj.comment, e.message)
                continue
            self.orphans_cancelled += 1
            log.warning("slurm: cancelled job %d (%s): submitted by an earlier run of this agent that never "
                        "recorded it", target, sj.comment)  # fmt: skip
        return True

    # ------------------------------------------------------------------ submit / cancel / requeue

    def submit(self, body: JobSubmit, principal: str) -> Job:
        """sbatch the job; answered once Slurm took it and its row is committed."""
        from agent.jobs.service import JobError

        svc = self.svc
        quota = svc.quotas.spec(body.pipeline)
        if isinstance(body.gpus, list):
            raise JobError(422, "invalid_request", "a Slurm job asks for a GPU count (--gres=gpu:N): Slurm picks "
                           "the GPUs", "gpus")  # fmt: skip
        retry = body.retry or RetryPolicy()
        if body.retries is not None:
            retry = retry.model_copy(update={"max_retries": body.retries})
        after_ok = self._after_ok(body.depends_on)
        now = time.time()
        argv = ["/bin/sh", "-c", body.command[0], *body.command[1:]] if body.shell else list(body.command)
        info = SlurmInfo(job_id=0, partition=quota.partition or self.cfg.partition,
                         account=quota.account or self.cfg.account, qos=quota.qos or self.cfg.qos)  # fmt: skip
        job = Job(
            id=new_job_id(now), name=body.name, pipeline=body.pipeline, state="PENDING", reason="",
            command=argv, shell=body.shell, env=dict(body.env), workdir=body.workdir,
            cpu=body.cpu if body.cpu is not None else svc.cfg.default_cpu,
            mem=body.mem if body.mem is not None else svc.cfg.default_mem,
            gpus_requested=int(body.gpus or 0), gpu_mem=body.gpu_mem or quota.gpu_mem, time_limit=body.time_limit,
            submitted_by=principal, submit_reason=body.reason, submitted_at=now, depends_on=list(body.depends_on),
            host=svc.host_name, tier="slurm", backend="slurm", slurm=info, max_retries=retry.max_retries,
        )  # fmt: skip
        if body.array is not None:
            job.array, job.array_parallel = body.array, body.array_parallel
            info.tasks = {str(i): "PENDING" for i in range(body.array)}
        rec = JobRecord(job=job, retry=retry, hold=body.hold)
        try:
            info.job_id = self.client.sbatch(self._request(rec, after_ok), ["--open-mode=append"])
        except SlurmRefused as e:
            raise job_error(e, "Slurm refused the job") from None
        job.reason = "Held" if body.hold else "submitted to Slurm"
        try:
            svc.store.save([rec])
        except StoreUnavailable as e:
            self._scancel_quietly(info.job_id)  # never leave a job running that we did not answer for
            raise JobError(503, "store_unavailable", str(e)) from None
        with svc.lock:
            svc.put(rec)
            svc.version += 1
            return rec.job.model_copy(deep=True)

    def _after_ok(self, deps: list[str]) -> list[int]:
        """`depends_on` as Slurm ids for `--dependency=afterok` (a completed dependency is already satisfied)."""
        from agent.jobs.service import JobError

        out = []
        for dep in deps:
            with self.svc.lock:
                d = self.svc.jobs.get(dep)
            if d is None:
                if self.svc.state_of(dep) == "COMPLETED":
                    continue
                raise JobError(422, "invalid_request", f"depends_on: no job {dep!r}", "depends_on")
            if d.job.backend != "slurm" or d.job.slurm is None:
                raise JobError(422, "invalid_request", f"depends_on: {dep} runs on this host, not in Slurm: a Slurm "
                               "job can wait only for Slurm jobs", "depends_on")  # fmt: skip
            if d.state == "COMPLETED":
                continue
            if d.final:
                raise JobError(409, "conflict", f"depends_on: {dep} ended {d.state}: this job would never run",
                               "depends_on")  # fmt: skip
            out.append(d.job.slurm.job_id)
        return out

    def _request(self, rec: JobRecord, after_ok: list[int], begin_s: int | None = None) -> SbatchRequest:
        j, info = rec.job, rec.job.slurm
        assert info is not None
        d = logs.ensure_dir(self.svc.root, rec.id)
        array = None
        if j.array:  # the tasks not yet COMPLETED (all of them, the first time)
            todo = unfinished_tasks(info.tasks or {})
            array = array_spec(todo, j.array_parallel)
            for i in todo:
                (d / f"rc.{i}").unlink(missing_ok=True)
        else:
            (d / "rc").unlink(missing_ok=True)  # an earlier attempt's status is not this one's
        env = dict(j.env)
        env.update(WATCHKEEPER_JOB_ID=rec.id, WATCHKEEPER_PIPELINE=j.pipeline, WATCHKEEPER_JOB_ATTEMPT=str(j.attempt))
        return SbatchRequest(
            command=j.command, job_dir=str(d), name=job_name(j), comment=self.comment(rec.id), cpus=j.cpu,
            mem_bytes=j.mem, gpus=j.gpus_requested or None, time_limit_s=j.time_limit, partition=info.partition,
            account=info.account, qos=info.qos, workdir=j.workdir, env=env, after_ok=after_ok, hold=rec.hold,
            begin_s=begin_s, array=array,
        )  # fmt: skip

    def comment(self, job_id: str) -> str:
        """Our tag on the Slurm job: squeue lists every user's jobs, and a Slurm id may be reused."""
        return f"wk:{self.svc.host_name}:{job_id}"

    def cancel(self, rec: JobRecord, principal: str, note: str, wait_s: float) -> Job:
        """scancel; CANCELLED once Slurm says so (within `wait_s`), else RUNNING/PENDING "cancelling"."""
        from agent.jobs.service import JobError

        svc = self.svc
        with svc.lock:
            if rec.final:
                raise JobError(409, "conflict", f"job {rec.id} is already {rec.state}", "id")
            sid = rec.job.slurm.job_id  # type: ignore[union-attr]
        try:
            self.client.scancel(sid)
        except SlurmRefused as e:
            raise job_error(e, f"could not cancel Slurm job {sid}") from None
        with svc.lock:
            rec.cancel_requested, rec.cancel_note = principal, note
            rec.job.reason = "cancelling"
        try:
            svc.store.save([rec])
        except StoreUnavailable as e:
            log.error("job %s: the cancel request was not recorded: %s", rec.id, e)
        self.wake()
        deadline = time.monotonic() + wait_s
        with svc.lock:
            while not rec.final and time.monotonic() < deadline:
                svc.changed.wait(timeout=max(0.0, deadline - time.monotonic()))
            cur = svc.jobs.get(rec.id, rec)
            return cur.job.model_copy(deep=True)

    def requeue(self, rec: JobRecord, principal: str, note: str) -> Job:
        """The finished job again as its next attempt: `scontrol requeue` while Slurm still holds it (same
        Slurm id), else a fresh sbatch (a new one)."""
        from agent.jobs.service import JobError, next_attempt

        svc = self.svc
        with svc.lock:
            if not rec.final:
                raise JobError(409, "conflict", f"job {rec.id} is {rec.state}: only a finished job is requeued", "id")
            old = rec.job.slurm
            assert old is not None
        nxt = next_attempt(rec, time.time(), f"requeued by {principal}" + (f": {note}" if note else ""))
        nxt.job.tier, nxt.job.backend = "slurm", "slurm"
        nxt.job.slurm = next_info(old, old.job_id, old.restarts + 1)
        (logs.job_dir(svc.root, rec.id) / "rc").unlink(missing_ok=True)
        # A job array is always submitted again (only the tasks that did not complete: a new array); another
        # job is requeued in place while Slurm still holds it, and submitted again once it has forgotten it.
        fresh = bool(rec.job.array)
        if not fresh:
            try:
                self.client.requeue(old.job_id)
            except SlurmRefused as e:
                if e.status != 404:
                    raise job_error(e, f"Slurm could not requeue job {old.job_id}") from None
                fresh = True
        if fresh:
            try:
                nxt.job.slurm.restarts = 0
                nxt.job.slurm.job_id = self.client.sbatch(self._request(nxt, []), ["--open-mode=append"])
            except SlurmRefused as e2:
                raise job_error(e2, "Slurm refused the job") from None
        try:
            svc.store.save([nxt])
        except StoreUnavailable as e:
            self._scancel_quietly(nxt.job.slurm.job_id)
            raise JobError(503, "store_unavailable", str(e)) from None
        with svc.lock:
            svc.put(nxt)
            svc.version += 1
            return nxt.job.model_copy(deep=True)

    def _scancel_quietly(self, sid: int) -> None:
        try:
            self.client.scancel(sid)
        except SlurmRefused as e:
            log.error("Slurm job %d could not be cancelled after a failed commit: %s", sid, e.message)

    # ------------------------------------------------------------------ polling

    def poll(self) -> int:
        """One `squeue --json` for every tracked job; records what changed. Returns jobs changed."""
        with self._poll_lock:
            tracked = self.tracked()
            if not tracked:
                return 0
            t0 = time.perf_counter()
            try:
                snap = self.client.squeue()
            except SlurmRefused as e:
                if self.down is None:
                    log.error("Slurm is unreachable; %d job(s) keep their last state: %s", len(tracked), e.message)
                    self.down_since = time.time()
                self.down = e.message
                return 0
            finally:
                self.polls += 1
                self.poll_s_total += time.perf_counter() - t0
            if self.down is not None:
                log.warning("Slurm answers again (it was unreachable for %.0f s)", time.time() - (self.down_since or 0))
            self.down, self.down_since, self.last_poll_at = None, None, time.time()
            by_id = {j.job_id: j for j in snap.jobs if j.array_job_id is None}
            arrays: dict[int, list[SlurmJob]] = {}
            for sj in snap.jobs:
                if sj.array_job_id is not None:
                    arrays.setdefault(sj.array_job_id, []).append(sj)
            staged: list[tuple[JobRecord, Job, JobRecord | None]] = []
            for rec in tracked:
                sid = rec.job.slurm.job_id  # type: ignore[union-attr]
                if rec.job.array:
                    mine = [t for t in arrays.get(sid, []) if not t.comment or t.comment == self.comment(rec.id)]
                    out = self._update_array(rec, mine)
                    if out is not None and out[1] is None and out[0].state == "FAILED":
                        out = (out[0], self._retry(rec, out[0], snap.jobs))
                    if out is not None:
                        staged.append((rec, *out))
                    elif rec.state == "RUNNING":
                        tasks = rec.job.slurm.tasks or {}  # type: ignore[union-attr]
                        self._cap_logs(rec, [f".{i}" for i, st in tasks.items() if st == "RUNNING"])
                    continue
                sj = by_id.get(sid)
                if sj is not None and sj.comment and sj.comment != self.comment(rec.id):
                    sj = None  # that id is another job now (a reset cluster reuses ids)
                try:
                    out = self._update(rec, sj)
                except SlurmRefused as e:  # scontrol for a vanished job: ask again next poll
                    log.warning("job %s: %s", rec.id, e.message)
                    continue
                if out is not None and out[1] is None and out[0].state in ("FAILED", "OUT_OF_MEMORY"):
                    out = (out[0], self._retry(rec, out[0], snap.jobs))
                if out is not None:
                    staged.append((rec, *out))
                elif rec.state == "RUNNING":
                    self._cap_logs(rec)
            self._publish(staged)
            return len(staged)

    def _retry(self, rec: JobRecord, j: Job, jobs_now: list[SlurmJob]) -> JobRecord | None:
        """The next attempt of a job that just ended `j.state`, sbatch'ed, when its retry policy says so
        (agent/jobs/retry.py; the backoff is Slurm's `--begin`). A retry already in Slurm's queue under our
        tag (sbatch'ed before a crash, its row never committed) is taken as it is, never submitted twice."""
        from agent.jobs.service import next_attempt

        ended = dataclasses.replace(rec, job=j)
        plan = plan_retry(ended, j.state, j.exit_code, self.svc.quotas.spec(j.pipeline).mem, stopped=False)
        if plan is None:
            return None
        old = j.slurm
        assert old is not None
        now = time.time()
        why = f"retry {j.attempt}/{j.max_retries} after {j.state}"
        nxt = next_attempt(ended, now, why, eligible_at=now + plan.delay_s if plan.delay_s else None, mem=plan.mem)
        nxt.job.tier, nxt.job.backend = "slurm", "slurm"
        nxt.job.slurm = next_info(old, 0, 0)
        mine = [s.array_job_id or s.job_id for s in jobs_now if s.comment == self.comment(rec.id)
                and (s.array_job_id or s.job_id) > old.job_id and s.array_task_id is None]  # fmt: skip
        if mine:
            nxt.job.slurm.job_id = max(mine)
            return nxt
        try:
            begin = math.ceil(plan.delay_s) if plan.delay_s >= 1 else None
            nxt.job.slurm.job_id = self.client.sbatch(self._request(nxt, [], begin), ["--open-mode=append"])
        except SlurmRefused as e:
            j.reason = (j.reason + "; " if j.reason else "") + f"not retried: Slurm refused the retry ({e.message})"
            return None
        return nxt

    def _publish(self, staged: list[tuple[JobRecord, Job, JobRecord | None]]) -> None:
        """Commit the new rows first, then show them (what a caller is told is on record)."""
        if not staged:
            return
        rows = [dataclasses.replace(rec, job=job) for rec, job, _ in staged]
        rows += [nxt for _, _, nxt in staged if nxt is not None]
        try:
            self.svc.store.save(rows)
        except StoreUnavailable as e:
            log.error("slurm: states not recorded (shown at the next poll): %s", e)
            return
        svc = self.svc
        with svc.lock:
            for rec, job, nxt in staged:
                moved = job.state != rec.job.state
                rec.job = job
                if moved and job.state not in ("PENDING", "RUNNING"):
                    svc.finished_total[(job.pipeline, job.state)] += 1
                if nxt is not None:
                    svc.put(nxt)
            svc.version += 1
            svc.changed.notify_all()

    def _update(self, rec: JobRecord, sj: SlurmJob | None) -> tuple[Job, JobRecord | None] | None:
        """The job's next record from what Slurm says (None: nothing to record), and a next attempt
        when Slurm requeued it on its own."""
        with self.svc.lock:  # the API may be writing a cancel's reason
            j = rec.job.model_copy(deep=True)
        info = j.slurm
        assert info is not None
        now = time.time()
        if sj is None:
            sj = self.client.show_job(info.job_id)  # it left squeue's list: ask while Slurm may still know
            if sj is not None and sj.comment and sj.comment != self.comment(rec.id):
                sj = None
            if sj is None:
                return self._vanished(rec, j), None
        if sj.restart_count < info.restarts:
            return None  # a record from before our requeue took effect
        before = (j.state, j.reason, info.state, info.reason, info.nodes, info.alloc_cpu)
        info.state, info.reason, info.nodes, info.seen_at = "+".join(sj.states), sj.reason, sj.nodes, now
        m = map_job(sj)
        if sj.restart_count > info.restarts:  # Slurm requeued it itself (ours expect the count they made)
            return self._requeued_by_slurm(rec, j, sj)
        if m.state == "REQUEUED":  # our own requeue, on its way back to PENDING
            j.state, j.reason = "PENDING", m.reason
        elif m.state is None:
            j.reason = m.reason  # a Slurm state we don't know: keep ours, say Slurm's word
        elif m.state == "PENDING":
            j.state, j.reason = "PENDING", m.reason
        elif m.state == "RUNNING":
            if j.state != "RUNNING":
                j.started_at = sj.start_time or now
                j.wait_s = max(0.0, j.started_at - j.submitted_at)
            j.state, j.reason = "RUNNING", m.reason
            j.elapsed_s = max(0.0, now - (j.started_at or now))
            info.alloc_cpu, info.alloc_mem, info.alloc_gpus = tres_alloc(sj.tres_alloc)
        else:
            self._final(rec, j, m, sj)
        if rec.cancel_requested and j.state in ("PENDING", "RUNNING"):
            j.reason = "cancelling"
        after = (j.state, j.reason, info.state, info.reason, info.nodes, info.alloc_cpu)
        return self._changed(rec, j, before, after, now)

    def _update_array(self, rec: JobRecord, sjs: list[SlurmJob]) -> tuple[Job, None] | None:
        """A job array's next record from squeue's records of it: each task's state (from its own record while
        Slurm lists it, its rc file once it ended), and the job's: RUNNING while any task runs, PENDING while
        any waits, else COMPLETED when every task did, CANCELLED when we cancelled it, FAILED naming the tasks
        that did not complete."""
        with self.svc.lock:
            j = rec.job.model_copy(deep=True)
        info = j.slurm
        assert info is not None
        now = time.time()
        tasks = dict(info.tasks or {})
        before = (j.state, j.reason, dict(tasks), info.state, info.reason, info.nodes, info.alloc_cpu)
        head_reason, states, nodes, starts = "", set(), set(), []
        alloc = [0.0, 0, 0]
        listed: set[str] = set()
        for sj in sjs:
            if sj.array_task_id is None:  # the array's own record: the tasks still pending, and why
                for i in expand_tasks(sj.array_tasks_pending):
                    listed.add(str(i))
                    tasks[str(i)] = "PENDING"
                head_reason = map_job(sj).reason
                states.add(sj.state)
                continue
            i = str(sj.array_task_id)
            listed.add(i)
            states.add(sj.state)
            m = map_job(sj)
            if m.state is None:  # a Slurm state we don't know: the task keeps ours
                tasks.setdefault(i, "PENDING")
            elif m.state in ("PENDING", "REQUEUED"):
                tasks[i] = "PENDING"
            elif m.state == "RUNNING":
                tasks[i] = "RUNNING"
                starts.append(sj.start_time or now)
                if sj.nodes:
                    nodes.add(sj.nodes)
                cpu, mem, gpus = tres_alloc(sj.tres_alloc)
                alloc = [alloc[0] + (cpu or 0), alloc[1] + (mem or 0), alloc[2] + (gpus or 0)]
            else:
                tasks[i] = self._task_end(rec.id, i, m.state)
        # Each of the array's tasks is in the head's pending list or has a record of its own until MinJobAge
        # passes after it ended: one that is in neither ended a while ago, and its rc file says how.
        for i, st in tasks.items():
            if st in ("PENDING", "RUNNING") and i not in listed:
                tasks[i] = self._task_end(rec.id, i, None)
        info.tasks, info.seen_at = tasks, now
        info.state, info.reason, info.nodes = "+".join(sorted(states)), head_reason, ",".join(sorted(nodes))
        count = {st: sum(1 for v in tasks.values() if v == st) for st in set(tasks.values())}
        summary = ", ".join(f"{n} {st.lower()}" for st, n in sorted(count.items())) + f" of {len(tasks)} tasks"
        if count.get("RUNNING") or count.get("PENDING"):
            if count.get("RUNNING"):
                if j.state != "RUNNING":
                    j.started_at = min(starts) if starts else now
                    j.wait_s = max(0.0, j.started_at - j.submitted_at)
                j.state = "RUNNING"
                j.elapsed_s = max(0.0, now - (j.started_at or now))
                info.alloc_cpu, info.alloc_mem, info.alloc_gpus = alloc[0], alloc[1], alloc[2]
            else:
                j.state = "PENDING"
                info.alloc_cpu = info.alloc_mem = info.alloc_gpus = None
            j.reason = summary + (f" ({head_reason})" if head_reason and not count.get("RUNNING") else "")
            if rec.cancel_requested:
                j.reason = "cancelling"
        else:
            bad = dict(sorted(((i, st) for i, st in tasks.items() if st != "COMPLETED"), key=lambda x: int(x[0])))
            codes = [self._rc(rec.id, i) for i in bad]
            if not bad:
                j.state, j.reason, j.exit_code = "COMPLETED", "", 0
            elif rec.cancel_requested:
                who = rec.cancel_requested
                j.state, j.cancelled_by = "CANCELLED", who
                j.reason = f"cancelled by {who}" + (f": {rec.cancel_note}" if rec.cancel_note else "")
            else:
                j.state = "FAILED"
                j.exit_code = next((c for c in codes if c), None)
                told = [f"task {i} {st}" + (f" (exit code {c})" if c else "")
                        for (i, st), c in zip(bad.items(), codes, strict=True)]  # fmt: skip
                j.reason = (f"{len(bad)} of {len(tasks)} tasks did not complete: " + "; ".join(told))[:2000]
            j.ended_at = now
            if j.started_at is not None:
                j.elapsed_s = max(0.0, now - j.started_at)
            info.alloc_cpu = info.alloc_mem = info.alloc_gpus = None
        after = (j.state, j.reason, dict(tasks), info.state, info.reason, info.nodes, info.alloc_cpu)
        return self._changed(rec, j, before, after, now)

    def _changed(self, rec: JobRecord, j: Job, before: tuple, after: tuple, now: float) -> tuple[Job, None] | None:
        """(j, None) to record when what is shown changed; else None, with memory's seen/elapsed kept fresh."""
        if after != before:
            return j, None
        with self.svc.lock:
            if rec.job.slurm is not None:
                rec.job.slurm.seen_at = now
            if j.state == "RUNNING":
                rec.job.elapsed_s = j.elapsed_s
        return None

    def _task_end(self, job_id: str, task: str, slurm_state: str | None) -> str:
        """How an array task ended: its rc file first (the command's own status), else Slurm's word for it
        (CANCELLED, TIMEOUT, ...; OUT_OF_MEMORY on slurmstepd's line in its stderr), else LOST."""
        rc = self._rc(job_id, task)
        if rc is not None:
            return "COMPLETED" if rc == 0 else "FAILED"
        if slurm_state in (None, "FAILED") and self._oom_line(job_id, f"stderr.{task}"):
            return "OUT_OF_MEMORY"
        return slurm_state or "LOST"

    def _final(self, rec: JobRecord, j: Job, m: Mapped, sj: SlurmJob | None) -> None:
        state, reason, rc_, sig = m.state, m.reason, m.exit_code, m.signal
        rc = self._rc(rec.id)
        if state in ("COMPLETED", "FAILED") and rc is not None:
            # the command's own status, from its rc file (Slurm's is the batch script's, the same here)
            state, rc_, sig = ("COMPLETED", 0, None) if rc == 0 else ("FAILED", rc, None)
            reason = "" if rc == 0 else f"exit code {rc}"
        elif state == "FAILED" and rc is None and (oom := self._oom_line(rec.id)):
            state, reason = "OUT_OF_MEMORY", f"killed by Slurm over its memory limit ({oom})"
        if state == "CANCELLED" and rec.cancel_requested:
            who = rec.cancel_requested
            j.cancelled_by = who
            reason = f"cancelled by {who}" + (f": {rec.cancel_note}" if rec.cancel_note else "")
        j.state, j.reason, j.exit_code, j.signal = state, reason, rc_, sig  # type: ignore[assignment]
        j.ended_at = (sj.end_time if sj is not None else None) or time.time()
        # Slurm gives a job cancelled while pending a start time (its end): only one given nodes ever started.
        if j.started_at is None and sj is not None and sj.start_time and sj.nodes:
            j.started_at = sj.start_time
        if j.started_at is not None:
            j.elapsed_s = max(0.0, j.ended_at - j.started_at)
        if j.slurm is not None:
            j.slurm.alloc_cpu = j.slurm.alloc_mem = j.slurm.alloc_gpus = None

    def _vanished(self, rec: JobRecord, j: Job) -> Job:
        """Slurm no longer knows the job (it ended more than MinJobAge ago, e.g. while the agent was down): its
        rc file, else Slurm's jobcomp record of its end, else LOST."""
        rc = self._rc(rec.id)
        if rc is not None:
            m = Mapped("COMPLETED" if rc == 0 else "FAILED", "" if rc == 0 else f"exit code {rc}", rc)
            self._final(rec, j, m, None)
            j.reason = (j.reason + "; " if j.reason else "") + "from its rc file (Slurm no longer lists it)"
            return j
        assert j.slurm is not None
        try:  # the last word before LOST: slurmctld's jobcomp file, where it keeps one we can read
            sj = self.client.jobcomp_ending(j.slurm.job_id, job_name(j))
        except SlurmRefused:
            sj = None
        if sj is not None:
            self._final(rec, j, map_job(sj), sj)
            j.reason = (j.reason + "; " if j.reason else "") + "from Slurm's jobcomp record (Slurm no longer lists it)"
            return j
        why = (
            "Slurm no longer lists it (MinJobAge passed before the agent saw it end) and it wrote no rc file "
            "(killed by a signal: time limit, scancel, memory?): how it ended is not known"
        )
        m = Mapped("LOST", why)
        self._final(rec, j, m, None)
        return j

    def _requeued_by_slurm(self, rec: JobRecord, j: Job, sj: SlurmJob) -> tuple[Job, JobRecord]:
        """Slurm put the job back in its queue itself (node failure, preemption, scontrol requeue by hand):
        this attempt is over as REQUEUED, the next one is the same Slurm job."""
        from agent.jobs.service import next_attempt

        j.state, j.reason = "REQUEUED", f"requeued by Slurm ({sj.reason or 'no reason given'})"
        j.ended_at = time.time()
        nxt = next_attempt(dataclasses.replace(rec, job=j), time.time(), "requeued by Slurm")
        nxt.job.tier, nxt.job.backend = "slurm", "slurm"
        nxt.job.slurm = j.slurm.model_copy(update={"restarts": sj.restart_count, "alloc_cpu": None,  # type: ignore[union-attr]
                                                   "alloc_mem": None, "alloc_gpus": None})  # fmt: skip
        nxt.job.reason = map_job(sj).reason if sj.state == "PENDING" else "requeued by Slurm"
        return j, nxt

    # ------------------------------------------------------------------ the job's files

    def _rc(self, job_id: str, task: str | None = None) -> int | None:
        """The command's exit status from its rc file (an array task's: `rc.<index>`); None: none written."""
        try:
            return int((logs.job_dir(self.svc.root, job_id) / ("rc" if task is None else f"rc.{task}")).read_text())
        except (OSError, ValueError):
            return None

    def _oom_line(self, job_id: str, stream: str = "stderr") -> str | None:
        p = logs.job_dir(self.svc.root, job_id) / stream
        try:
            with open(p, "rb") as f:
                f.seek(max(0, p.stat().st_size - 65536))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        found = _OOM_LINE.search(tail)
        return found.group(0).strip()[:300] if found else None

    def _cap_logs(self, rec: JobRecord, suffixes: list[str] | None = None) -> None:
        """Cap the job's streams (an array's: those of its running tasks, `stdout.<i>`) at log_max_bytes."""
        d = logs.job_dir(self.svc.root, rec.id)
        for stream in logs.STREAMS:
            for suffix in suffixes if suffixes is not None else [""]:
                try:
                    logs.cap(d, stream + suffix, self.svc.cfg.log_max_bytes)
                except OSError:
                    pass


def next_info(old: SlurmInfo, job_id: int, restarts: int) -> SlurmInfo:
    """The Slurm side of a job's next attempt: same partition/account/qos; an array's completed tasks stay
    COMPLETED and the others wait again."""
    tasks = {i: ("COMPLETED" if st == "COMPLETED" else "PENDING") for i, st in old.tasks.items()} if old.tasks else None
    return SlurmInfo(job_id=job_id, partition=old.partition, account=old.account, qos=old.qos, restarts=restarts,
                     tasks=tasks)  # fmt: skip


def unfinished_tasks(tasks: dict[str, str]) -> list[int]:
    return sorted(int(i) for i, st in tasks.items() if st != "COMPLETED")


def array_spec(indices: list[int], parallel: int | None) -> str:
    """`--array`'s value for these task indices: runs of consecutive ones as ranges ("0-3", "1,4-6"), and
    "%K" when at most K may run at once."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) + (f"%{parallel}" if parallel else "")


def expand_tasks(text: str) -> list[int]:
    """The task indices in Slurm's `array_task_string` ("1-3%1", "2,5-7", "0-9:2"); [] for ""."""
    out: list[int] = []
    for part in text.split("%")[0].split(","):
        part = part.strip()
        if not part:
            continue
        span, _, step = part.partition(":")
        a, _, b = span.partition("-")
        try:
            out.extend(range(int(a), int(b or a) + 1, int(step or 1)))
        except ValueError:
            continue
    return out


_MEM = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def tres_alloc(tres: dict[str, str]) -> tuple[float | None, int | None, int | None]:
    """(cores, bytes, GPUs) from Slurm's TRES ("cpu=2,mem=50M,gres/gpu=1"); None where it doesn't say."""
    cpu = mem = gpus = None
    try:
        if "cpu" in tres:
            cpu = float(tres["cpu"])
        if "mem" in tres:
            v = tres["mem"].strip().upper()
            mem = int(float(v[:-1]) * _MEM[v[-1]]) if v and v[-1] in _MEM else int(float(v) * 2**20)
        g = tres.get("gres/gpu")
        gpus = int(g) if g is not None else 0
    except (ValueError, KeyError):
        pass
    return cpu, mem, gpus
