"""The jobs view's rows and texts as plain values, shared by the TUI and `watchkeeper jobs`. No Textual.

One row per (agent, job): the jobs each agent listed in its last answer (active ones first, then the
newest that ended). Order: running, then pending, then the ended ones, newest first; the screen can sort
by a column instead. A job whose agent no longer answers (or whose jobs could not be read) keeps its row,
marked stale: its last known state, never silently dropped, never shown as current.

Times in a `Job` are on its agent's clock; `now` is "now" on that clock (poll time + clock offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.schemas import JOB_FINAL_STATES as FINAL_STATES
from agent.schemas import Job, cpu_list
from console.core.feeds import FeedState, is_outage
from console.core.poller import AgentStatus, FleetStatus
from console.core.rows import KEY_SEP, MISSING, AgentItemRow, Column, fmt_age, fmt_bytes, render_columns
from console.jobs.client import jobs_feed

COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("pipeline", "PIPELINE"),
    Column("job", "JOB"),
    Column("state", "STATE"),
    Column("reason", "REASON"),
    Column("elapsed", "ELAPSED/LIMIT", numeric=True),
    Column("cpu", "CPU/REQ", numeric=True),
    Column("mem", "MEM/REQ", numeric=True),
    Column("gpus", "GPUS", numeric=True),
)
# The screen's order: what is wrong (state, reason) before the numbers, so a narrow terminal cuts numbers.
SCREEN_ORDER = ("host", "pipeline", "job", "state", "reason", "elapsed", "cpu", "mem", "gpus")
REASON_WIDTH = 24  # the screen's REASON cell; the whole reason is in the detail panel and `jobs show`

STATE_RANK = {"RUNNING": 0, "PENDING": 1, "REQUEUED": 2}
PROBLEM_STATES = frozenset({"FAILED", "OUT_OF_MEMORY", "TIMEOUT", "LOST"})
STATE_STYLE = {
    "RUNNING": "bold green",
    "PENDING": "yellow",
    "REQUEUED": "cyan",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "OUT_OF_MEMORY": "bold red",
    "TIMEOUT": "bold red",
    "LOST": "bold magenta",
    "CANCELLED": "dim",
}
# Why a PENDING job waits, in words (the Slurm name stays in the table: it is what `squeue` says).
PENDING_WORDS = {
    "QuotaCpu": "its pipeline's CPU quota is in use",
    "QuotaMemory": "its pipeline's memory quota is in use",
    "QuotaGpu": "its pipeline's GPU quota is in use",
    "QuotaJobs": "its pipeline runs its maximum number of jobs",
    "Resources": "the host has no room for it now",
    "Priority": "another pipeline's job is ahead of it",
    "Dependency": "waiting for the jobs it depends on",
    "DependencyNeverSatisfied": "a dependency ended without completing: it never starts (cancel it, or requeue that)",
    "Held": "held: it starts only when released",
    "BeginTime": "a retry waiting out its backoff",
}


def job_key(agent: str, job_id: str) -> str:
    """The table key of one job of one agent."""
    return f"{agent}{KEY_SEP}{job_id}"


def fmt_cores(value: float | None) -> str:
    """Cores, short and exact enough for a request: '0.75', '0.5', '2', '12'."""
    if value is None:
        return MISSING
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.0f}"


def fmt_gib(value: float | None) -> str:
    """Bytes as GiB, short: '0.25G', '1.5G', '12G'."""
    if value is None:
        return MISSING
    g = value / 2**30
    return f"{g:.2f}G" if g < 1 else f"{g:.1f}G" if g < 10 else f"{g:.0f}G"


def state_reason(job: Job) -> str:
    """The reason beside a job's state: why it waits, its exit code, who cancelled it, why it was lost."""
    match job.state:
        case "PENDING":
            return job.reason or MISSING
        case "FAILED":
            code = f"exit code {job.exit_code}" if job.exit_code is not None else ""
            sig = f"signal {job.signal}" if job.signal is not None else ""
            said = job.reason if job.reason and job.reason not in (code, sig) and "exit code" not in job.reason else ""
            return ", ".join(p for p in (code, sig, said) if p) or job.reason or "failed"
        case "CANCELLED":
            by = f"by {job.cancelled_by}" if job.cancelled_by else ""
            if job.reason and job.cancelled_by and job.cancelled_by in job.reason:
                return job.reason
            return ", ".join(p for p in (by, job.reason) if p) or "cancelled"
        case "COMPLETED":
            return "exit code 0" if job.exit_code in (0, None) else f"exit code {job.exit_code}"
        case "RUNNING" if job.progress is not None and not job.reason:
            return progress_text(job.progress)
    return job.reason


def progress_text(p: Any) -> str:
    """A running job's own progress report (batch transform: rows), short enough for the REASON cell."""
    share = f"{p.done / p.total * 100:.0f}% " if p.total else ""
    rate = f" {p.rate_per_s / 1000:.0f}k {p.unit}/s" if p.rate_per_s else ""
    eta = f" ETA {int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}" if p.eta_s is not None else ""
    return f"{share}{p.done:,} {p.unit}{rate}{eta}"


@dataclass(frozen=True)
class JobRow(AgentItemRow):
    """One job of one agent, as last seen."""

    job: Job
    now: float  # "now" on the agent's clock
    stale: bool = False  # the agent is not answering (or its jobs could not be read): last known state

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def ended(self) -> bool:
        return self.job.state in FINAL_STATES

    @property
    def elapsed_s(self) -> float | None:
        """Seconds it ran (so far), or for a pending job how long it has waited."""
        j = self.job
        if j.state == "PENDING":
            return max(0.0, self.now - j.submitted_at)
        if j.started_at is None:
            return j.elapsed_s
        if j.state == "RUNNING" and not self.stale:
            return max(0.0, self.now - j.started_at)
        if j.elapsed_s is not None:
            return j.elapsed_s
        end = j.ended_at if j.ended_at is not None else self.now
        return max(0.0, end - j.started_at)

    @property
    def gpu_count(self) -> int:
        return len(self.job.gpus) or self.job.gpus_requested

    def blocked(self, action: str) -> str | None:
        """Why `action` (cancel, requeue) can't apply to this job now (the agent has the last word), or None."""
        if self.stale:
            return f"{self.host} is not answering; try again when it is back"
        if action == "cancel" and self.ended:
            return f"it has ended ({self.job.state})"
        if action == "requeue" and not self.ended:
            return f"it is {self.job.state}; only an ended job is requeued"
        return None

    def text(self, column: str) -> str:
        """The display text of one column."""
        j = self.job
        match column:
            case "host":
                return self.host
            case "pipeline":
                return j.pipeline
            case "job":
                return j.id + (f" #{j.attempt}" if j.attempt > 1 else "")
            case "state":
                return f"{j.state}?" if self.stale and not self.ended else j.state
            case "reason":
                why = state_reason(j)
                return f"(host not answering) {why}".strip() if self.stale and not self.ended else why
            case "elapsed":
                elapsed = self.elapsed_s
                text = ("wait " if j.state == "PENDING" else "") + fmt_age(elapsed)
                return f"{text}/{fmt_age(j.time_limit)}" if j.time_limit else text
            case "cpu":
                used = j.cpu_now if j.state == "RUNNING" else None
                return f"{fmt_cores(used)}/{fmt_cores(j.cpu)}"
            case "mem":
                used = j.rss_bytes if j.state == "RUNNING" else j.peak_rss_bytes
                return f"{fmt_gib(used)}/{fmt_gib(j.mem)}"
            case "gpus":
                if not self.gpu_count:
                    return MISSING
                peaks = [g.peak_mem_bytes for g in j.gpu_use if g.peak_mem_bytes is not None]
                if not peaks and j.gpu_mem is None:
                    return str(self.gpu_count)
                # GPU memory: the peak of its busiest GPU against the per-GPU request.
                return f"{self.gpu_count} {fmt_gib(max(peaks) if peaks else None)}/{fmt_gib(j.gpu_mem)}"
        raise KeyError(column)

    def sort_value(self, column: str) -> Any:
        """A value to sort `column` by; None means "no value" (the caller puts those last)."""
        j = self.job
        match column:
            case "host":
                return self.host.lower()
            case "pipeline":
                return j.pipeline
            case "job":
                return j.id
            case "state":
                return self.sort_key()[:2]
            case "reason":
                return state_reason(j) or None
            case "elapsed":
                return self.elapsed_s
            case "cpu":
                return j.cpu_now if j.state == "RUNNING" else None
            case "mem":
                return j.rss_bytes if j.state == "RUNNING" else None
            case "gpus":
                return self.gpu_count or None
        raise KeyError(column)

    def sort_key(self) -> tuple[Any, ...]:
        """Running, then pending (oldest first: the head of the queue), then ended ones, newest first."""
        j = self.job
        if j.state in STATE_RANK:
            return (STATE_RANK[j.state], j.submitted_at, self.order, j.id)
        return (len(STATE_RANK), -(j.ended_at or j.submitted_at), self.order, j.id)

    def matches_text(self) -> str:
        """What the `/` filter searches."""
        j = self.job
        command = " ".join(j.command)
        parts = (self.host, j.pipeline, j.id, j.name or "", j.state, state_reason(j), j.submitted_by, command)
        return " ".join(p for p in parts if p) + (" stale" if self.stale else "")

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form: the agent's job plus where it came from."""
        data = self.job.model_dump(mode="json")
        data.update(agent=self.agent, host=self.host, stale=self.stale)
        return data


def rows_of_agent(agent: AgentStatus, order: int, polled_at: float) -> list[JobRow]:
    """One agent's job rows (stale when it does not answer or its jobs could not be read)."""
    feed = jobs_feed(agent)
    if feed is None:
        return []
    now = polled_at + agent.clock_offset_s
    stale = is_outage(agent) or feed.state is FeedState.ERROR
    return [JobRow(job_key(agent.name, j.id), agent.name, order, agent.label, j, now, stale) for j in feed.jobs]


def job_rows(status: FleetStatus) -> list[JobRow]:
    """Every agent's jobs, sorted (see the module docstring)."""
    rows = [r for order, agent in enumerate(status.agents) for r in rows_of_agent(agent, order, status.polled_at)]
    return sorted(rows, key=JobRow.sort_key)


def sort_rows(rows: list[JobRow], column: str | None, reverse: bool = False) -> list[JobRow]:
    """By a column (missing values last, ties in the default order), else the default order."""
    if column is None:
        return sorted(rows, key=JobRow.sort_key)
    present = [r for r in rows if r.sort_value(column) is not None]
    missing = [r for r in rows if r.sort_value(column) is None]
    present.sort(key=lambda r: (r.sort_value(column), r.sort_key()), reverse=reverse)
    return present + sorted(missing, key=JobRow.sort_key)


def job_counts(status: FleetStatus) -> dict[str, int]:
    """Running, pending and problem (failed, OOM, timeout, lost) jobs across the fleet, as listed."""
    counts = {"running": 0, "pending": 0, "problems": 0}
    for agent in status.agents:
        feed = jobs_feed(agent)
        for j in feed.jobs if feed else ():
            if j.state == "RUNNING":
                counts["running"] += 1
            elif j.state == "PENDING":
                counts["pending"] += 1
            elif j.state in PROBLEM_STATES:
                counts["problems"] += 1
    return counts


def render_jobs(rows: Sequence[JobRow]) -> str:
    """Plain aligned text of the jobs table (`watchkeeper jobs list`)."""
    return render_columns(COLUMNS, [[r.text(c.key) for c in COLUMNS] for r in rows])


def detail_lines(row: JobRow) -> list[str]:
    """Everything about one job, a fact a line (the detail panel and `jobs show`)."""
    j = row.job
    head = f"{j.id} on {row.host}" + (f"  ({j.name})" if j.name else "")
    lines = [head + (" — STALE: host not answering, last known" if row.stale else "")]
    lines.append(f"pipeline {j.pipeline}  ·  attempt {j.attempt}/{j.max_retries + 1}  ·  tier {j.tier or MISSING}")
    state = f"state {j.state}"
    why = state_reason(j)
    if why and why != MISSING:
        state += f": {why}"
    if j.state == "PENDING" and j.reason in PENDING_WORDS:
        state += f" ({PENDING_WORDS[j.reason]})"
    lines.append(state)
    command = " ".join(j.command)
    lines.append(f"command {'(shell) ' if j.shell else ''}{command}")
    if j.workdir:
        lines.append(f"workdir {j.workdir}")
    lines.append(f"submitted by {j.submitted_by}" + (f": {j.submit_reason}" if j.submit_reason else ""))
    if j.cancelled_by:
        lines.append(f"cancelled by {j.cancelled_by}")
    limit = f" of {fmt_age(j.time_limit)}" if j.time_limit else " (no time limit)"
    wait = f"  ·  waited {fmt_age(j.wait_s)}" if j.wait_s is not None else ""
    lines.append(f"elapsed {fmt_age(row.elapsed_s)}{limit}{wait}")
    gpus = f"  ·  gpus {', '.join(j.gpus) if j.gpus else j.gpus_requested or 0}"
    pinned = f" on CPU {cpu_list(j.cpus)}" if j.cpus else ""
    lines.append(f"request cpu {j.cpu:g}{pinned}  ·  mem {fmt_bytes(j.mem)}{gpus}")
    cpu_s = f"{j.cpu_seconds:.0f}" if j.cpu_seconds is not None else MISSING
    lines.append(
        f"use cpu now {fmt_cores(j.cpu_now)}  ·  cpu-s {cpu_s}  ·  rss {fmt_bytes(j.rss_bytes)}"
        f"  ·  peak {fmt_bytes(j.peak_rss_bytes)}"
    )
    for g in j.gpu_use:
        secs = f"{g.seconds:.0f}" if g.seconds is not None else MISSING
        lines.append(f"gpu {g.uuid}: gpu-s {secs}  ·  peak mem {fmt_bytes(g.peak_mem_bytes)}")
    if j.exit_code is not None or j.signal is not None:
        code = j.exit_code if j.exit_code is not None else MISSING
        lines.append(f"exit code {code}" + (f", signal {j.signal}" if j.signal else ""))
    if j.depends_on:
        lines.append(f"after {', '.join(j.depends_on)}")
    return lines


def log_task(job: Job) -> int | None:
    """Whose output a job array's log pane shows: its first running task, else its first not completed, else
    task 0 (each task writes its own); None for a job that is not an array."""
    if not job.array:
        return None
    tasks = (job.slurm.tasks if job.slurm is not None else None) or {}
    order = sorted(tasks, key=int)
    for want in ("RUNNING", None):
        for i in order:
            if (tasks[i] == "RUNNING") if want else tasks[i] != "COMPLETED":
                return int(i)
    return 0
