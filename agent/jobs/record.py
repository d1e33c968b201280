"""A job as the queue holds it: the wire `Job` plus what only the executor needs, and its store row.

The wire model (`agent.schemas.jobs.Job`) is the record's public face; `JobRecord` adds the retry
policy, the hold flag, the launch record and the tier's handle, and what the runner has decided about a
running job (a cancel, a time limit reached, a limit breached) until the job has actually ended.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from agent.jobs.tiers.base import JobHandle
from agent.schemas.jobs import ACTIVE_STATES, FINAL_STATES, Job, RetryPolicy

# The store row's columns, in `JobRecord.row()` order (table `jobs`, migration 5).
JOB_COLUMNS = (
    "id", "attempt", "pipeline", "state", "reason", "exit_code", "submitted_at", "started_at", "ended_at",
    "updated_at", "job", "spec", "handle",
)  # fmt: skip

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32: sortable, no i/l/o/u
_id_lock = threading.Lock()
_last_id = 0


def new_job_id(now: float | None = None) -> str:
    """`j-` + 10 base32 digits of (milliseconds << 4 | counter): sortable by submit time, unique per agent."""
    global _last_id
    n = int((now if now is not None else time.time()) * 1000) << 4
    with _id_lock:
        n = max(n, _last_id + 1)
        _last_id = n
    digits = []
    for _ in range(10):
        digits.append(_B32[n & 31])
        n >>= 5
    return "j-" + "".join(reversed(digits))


def seen_job_id(job_id: str) -> None:
    """A restored id: new ids must sort after it even if the clock went back."""
    global _last_id
    n = 0
    for ch in job_id.removeprefix("j-"):
        if ch not in _B32:
            return
        n = n * 32 + _B32.index(ch)
    with _id_lock:
        _last_id = max(_last_id, n)


@dataclass
class JobRecord:
    job: Job
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hold: bool = False
    gpu_request: list[str] | None = None  # explicit UUIDs asked for (None: a count, `job.gpus_requested`)
    # The launch is on record before the wrapper is spawned: a restart that finds `launching` without a
    # handle can't know whether it started, so it marks the job LOST rather than start it twice.
    launching: bool = False
    handle: JobHandle | None = None
    # Why the runner is stopping a running job ("cancel", "timeout", "gpu_mem", "mem"); with its words.
    stopping: str | None = None
    stop_reason: str = ""
    cancel_requested: str | None = None  # who asked, for a running job the runner must stop
    cancel_note: str = ""
    # Usage bookkeeping (not persisted; refreshed each sample).
    last_cpu: tuple[float, float] | None = None  # (monotonic, cpu_seconds)
    gpu_peaks: dict[str, int] = field(default_factory=dict)
    gpu_seconds: dict[str, float] = field(default_factory=dict)
    gpu_now: dict[str, int] = field(default_factory=dict)  # this sample's bytes per GPU

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def active(self) -> bool:
        return self.job.state in ACTIVE_STATES

    @property
    def final(self) -> bool:
        return self.job.state in FINAL_STATES

    def spec_json(self) -> str:
        return json.dumps(
            {
                "retry": self.retry.model_dump(mode="json"),
                "hold": self.hold,
                "gpu_request": self.gpu_request,
                "launching": self.launching,
                "stopping": self.stopping,
                "stop_reason": self.stop_reason,
                "cancel_requested": self.cancel_requested,
                "cancel_note": self.cancel_note,
                "gpu_peaks": self.gpu_peaks,
                "gpu_seconds": self.gpu_seconds,
            }
        )

    def row(self) -> tuple:
        """The store row (columns JOB_COLUMNS), serialised now: later changes don't leak into it."""
        j = self.job
        return (
            j.id, j.attempt, j.pipeline, j.state, j.reason, j.exit_code, j.submitted_at, j.started_at, j.ended_at,
            time.time(), j.model_dump_json(), self.spec_json(), self.handle.to_json() if self.handle else None,
        )  # fmt: skip

    @classmethod
    def from_row(cls, job: str, spec: str, handle: str | None) -> JobRecord:
        s = json.loads(spec)
        rec = cls(
            job=Job.model_validate_json(job),
            retry=RetryPolicy.model_validate(s.get("retry") or {}),
            hold=bool(s.get("hold")),
            gpu_request=s.get("gpu_request"),
            launching=bool(s.get("launching")),
            handle=JobHandle.from_json(handle) if handle else None,
            stopping=s.get("stopping"),
            stop_reason=s.get("stop_reason") or "",
            cancel_requested=s.get("cancel_requested"),
            cancel_note=s.get("cancel_note") or "",
        )
        rec.gpu_peaks = {k: int(v) for k, v in (s.get("gpu_peaks") or {}).items()}
        rec.gpu_seconds = {k: float(v) for k, v in (s.get("gpu_seconds") or {}).items()}
        return rec
