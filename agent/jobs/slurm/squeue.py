"""What Slurm says about jobs, parsed: `squeue --json`, `scontrol show job -o` and jobcomp/filetxt records.

`squeue --json`'s schema changes between releases, so every field is read tolerantly:
- 22.05 (openapi v0.0.38, Debian 12): `job_state` is one string (a flag such as COMPLETING or
  REQUEUED wins over the base state); numbers are plain (0 = unset for times); `exit_code` is the raw
  wait status (768 = exit 3, 9 = killed by SIGKILL); `time_limit` is minutes or null.
- 23.02+ (v0.0.39+): `job_state` is a list (base state first, then flags); numbers may be
  `{"set": bool, "infinite": bool, "number": n}`; from 23.11 `exit_code` is
  `{"status": [...], "return_code": n, "signal": {"id": n, "name": ...}}`.
A field missing or of an unexpected type reads as unknown (None / ""), never as a wrong value.
22.05 ignores squeue's filters with --json: it lists every job slurmctld still holds, so callers
pick theirs by id (or comment). Finished jobs stay listed for MinJobAge (300 s) only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Slurm's base job states (src/common/slurm_protocol_defs.c job_state_string); anything else is a flag.
BASE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)


class SlurmParseError(ValueError):
    """Slurm's answer could not be read, or Slurm said it failed (its own error text is kept)."""


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm reports it, in Slurm's words. Times are unix seconds; None = not known/not set."""

    job_id: int
    state: str  # the base state ("RUNNING"); "" when Slurm reported only a flag (22.05: "COMPLETING")
    flags: tuple[str, ...] = ()  # "COMPLETING", "REQUEUED", "CONFIGURING", ...
    reason: str = ""  # Slurm's state_reason; "" for its "None"
    exit_code: int | None = None  # the command's exit status, when it exited
    signal: int | None = None  # the signal that ended it, when one did
    array_job_id: int | None = None
    array_task_id: int | None = None
    array_tasks_pending: str = ""  # the still-pending tasks of an array's head record, e.g. "1-3%1"
    name: str = ""
    comment: str = ""
    partition: str = ""
    account: str = ""
    qos: str = ""
    user: str = ""
    nodes: str = ""
    dependency: str = ""  # e.g. "afterok:8(unfulfilled)"
    submit_time: float | None = None
    start_time: float | None = None  # only when it started (a pending job's is Slurm's estimate: dropped)
    end_time: float | None = None  # only when it ended (a running job's is its limit: dropped)
    time_limit_s: float | None = None  # None: unlimited or not set
    restart_count: int = 0  # > 0: requeued that many times (a new attempt)
    stdout_path: str = ""  # squeue: --output as given (22.05 leaves %j unexpanded); scontrol: expanded
    tres_req: dict[str, str] = field(default_factory=dict)  # {"cpu": "1", "mem": "50M", "gres/gpu": "2"}
    tres_alloc: dict[str, str] = field(default_factory=dict)

    @property
    def states(self) -> tuple[str, ...]:
        """Base state and flags together, the base first."""
        return ((self.state,) if self.state else ()) + self.flags


@dataclass(frozen=True)
class SqueueSnapshot:
    release: str  # "22.05.8"; "" when the answer didn't say
    jobs: list[SlurmJob]
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- squeue --json


def parse_squeue(text: str | bytes) -> SqueueSnapshot:
    """Parse one `squeue --json` answer. Raises SlurmParseError for non-JSON, a wrong shape, or
    an answer carrying Slurm errors (their text in the message)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise SlurmParseError(f"squeue --json did not answer JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SlurmParseError("squeue --json answered something other than an object")
    errors = [_problem_text(e) for e in _as_list(doc.get("errors"))]
    if errors:
        raise SlurmParseError("; ".join(errors))
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmParseError("squeue --json answered no `jobs` list")
    parsed, warnings = [], [_problem_text(w) for w in _as_list(doc.get("warnings"))]
    for raw in jobs:
        try:
            parsed.append(parse_job(raw))
        except SlurmParseError as e:
            warnings.append(str(e))  # one odd record must not hide every other job
    return SqueueSnapshot(release=_release(doc.get("meta")), jobs=parsed, warnings=warnings)


def parse_job(raw: Any) -> SlurmJob:
    """One record of squeue's `jobs` list (any supported release)."""
    if not isinstance(raw, dict):
        raise SlurmParseError(f"a job record is not an object: {str(raw)[:80]}")
    job_id = _int(raw.get("job_id"))
    if job_id is None:
        raise SlurmParseError(f"a job record has no job_id: {str(raw)[:80]}")
    state, flags = split_state(raw.get("job_state"))
    exit_code, sig = decode_exit(raw.get("exit_code"))
    started = bool({"RUNNING", "SUSPENDED"} & {state, *flags}) or state in _ENDED_STATES
    ended = state in _ENDED_STATES and "COMPLETING" not in flags
    array_job = _int(raw.get("array_job_id"))
    limit_min = _num(raw.get("time_limit"))
    return SlurmJob(
        job_id=job_id,
        state=state,
        flags=flags,
        reason=_reason(raw.get("state_reason")),
        exit_code=exit_code if state in _ENDED_STATES or "COMPLETING" in flags else None,
        signal=sig if state in _ENDED_STATES or "COMPLETING" in flags else None,
        array_job_id=array_job or None,  # 22.05 says 0 for "not an array"
        array_task_id=_int(raw.get("array_task_id")) if array_job else None,
        array_tasks_pending=_str(raw.get("array_task_string")),
        name=_str(raw.get("name")),
        comment=_str(raw.get("comment")),
        partition=_str(raw.get("partition")),
        account=_str(raw.get("account")),
        qos=_str(raw.get("qos")),
        user=_str(raw.get("user_name")),
        nodes=_str(raw.get("nodes")),
        dependency=_str(raw.get("dependency")),
        submit_time=_time(raw.get("submit_time")),
        start_time=_time(raw.get("start_time")) if started else None,
        end_time=_time(raw.get("end_time")) if ended else None,
        time_limit_s=None if limit_min is None or math.isinf(limit_min) else limit_min * 60.0,
        restart_count=_int(raw.get("restart_cnt")) or 0,
        stdout_path=_str(raw.get("standard_output")),
        tres_req=parse_tres(_str(raw.get("tres_req_str"))),
        tres_alloc=parse_tres(_str(raw.get("tres_alloc_str"))),
    )


_ENDED_STATES = frozenset(BASE_STATES - {"PENDING", "RUNNING", "SUSPENDED"})


def split_state(v: Any) -> tuple[str, tuple[str, ...]]:
    """`job_state` as (base state, flags): "RUNNING" -> ("RUNNING", ()); ["COMPLETED", "COMPLETING"]
    -> ("COMPLETED", ("COMPLETING",)); 22.05's "COMPLETING" -> ("", ("COMPLETING",))."""
    tokens = [v] if isinstance(v, str) else [t for t in _as_list(v) if isinstance(t, str)]
    tokens = [t.strip().upper() for t in tokens if t and t.strip()]
    base = next((t for t in tokens if t in BASE_STATES), "")
    return base, tuple(t for t in tokens if t != base)


def decode_exit(v: Any) -> tuple[int | None, int | None]:
    """(exit status, signal) from squeue's `exit_code`: 22.05's raw wait status, a {set, number}
    wrapper of it, or 23.11's {status, return_code, signal} object."""
    if isinstance(v, dict) and ("return_code" in v or "signal" in v or "status" in v):
        status = {s.upper() for s in _as_list(v.get("status")) if isinstance(s, str)}
        sig_field = v.get("signal")
        sig = _int(sig_field.get("id")) if isinstance(sig_field, dict) else _int(sig_field)
        rc = _int(v.get("return_code"))
        if status & {"SIGNALED", "CORE_DUMPED"} or (sig and not rc):
            return None, sig or None
        if status & {"PENDING", "INVALID"}:
            return None, None
        return rc, None
    raw = _int(v)
    if raw is None or raw < 0:
        return None, None
    if raw & 0x7F:  # WIFSIGNALED
        return None, raw & 0x7F
    return (raw >> 8) & 0xFF, None


def parse_tres(s: str) -> dict[str, str]:
    """ "cpu=1,mem=50M,node=1,gres/gpu=2" -> {"cpu": "1", "mem": "50M", "node": "1", "gres/gpu": "2"}."""
    out: dict[str, str] = {}
    for part in s.split(","):
        k, sep, val = part.partition("=")
        if sep and k.strip():
            out[k.strip()] = val.strip()
    return out


# --------------------------------------------------------------------------- key=value records


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_kv_record(line: str) -> dict[str, str]:
    """One `scontrol show job -o` line or jobcomp/filetxt record as a dict. Values may hold spaces
    (a WorkDir, a Command): a value runs up to the next ` Key=`."""
    line = line.strip()
    matches = list(_KEY.finditer(line))
    rec: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        rec[m.group(1)] = line[m.end() : end].strip()
    return rec


def parse_kv_records(text: str) -> list[dict[str, str]]:
    """Every non-empty line of `scontrol show job -o` / a jobcomp file."""
    return [parse_kv_record(line) for line in text.splitlines() if line.strip()]


def job_from_record(rec: dict[str, str]) -> SlurmJob:
    """A SlurmJob from an `scontrol show job -o` or jobcomp record (`JobState`, `ExitCode=rc:sig`,
    `Reason`; times are local ISO strings without a zone, left out). Measured on 22.05: jobcomp writes
    its record at the state change, so a CANCELLED or TIMEOUT job reads `ExitCode=0:0` there while
    squeue and scontrol say signal 15: trust jobcomp's state, not its exit code for those. A requeue
    writes a record too (JobState=PENDING): a jobcomp record is not always an ending."""
    job_id = _int(rec.get("JobId"))
    if job_id is None:
        raise SlurmParseError(f"a record has no JobId: {str(rec)[:80]}")
    state, flags = split_state(rec.get("JobState", ""))
    rc, sig = exit_pair(rec.get("ExitCode", ""))
    ended = state in _ENDED_STATES
    return SlurmJob(
        job_id=job_id,
        state=state,
        flags=flags,
        reason=_reason(rec.get("Reason")),
        exit_code=rc if ended else None,
        signal=sig if ended else None,
        name=rec.get("JobName", rec.get("Name", "")),
        comment="" if rec.get("Comment") in (None, "(null)") else rec["Comment"],
        partition=rec.get("Partition", ""),
        nodes="" if rec.get("NodeList") in (None, "(null)") else rec["NodeList"],
        dependency="" if rec.get("Dependency") in (None, "(null)") else rec["Dependency"],
        restart_count=_int(rec.get("Restarts")) or 0,
        stdout_path=rec.get("StdOut", ""),
        tres_req=parse_tres(rec.get("ReqTRES", "")),
        tres_alloc=parse_tres(rec.get("AllocTRES") or rec.get("TRES") or rec.get("Tres") or ""),
    )


def last_ending(text: str, job_id: int, name: str | None = None) -> SlurmJob | None:
    """The last record of `job_id` in jobcomp/filetxt text that ended the job (a requeue's PENDING record is
    not an ending), or None. With `name`, a record under another job name is someone else's job that
    reused the id (a cluster whose state was wiped starts its ids again)."""
    needle = f"JobId={job_id} "
    for line in reversed(text.splitlines()):
        if not line.startswith(needle):
            continue
        rec = parse_kv_record(line)
        if name is not None and rec.get("Name") != name:
            continue
        try:
            job = job_from_record(rec)
        except SlurmParseError:
            continue
        if job.state in _ENDED_STATES:
            return job
    return None


def config_value(text: str, key: str) -> str | None:
    """One value of `scontrol show config` (`Key = value` lines); None when absent or `(null)`."""
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == key:
            v = v.strip()
            return None if v in ("", "(null)") else v
    return None


def exit_pair(s: str) -> tuple[int | None, int | None]:
    """Slurm's text `ExitCode=rc:sig` ("3:0", "0:9") -> (exit status, signal); a signal wins."""
    rc_s, _, sig_s = s.strip().partition(":")
    rc, sig = _int(rc_s), _int(sig_s)
    if sig:
        return None, sig
    return rc, None


# --------------------------------------------------------------------------- tolerant readers


def _num(v: Any) -> float | None:
    """A number, or 23.02+'s {"set", "infinite", "number"} wrapper; inf for infinite, None unset."""
    if isinstance(v, dict):
        if v.get("infinite") is True:
            return math.inf
        if v.get("set") is False:
            return None
        v = v.get("number")
    if isinstance(v, bool) or not isinstance(v, int | float):
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return None
        return None
    return float(v)


def _int(v: Any) -> int | None:
    n = _num(v)
    return None if n is None or math.isinf(n) or math.isnan(n) else int(n)


def _time(v: Any) -> float | None:
    n = _num(v)
    return None if n is None or math.isinf(n) or n <= 0 else n


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _reason(v: Any) -> str:
    s = _str(v).strip()
    return "" if s in ("None", "(null)") else s


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _problem_text(e: Any) -> str:
    if isinstance(e, dict):
        parts = [str(e.get(k)) for k in ("error", "description", "source") if e.get(k)]
        return ": ".join(parts) or json.dumps(e)[:200]
    return str(e)


def _release(meta: Any) -> str:
    if not isinstance(meta, dict):
        return ""
    slurm = meta.get("Slurm") or meta.get("slurm") or {}
    if isinstance(slurm, dict):
        if isinstance(slurm.get("release"), str):
            return slurm["release"]
        v = slurm.get("version")
        if isinstance(v, dict):
            return ".".join(str(v.get(k, 0)) for k in ("major", "minor", "micro"))
    return ""
