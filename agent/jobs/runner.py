"""The runner: one thread that ticks every `[jobs] tick` (100 ms) and at once on submit, cancel, a quota
change or a job's wrapper exiting (`exits.ExitWatcher`). Each tick: watch running jobs (ended? cancel, time
limit, memory, GPU memory), sample usage every `usage_interval`, admit pending jobs and launch them.

A launch is on record before the wrapper is spawned (`launching`), the handle is written to
`<job dir>/handle.json` and saved (journaled) with state RUNNING after; a restart never starts a job twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from agent.jobs import logs
from agent.jobs.exits import ExitWatcher
from agent.jobs.placement import place
from agent.jobs.queue import admit, invalid_dependency
from agent.jobs.record import JobRecord
from agent.jobs.retry import plan_retry
from agent.jobs.service import JobService, next_attempt
from agent.jobs.store import StoreUnavailable
from agent.jobs.tiers.base import JobHandle, LaunchSpec, Limits, Outcome
from agent.jobs.usage import Sampler

log = logging.getLogger("watchkeeper.jobs")

# How often a tier that enforces by watching (psutil: `check_limits`) looks at each job's memory: a walk of
# the job's process tree costs ~1 ms, too much for every 100 ms tick with many jobs running.
LIMITS_INTERVAL_S = 0.25
MIN_TICK_GAP_S = 0.01
# A running job whose wrapper's exit is watched is still polled this often: a backstop, should a pidfd
# event ever be missed.
POLL_BACKSTOP_S = 1.0
AGENT_NAME = "watchkeeper-agent"  # who cancelled a job the agent ended itself (kill_on_invalid_dep)


class Runner:
    def __init__(self, svc: JobService) -> None:
        self.svc = svc
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobs-runner", daemon=True)
        self._sampler = Sampler(svc)
        self._next_sample = 0.0
        self._next_sweep = 0.0
        self._next_check = 0.0
        self._next_poll = 0.0  # the next backstop poll of jobs whose exit is watched
        self._limited: set[str] = set()  # pipelines whose tier limits are set
        self._ended: list[tuple[str, JobHandle]] = []  # ended jobs' handles, released after their end is saved
        self._dirty: set[str] = set()  # pipelines whose quota changed since
        self.ticks = 0
        self.last_error: str | None = None
        # A job's end seen when its wrapper exits, not at the next tick (an isolated pipeline step
        # waited up to a tick per step).
        self.exits = ExitWatcher(self.wake)

    def start(self) -> None:
        set_jobs = getattr(self.svc.tier, "set_jobs_limits", None)
        if set_jobs is not None:
            try:
                set_jobs(Limits(cpu=self.svc.host.cpu, mem=self.svc.host.mem), idle=self.svc.cfg.cpu_idle)
            except Exception as e:
                log.error("jobs: could not set the jobs root's limits: %s", e)
        self.exits.start()
        with self.svc.lock:  # re-adopted at start: watched like the ones launched from now on
            adopted = [r.handle.pid for r in self.svc.jobs.values() if r.state == "RUNNING" and r.handle is not None]
        for pid in adopted:
            self.exits.watch(pid)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.exits.close()

    def wake(self) -> None:
        self._wake.set()

    def quota_changed(self, pipeline: str) -> None:
        """A quota moved: its pipeline's tier limits are set again on the runner thread, at the next tick."""
        with self.svc.lock:
            self._dirty.add(pipeline)
        self.wake()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.svc.cfg.tick)
            # A burst of submits wakes the runner once per submit; ticks at most every MIN_TICK_GAP_S let
            # the submits of a few milliseconds share one admission pass (each pass looks at every
            # pending job), for at most that much more latency to RUNNING.
            gap = last + MIN_TICK_GAP_S - time.monotonic()
            if gap > 0:
                self._stop.wait(gap)
            self._wake.clear()
            last = time.monotonic()
            if self._stop.is_set():
                return
            try:
                self.tick()
                self.last_error = None
            except Exception as e:  # one bad tick must not end the runner
                self.last_error = str(e)
                log.exception("jobs runner tick failed")
                time.sleep(0.5)

    # ------------------------------------------------------------------ one tick

    def tick(self) -> None:
        self.ticks += 1
        svc = self.svc
        now = time.time()
        with svc.lock:
            dirty, self._dirty = self._dirty, set()
        for pipeline in dirty:
            self._limited.discard(pipeline)
            self._pipeline_limits(pipeline)
        # Launch first: a submit's latency to RUNNING must not wait behind watching every running job.
        self._admit_and_launch(now)
        new_tick = getattr(svc.tier, "new_tick", None)  # psutil: one /proc scan for every job this tick
        if new_tick is not None:
            new_tick()
        with svc.lock:
            running = [r for r in svc.live_records() if r.state == "RUNNING" and r.handle is not None]
        changed: list[JobRecord] = []
        check = time.monotonic() >= self._next_check
        if check:
            self._next_check = time.monotonic() + LIMITS_INTERVAL_S
        # A job whose wrapper's exit is watched (a pidfd) is polled when it exited, while it is being
        # stopped, and once per POLL_BACKSTOP_S besides; the others every tick. 50 running jobs polled every
        # tick cost the agent ~1 % of a core for nothing.
        exited = self.exits.take_exited()
        backstop = time.monotonic() >= self._next_poll
        if backstop:
            self._next_poll = time.monotonic() + POLL_BACKSTOP_S
        for rec in running:
            assert rec.handle is not None
            pid = rec.handle.pid
            poll = backstop or pid in exited or rec.stopping is not None or rec.cancel_requested is not None
            try:
                self._watch(rec, now, changed, check, poll or not self.exits.watching(pid))
            except Exception as e:  # one job the tier can't read must not stop the watch of the others
                self.last_error = f"job {rec.id}: {e}"
                log.exception("jobs: watching %s failed", rec.id)
        # A tier that scans /proc per tick (psutil) samples on a limit-check tick, sharing that tick's scan.
        if time.monotonic() >= self._next_sample and (check or new_tick is None):
            self._next_sample = time.monotonic() + svc.cfg.usage_interval
            self._sampler.sample([r for r in running if r.state == "RUNNING"], changed)
        if changed:
            self._save(changed)
            self._release_ended()
            if any(r.final for r in changed):
                self._admit_and_launch(time.time())  # what the ended jobs held is free now
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + 60.0
            with svc.lock:
                ended = {r.id: r.job.ended_at for r in svc.jobs.values() if r.final and r.job.ended_at}
            logs.sweep(svc.root, ended, svc.cfg.log_retention)
            # Finished jobs past the retention leave memory too (the store keeps them; GET still finds them).
            svc.evict(time.time() - svc.cfg.log_retention)

    def _watch(self, rec: JobRecord, now: float, changed: list[JobRecord], check: bool, poll: bool = True) -> None:
        svc, h = self.svc, rec.handle
        assert h is not None
        out = svc.tier.poll(h) if poll else None
        if out is not None:
            self._finish(rec, out, changed)
            return
        grace = svc.cfg.terminate_grace
        if rec.cancel_requested and rec.stopping != "cancel":
            rec.stopping = "cancel"
            svc.tier.terminate(h, grace)
            changed.append(rec)
        elif rec.stopping is None and _over_time(rec, now):
            rec.stopping, rec.stop_reason = "timeout", f"time limit {rec.job.time_limit:g} s reached"
            svc.tier.terminate(h, grace)
            changed.append(rec)
        check_limits = getattr(svc.tier, "check_limits", None)
        if check and check_limits is not None and rec.stopping in (None, "timeout"):
            why = check_limits(h)
            if why:
                rec.stopping, rec.stop_reason = "mem", why
                changed.append(rec)

    def _finish(self, rec: JobRecord, out: Outcome, changed: list[JobRecord]) -> None:
        svc, j = self.svc, rec.job
        self._sampler.final(rec)
        state, reason = outcome_state(rec, out)
        retry = self._retry_of(rec, state, out)
        # Before the end is published: a reader told the job ended finds its output already held to the cap.
        d = logs.job_dir(svc.root, rec.id)
        for stream in logs.STREAMS:  # a job that ended between two samples is held to the cap too
            try:
                logs.cap(d, stream, svc.cfg.log_max_bytes)
            except OSError as e:
                log.warning("job %s: could not cap %s: %s", rec.id, stream, e)
        with svc.lock:
            j.state, j.exit_code, j.signal = state, out.exit_code, out.signal  # type: ignore[assignment]
            j.reason = reason + (f" (retried as attempt {retry.job.attempt})" if retry is not None else "")
            if state == "CANCELLED":
                j.cancelled_by = rec.cancel_requested
            j.ended_at = out.ended_at or time.time()
            if j.started_at is not None:
                j.elapsed_s = max(0.0, j.ended_at - j.started_at)
            svc.finished_total[(j.pipeline, state)] += 1
            svc.version += 1
            changed.append(rec)
            if retry is not None:
                svc.put(retry)
                changed.append(retry)
            svc.changed.notify_all()
        if rec.handle is not None:
            # Released once the end is saved (`_release_ended`): a crash before the save re-adopts the job from
            # its cgroup, which still says whether the kernel OOM-killed it.
            self._ended.append((rec.id, rec.handle))

    def _release_ended(self) -> None:
        ended, self._ended = self._ended, []
        for job_id, h in ended:
            try:
                self.svc.tier.release(h)
            except Exception as e:
                log.warning("job %s: tier release failed: %s", job_id, e)

    def _retry_of(self, rec: JobRecord, state: str, out: Outcome) -> JobRecord | None:
        quota = self.svc.quotas.spec(rec.job.pipeline)
        cap = min(quota.mem or self.svc.host.mem, self.svc.host.mem)
        plan = plan_retry(rec, state, out.exit_code, cap, stopped=rec.stopping is not None)
        if plan is None:
            return None
        now = time.time()
        return next_attempt(rec, now, "BeginTime", eligible_at=now + plan.delay_s if plan.delay_s else None,
                            mem=plan.mem)  # fmt: skip

    # ------------------------------------------------------------------ admission and launch

    def _admit_and_launch(self, now: float) -> None:
        svc = self.svc
        from agent.jobs.service import gpu_inventory

        inventory = gpu_inventory(svc.snapshot())
        with svc.lock:
            # Slurm schedules its own jobs (backend "slurm"): they never pass our admission.
            active = [r for r in svc.live_records() if r.active and r.job.backend != "slurm"]
            if not any(r.state == "PENDING" and not r.launching for r in active):
                return
            decision = admit(active, svc.quotas.spec, svc.host, inventory, svc.state_of, now)
            moved = False
            killed: list[JobRecord] = []
            for r in active:
                why = decision.waiting.get(r.id)
                if why == "DependencyNeverSatisfied" and r.job.kill_on_invalid_dep:
                    # Slurm's --kill-on-invalid-dep: ended here, with the dependency that failed it named.
                    r.job.state, r.job.ended_at = "CANCELLED", time.time()
                    r.job.reason = f"DependencyNeverSatisfied: {invalid_dependency(r, svc.state_of)}"
                    r.job.cancelled_by = AGENT_NAME
                    svc.finished_total[(r.job.pipeline, "CANCELLED")] += 1
                    killed.append(r)
                    moved = True
                elif why is not None and r.job.reason != why:
                    r.job.reason = why
                    moved = True
            starting = []
            placed = [(r.job.cpus, r.job.cpu) for r in active if r.job.cpus and (r.state == "RUNNING" or r.launching)]
            for rec, gpus in decision.start:
                rec.launching = True
                rec.job.gpus = gpus
                rec.job.cpus = place(rec.job.cpu, svc.host.cpu_ids, placed)
                if rec.job.cpus:
                    placed.append((rec.job.cpus, rec.job.cpu))
                rec.job.tier = svc.tier.name  # type: ignore[assignment]
                rec.job.reason = ""
                starting.append(rec)
            if moved:
                svc.version += 1
            if killed:
                svc.changed.notify_all()
        if killed:
            self._save(killed)
        if not starting:
            return
        if not self._save(starting):
            with svc.lock:
                for rec in starting:
                    rec.launching = False
            return
        for rec in starting:
            self._launch(rec)
        self._save(starting)
        with svc.lock:
            svc.changed.notify_all()

    def _launch(self, rec: JobRecord) -> None:
        svc, j = self.svc, rec.job
        self._pipeline_limits(j.pipeline)
        d = logs.ensure_dir(svc.root, rec.id)
        quota = svc.quotas.spec(j.pipeline)
        spec = LaunchSpec(
            job_id=rec.id, pipeline=j.pipeline, argv=j.command, env=svc.job_env(rec),
            workdir=j.workdir or work_dir(d, svc.cfg.run_as), stdout_path=d / "stdout", stderr_path=d / "stderr",
            rc_path=d / "rc", limits=Limits(cpu=j.cpu, mem=j.mem, pids=svc.cfg.max_pids),
            cpu_weight=_weight(quota.priority), cpus=tuple(j.cpus or ()), user=svc.cfg.run_as,
        )  # fmt: skip
        try:
            (d / "rc").unlink(missing_ok=True)  # an earlier attempt's status is not this one's
            h = svc.tier.launch(spec)
            _write_handle(d, h.to_json())
        except Exception as e:
            with svc.lock:
                rec.launching = False
                j.state, j.reason, j.ended_at = "FAILED", f"could not start: {e}", time.time()  # type: ignore[assignment]
                svc.finished_total[(j.pipeline, "FAILED")] += 1
                svc.version += 1
            return
        with svc.lock:
            rec.handle, rec.launching = h, False
            j.state, j.pid, j.started_at = "RUNNING", h.pid, h.started_at or time.time()  # type: ignore[assignment]
            j.wait_s = max(0.0, j.started_at - j.submitted_at)
            svc.version += 1
        self.exits.watch(h.pid)

    def _pipeline_limits(self, pipeline: str) -> None:
        if pipeline in self._limited:
            return
        self._limited.add(pipeline)
        setter = getattr(self.svc.tier, "set_pipeline_limits", None)
        if setter is None:
            return
        q = self.svc.quotas.spec(pipeline)
        mem = q.mem
        try:
            setter(pipeline, Limits(cpu=q.cpu, mem=mem), _weight(q.priority))
        except Exception as e:
            log.error("jobs: could not set pipeline %s's limits: %s", pipeline, e)

    def _save(self, recs: list[JobRecord]) -> bool:
        try:
            self.svc.store.save(recs)
            return True
        except StoreUnavailable as e:
            log.error("jobs: %s", e)
            return False


def outcome_state(rec: JobRecord, out: Outcome) -> tuple[str, str]:
    """The final state and its words, from how the job ended and why the runner was stopping it."""
    j = rec.job
    if rec.stopping == "cancel":
        who = rec.cancel_requested or "?"
        return "CANCELLED", f"cancelled by {who}" + (f": {rec.cancel_note}" if rec.cancel_note else "")
    if out.oom or rec.stopping == "mem":
        return "OUT_OF_MEMORY", rec.stop_reason or f"memory limit {_size(j.mem)} reached"
    if rec.stopping == "timeout":
        return "TIMEOUT", rec.stop_reason
    if rec.stopping == "gpu_mem":
        return "FAILED", rec.stop_reason
    if out.lost:
        return "LOST", out.lost
    if out.exit_code == 0:
        return "COMPLETED", ""
    if out.exit_code is not None:
        return "FAILED", f"exit code {out.exit_code}"
    if out.signal is not None:
        return "FAILED", f"killed by signal {out.signal}"
    return "FAILED", "ended without an exit status"


def _over_time(rec: JobRecord, now: float) -> bool:
    j = rec.job
    return bool(j.time_limit and j.started_at and now - j.started_at > j.time_limit)


def _weight(priority: int) -> int:
    return max(1, min(10_000, 100 + priority))


def _write_handle(d, text: str) -> None:
    tmp = d / ".handle.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, d / "handle.json")


def _size(n: int) -> str:
    """Bytes as the person on call reads them (the schemas' binary units): "128 MiB", "1.5 GiB"."""
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def work_dir(job_dir: Path, run_as: str | None) -> str:
    """A job's default working dir: its own dir, or, for a job run as another account, a `work/` inside it
    owned by that account (the job dir holds the rc file and handle the agent trusts: not the job's to write)."""
    if run_as is None:
        return str(job_dir)
    import pwd

    pw = pwd.getpwnam(run_as)
    work = job_dir / "work"
    work.mkdir(mode=0o700, exist_ok=True)
    os.chown(work, pw.pw_uid, pw.pw_gid)
    os.chmod(job_dir, 0o711)  # the account may pass through to its work dir, not list or write the job dir
    return str(work)
