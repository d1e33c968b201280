"""Slurm's client commands, run for the agent: `sbatch`, `squeue --json`, `scancel`, `scontrol`.

Every call is a subprocess with a timeout and a clean environment (a few base variables and
`SLURM_CONF`, never the agent's own: sbatch exports its caller's environment into the job, and the
agent's may hold a token). A failure is a `SlurmRefused` carrying our HTTP status and Slurm's own
words (`submit.refusal`): 503 when Slurm can't be reached or a command is missing, 4xx for a
request Slurm refuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agent.config import SlurmConfig
from agent.jobs.slurm.squeue import (
    SlurmJob,
    SlurmParseError,
    SqueueSnapshot,
    job_from_record,
    parse_kv_records,
    parse_squeue,
)
from agent.jobs.slurm.submit import SbatchRequest, SlurmRefused, batch_script, parse_sbatch_output, refusal, sbatch_argv

BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TZ", "TMPDIR")


class SlurmClient:
    def __init__(self, cfg: SlurmConfig) -> None:
        self.cfg = cfg
        self.calls: dict[str, int] = {}  # command -> calls made (the bench and tests count squeue's)

    def env(self) -> dict[str, str]:
        e = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        conf = self.cfg.conf or os.environ.get("SLURM_CONF")
        if conf:
            e["SLURM_CONF"] = str(conf)
        return e

    def which(self, name: str) -> str | None:
        if self.cfg.bin_dir is not None:
            p = Path(self.cfg.bin_dir) / name
            return str(p) if os.access(p, os.X_OK) else None
        return shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")

    def run(self, name: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm command; 503 SlurmRefused when it is missing or hangs past `command_timeout`."""
        exe = self.which(name)
        if exe is None:
            where = f"in {self.cfg.bin_dir}" if self.cfg.bin_dir else "on PATH"
            raise SlurmRefused(503, f"Slurm is unavailable: {name} not found {where} (is this a Slurm submit host?)")
        self.calls[name] = self.calls.get(name, 0) + 1
        try:
            return subprocess.run(
                [exe, *args], input=stdin, capture_output=True, text=True, env=self.env(),
                timeout=self.cfg.command_timeout, cwd="/",
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            why = f"Slurm is unavailable: {name} did not answer in {self.cfg.command_timeout:g} s"
            raise SlurmRefused(503, why) from None
        except OSError as e:
            raise SlurmRefused(503, f"Slurm is unavailable: could not run {name}: {e}") from None

    def sbatch(self, req: SbatchRequest, extra: tuple[str, ...] | list[str] = ()) -> int:
        argv = sbatch_argv(req, "sbatch")[1:]
        r = self.run("sbatch", [*argv, *extra], stdin=batch_script(req))
        if r.returncode != 0:
            raise refusal(r.returncode, r.stderr, "sbatch")
        return parse_sbatch_output(r.stdout)

    def squeue(self) -> SqueueSnapshot:
        """Every job slurmctld holds, in one call. 503 when it can't say (squeue --json exits 0 with an
        `errors` entry when slurmctld is down: that is refused, never read as an empty queue)."""
        r = self.run("squeue", ["--json"])
        if r.returncode != 0:
            raise refusal(r.returncode, r.stderr, "squeue")
        try:
            return parse_squeue(r.stdout)
        except SlurmParseError as e:
            raise SlurmRefused(503, f"Slurm is unavailable: squeue: {e}") from None

    def scancel(self, slurm_id: int) -> None:
        r = self.run("scancel", [str(slurm_id)])
        if r.returncode != 0:
            raise refusal(r.returncode, r.stderr, "scancel")

    def requeue(self, slurm_id: int) -> None:
        """`scontrol requeue`, then make it eligible now: Slurm holds a requeued job back (BeginTime,
        measured ~170 s on 22.05), while our requeue means "run it again now"."""
        r = self.run("scontrol", ["requeue", str(slurm_id)])
        if r.returncode != 0:
            raise refusal(r.returncode, r.stderr, "scontrol")
        self.run("scontrol", ["update", f"JobId={slurm_id}", "StartTime=now"])  # best effort: it runs later if not

    def show_job(self, slurm_id: int) -> SlurmJob | None:
        """`scontrol show job -o <id>` while slurmctld still holds it; None once it doesn't."""
        r = self.run("scontrol", ["show", "job", "-o", str(slurm_id)])
        if r.returncode != 0:
            err = refusal(r.returncode, r.stderr, "scontrol")
            if err.status == 404:
                return None
            raise err
        for rec in parse_kv_records(r.stdout):
            try:
                job = job_from_record(rec)
            except SlurmParseError:
                continue
            if job.job_id == slurm_id:
                return job
        return None
