"""Whether an ended attempt is tried again, and how: one policy for local and Slurm jobs.

A FAILED attempt retries while it has retries left, unless the job was stopped (a limit, a cancel) or
its exit code is not one of `on_exit_codes` (when that list is set). An OUT_OF_MEMORY attempt retries only
with `oom_mem_factor`, with that much more memory up to `mem_cap` (the pipeline's quota): more of the
same would end the same way. The wait before it doubles per attempt, with ±10 % jitter so that jobs that
failed together don't all come back at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.jobs.record import JobRecord


@dataclass(frozen=True)
class RetryPlan:
    delay_s: float  # from now until the next attempt may start
    mem: int | None  # the next attempt's memory when it grows (OUT_OF_MEMORY), else None: the same


def plan_retry(
    rec: JobRecord, state: str, exit_code: int | None, mem_cap: int | None, stopped: bool
) -> RetryPlan | None:
    """The next attempt of `rec`, which just ended `state`, or None when it is not tried again."""
    j, pol = rec.job, rec.retry
    if j.attempt > pol.max_retries or rec.cancel_requested:
        return None
    delay = pol.backoff_s * (2 ** (j.attempt - 1)) * random.uniform(0.9, 1.1)
    if state == "FAILED" and not stopped:
        if pol.on_exit_codes and exit_code not in pol.on_exit_codes:
            return None
        return RetryPlan(delay, None)
    if state == "OUT_OF_MEMORY" and pol.oom_mem_factor:
        mem = int(j.mem * pol.oom_mem_factor)
        if mem_cap is not None:
            mem = min(mem, mem_cap)
        if mem <= j.mem:
            return None
        return RetryPlan(delay, mem)
    return None
