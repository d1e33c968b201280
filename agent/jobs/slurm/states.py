"""Slurm's job states and reasons in our words (agent/schemas/jobs.py: JobState, PendingReason).

Most names are the same (we took them from Slurm). Where Slurm has a state we lack, the nearest of
ours is chosen and Slurm's word is kept in the reason, so nothing is hidden from the person on call:
- PREEMPTED -> CANCELLED ("preempted by Slurm"); DEADLINE -> TIMEOUT; BOOT_FAIL -> FAILED.
- NODE_FAIL -> LOST: the node died under the job, and how the job ended is not known.
- SUSPENDED -> RUNNING ("suspended"): it holds its allocation. SPECIAL_EXIT (requeued and held after
  an exit code the site marked special) -> PENDING ("Held (Slurm: SPECIAL_EXIT)").
- A flag that means "not over yet" keeps the job active: COMPLETING -> RUNNING ("completing"), until
  Slurm has released the node; CONFIGURING -> PENDING ("Configuring"): allocated, not launched.
PENDING reasons we share (Resources, Priority, Dependency, DependencyNeverSatisfied; JobHeldUser/JobHeldAdmin
-> Held) use our word; every other reason is Slurm's, as it is (ReqNodeNotAvail, QOS...).
A state we don't know maps to None: the caller keeps what it knew and says Slurm's word.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.jobs.slurm.squeue import SlurmJob

FINAL = frozenset({"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST"})

PENDING_REASONS = {
    "Resources": "Resources",
    "Priority": "Priority",
    "Dependency": "Dependency",
    "DependencyNeverSatisfied": "DependencyNeverSatisfied",
    "JobHeldUser": "Held",
    "JobHeldAdmin": "Held",
}


@dataclass(frozen=True)
class Mapped:
    state: str | None  # one of our JobState names; None: a Slurm state we don't know
    reason: str
    exit_code: int | None = None
    signal: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL


def map_job(job: SlurmJob) -> Mapped:
    """Our state and reason for what Slurm reports about `job`."""
    flags = set(job.flags)
    base = job.state
    if "REQUEUED" in flags or (base == "" and "REQUEUE_FED" in flags):
        return Mapped("REQUEUED", _with_slurm("requeued by Slurm", job.reason))
    if "REQUEUE_HOLD" in flags or "RESV_DEL_HOLD" in flags:
        return Mapped("PENDING", "Held")
    if "SPECIAL_EXIT" in flags:  # requeued and held after an exit code the site marked special
        return Mapped("PENDING", "Held (Slurm: SPECIAL_EXIT)", job.exit_code, job.signal)
    if "CONFIGURING" in flags:
        return Mapped("PENDING", "Configuring")
    if "COMPLETING" in flags:
        return Mapped("RUNNING", "completing", job.exit_code, job.signal)
    if base == "" and "REVOKED" in flags:
        return Mapped("CANCELLED", "revoked by Slurm (ran on another cluster of the federation)")
    if base == "PENDING":
        return Mapped("PENDING", pending_reason(job.reason))
    if base == "RUNNING":
        return Mapped("RUNNING", "")
    if base == "SUSPENDED":
        return Mapped("RUNNING", "suspended")
    return _ended_state(base, job)


def pending_reason(slurm_reason: str) -> str:
    """Our PendingReason where we have one, else Slurm's reason as it is."""
    return PENDING_REASONS.get(slurm_reason, slurm_reason)


def _ended_state(base: str, job: SlurmJob) -> Mapped:
    rc, sig = job.exit_code, job.signal
    if base == "COMPLETED":
        return Mapped("COMPLETED", "", rc if rc is not None else 0, None)
    if base == "FAILED":
        return Mapped("FAILED", _ended(job), rc, sig)
    if base == "OUT_OF_MEMORY":
        mem = job.tres_alloc.get("mem") or job.tres_req.get("mem")
        return Mapped("OUT_OF_MEMORY", f"memory limit {mem} reached (Slurm)" if mem else "memory limit reached (Slurm)")
    if base == "TIMEOUT":
        return Mapped("TIMEOUT", _limit_text(job), rc, sig)
    if base == "DEADLINE":
        return Mapped("TIMEOUT", "deadline reached (Slurm DEADLINE)", rc, sig)
    if base == "CANCELLED":
        return Mapped("CANCELLED", "cancelled in Slurm", rc, sig)
    if base == "PREEMPTED":
        return Mapped("CANCELLED", "preempted by Slurm", rc, sig)
    if base == "BOOT_FAIL":
        return Mapped("FAILED", f"node {job.nodes or '?'} failed to boot (Slurm BOOT_FAIL)", rc, sig)
    if base == "NODE_FAIL":
        where = f" {job.nodes}" if job.nodes else ""
        return Mapped("LOST", f"node{where} failed under the job (Slurm NODE_FAIL): how it ended is not known")
    shown = "+".join(job.states) or "none"
    return Mapped(None, f"unknown Slurm state {shown}")


def _ended(job: SlurmJob) -> str:
    parts = []
    if job.signal:
        parts.append(f"killed by signal {job.signal}")
    elif job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    text = ", ".join(parts) or "failed"
    # NonZeroExitCode only repeats the exit code; anything else (JobLaunchFailure, e.g. an
    # over-memory kill without task/cgroup) is Slurm's own account and is kept.
    return _with_slurm(text, "" if job.reason == "NonZeroExitCode" else job.reason)


def _limit_text(job: SlurmJob) -> str:
    if job.time_limit_s is None:
        return "time limit reached (Slurm)"
    return f"time limit {job.time_limit_s:g} s reached"


def _with_slurm(text: str, slurm_reason: str) -> str:
    return f"{text} (Slurm: {slurm_reason})" if slurm_reason else text
