"""Handing a job to Slurm: the `sbatch` command line and script for a job, and Slurm's refusals in our words.

The command stays an argv: the batch script runs it quoted word by word (never re-split by a
shell), with the job's environment exported in the script itself (`--export` can't carry a value
with a comma), and writes the command's exit status to an rc file, because without slurmdbd there
is no `sacct` and a finished job leaves `squeue` after MinJobAge. A job killed by a signal (time
limit, scancel) writes no rc file: its ending then comes from squeue / scontrol while Slurm still
holds it.

Errors, as measured on Slurm 22.05 (tests/slurm/data/errors-22.05.json):
- slurmctld down: `sbatch` fails after ~9 s with "Unable to contact slurm controller"; `squeue
  --json` *exits 0* with an `errors` entry and an empty job list (squeue.parse_squeue refuses it,
  or every job would look vanished).
- An unknown partition, a bad time, a GRES the cluster lacks, memory no node has: exit 1 (or 255)
  and Slurm's reason on stderr. Without slurmdbd an unknown account or QOS is accepted.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

# Slurm's words (stderr) -> (our HTTP status, the field of the request it is about).
_UNAVAILABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Slurm backup controller in standby mode",
    "Zero Bytes were transmitted or received",
)
_REFUSALS = (
    ("Invalid partition name specified", 422, "partition"),
    ("invalid partition specified", 422, "partition"),
    ("Invalid account", 422, "account"),
    ("Invalid qos", 422, "qos"),
    ("Invalid --time specification", 422, "time_limit"),
    ("Requested time limit is invalid", 422, "time_limit"),
    ("Invalid generic resource", 422, "gpus"),
    ("Memory specification can not be satisfied", 409, "mem"),
    ("Requested node configuration is not available", 409, None),
    ("More processors requested than permitted", 409, "cpu"),
    ("Job dependency problem", 422, "depends_on"),
    ("Job violates accounting/QOS policy", 409, None),
    ("Invalid job id specified", 404, None),
)


@dataclass(frozen=True)
class SbatchRequest:
    """What one `sbatch` call asks for. Sizes in bytes, times in seconds; None: Slurm's default."""

    command: list[str]
    job_dir: str  # where the script's output, error and rc files go (the agent's per-job dir)
    name: str = ""
    comment: str = ""  # we tag our jobs ("wk:<job id>") to find them in squeue's list of all jobs
    cpus: float | None = None
    mem_bytes: int | None = None
    gpus: int | None = None
    time_limit_s: float | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    after_ok: list[int] = field(default_factory=list)  # Slurm job ids this one waits for
    array: str | None = None  # "0-9%2"
    hold: bool = False
    begin_s: int | None = None  # eligible this many seconds from now (`--begin=now+N`): a retry's backoff


class SlurmRefused(Exception):
    """Slurm refused or could not be reached: `status` is our HTTP answer, `message` is Slurm's."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def sbatch_argv(req: SbatchRequest, sbatch: str = "sbatch") -> list[str]:
    """`sbatch` and its options for `req`; the script (batch_script(req)) goes on its stdin."""
    out = req.job_dir.replace("%", "%%")  # Slurm expands %j, %a, ... in these paths; %% is a literal %
    suffix = ".%a" if req.array else ""  # one file per array task
    argv = [sbatch, "--parsable", f"--output={out}/stdout{suffix}", f"--error={out}/stderr{suffix}"]
    argv += ["--kill-on-invalid-dep=yes"]  # else a failed dependency leaves the job pending forever
    if req.name:
        argv.append(f"--job-name={req.name}")
    if req.comment:
        argv.append(f"--comment={req.comment}")
    if req.cpus is not None:
        argv.append(f"--cpus-per-task={max(1, math.ceil(req.cpus))}")  # Slurm allocates whole CPUs
    if req.mem_bytes is not None:
        argv.append(f"--mem={max(1, math.ceil(req.mem_bytes / 2**20))}M")
    if req.gpus:
        argv.append(f"--gres=gpu:{req.gpus}")
    if req.time_limit_s is not None:
        argv.append(f"--time={slurm_minutes(req.time_limit_s)}")
    for opt, value in (("partition", req.partition), ("account", req.account), ("qos", req.qos)):
        if value:
            argv.append(f"--{opt}={value}")
    argv.append(f"--chdir={req.workdir or req.job_dir}")
    if req.after_ok:
        argv.append("--dependency=afterok:" + ":".join(str(j) for j in req.after_ok))
    if req.array:
        argv.append(f"--array={req.array}")
    if req.hold:
        argv.append("--hold")
    if req.begin_s:
        argv.append(f"--begin=now+{int(req.begin_s)}")
    return argv


def batch_script(req: SbatchRequest) -> str:
    """The batch script: exports the job's env, runs the argv as it is, keeps its exit status."""
    lines = ["#!/bin/sh", "# written by the watchkeeper agent; the command runs as given, word by word"]
    for k, v in sorted(req.env.items()):
        lines.append(f"export {k}={shlex.quote(v)}")
    if req.array:
        rc = shlex.quote(f"{req.job_dir}/rc") + '."${SLURM_ARRAY_TASK_ID}"'
    else:
        rc = shlex.quote(f"{req.job_dir}/rc")
    lines += [
        shlex.join(req.command),
        "rc=$?",
        # written whole or not at all: a reader never sees half a number
        f'printf "%s\\n" "$rc" > {rc}.tmp && mv -f {rc}.tmp {rc}',
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def slurm_minutes(seconds: float) -> str:
    """Seconds as Slurm's `--time` (whole minutes, rounded up: Slurm's limit is never shorter than asked)."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"


def parse_sbatch_output(stdout: str) -> int:
    """The job id from `sbatch --parsable` ("123" or "123;cluster")."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    head = first.split(";")[0].strip()
    if not head.isdigit():
        raise SlurmRefused(502, f"sbatch answered no job id: {stdout.strip()[:200]!r}")
    return int(head)


def refusal(returncode: int, stderr: str, program: str = "sbatch") -> SlurmRefused:
    """Slurm's failure as our answer: 503 when Slurm can't be reached, 409/422 for a request it refuses
    (naming the field where we know it), 502 for anything else; Slurm's own words as the message."""
    text = " ".join(line.removeprefix(f"{program}: error: ").strip() for line in stderr.strip().splitlines())
    text = text or f"{program} exited {returncode} and said nothing"
    if any(s.lower() in text.lower() for s in _UNAVAILABLE):
        return SlurmRefused(503, f"Slurm is unavailable: {text}")
    for needle, status, fld in _REFUSALS:
        if needle.lower() in text.lower():
            return SlurmRefused(status, text, fld)
    return SlurmRefused(502, text)
