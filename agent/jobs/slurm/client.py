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
    config_value,
    job_from_record,
    last_ending,
    parse_kv_records,
    parse_squeue,
)
from agent.jobs.slurm.submit import SbatchRequest, SlurmRefused, batch_script, parse_sbatch_output, refusal, sbatch_argv

BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TZ", "TMPDIR")
# How much of the jobcomp file's end is read for a job: records are ~400 bytes, so ~20,000 of the newest
# endings. The file only grows (slurmctld appends; log rotation is the site's), so never all of it.
JOBCOMP_TAIL_BYTES = 8 * 2**20
_UNASKED = Path("/")  # jobcomp_file not yet asked of Slurm


class SlurmClient:
    def __init__(self, cfg: SlurmConfig) -> None:
        self.cfg = cfg
        self.calls: dict[str, int] = {}  # command -> calls made (the bench and tests count squeue's)
        self._jobcomp: Path | None = _UNASKED

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

    def jobcomp_file(self) -> Path | None:
        """The jobcomp/filetxt file slurmctld writes: `[jobs.slurm] jobcomp_file`, else asked of `scontrol
        show config` once it answers; None when Slurm keeps no such file. Raises SlurmRefused (503)."""
        if self.cfg.jobcomp_file is not None:
            return self.cfg.jobcomp_file
        if self._jobcomp is _UNASKED:
            r = self.run("scontrol", ["show", "config"])
            if r.returncode != 0:
                raise refusal(r.returncode, r.stderr, "scontrol")
            kind, loc = config_value(r.stdout, "JobCompType"), config_value(r.stdout, "JobCompLoc")
            self._jobcomp = Path(loc) if kind == "jobcomp/filetxt" and loc else None
        return self._jobcomp

    def jobcomp_ending(self, slurm_id: int, name: str) -> SlurmJob | None:
        """How Slurm's jobcomp file says the job ended (its last ending record under `name`), or None when
        there is no such file, it can't be read, or it holds no ending of that job. Raises SlurmRefused."""
        path = self.jobcomp_file()
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - JOBCOMP_TAIL_BYTES))
                data = f.read()
        except OSError:
            return None
        text = data.decode(errors="replace")
        if size > JOBCOMP_TAIL_BYTES:
            text = text.partition("\n")[2]  # the first line read may be the end of a record
        return last_ending(text, slurm_id, name)
