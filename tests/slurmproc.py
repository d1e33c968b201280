"""A real single-node Slurm for tests and benches, started without systemd.

Debian's `slurm-wlm` + `munge` packages (Slurm 22.05 on Debian 12). Everything lives in one temp dir:
its own munge key and socket, `slurm.conf` (clients and daemons find it through `SLURM_CONF`), state,
spool, logs, pid files and the jobcomp file, and free loopback ports for slurmctld and slurmd, so two
clusters (a test and a bench) can run side by side and nothing in /etc is touched.

    with SlurmCluster() as cluster:  # its own dir under /tmp, removed at stop
        job = cluster.sbatch(["true"])
        cluster.wait_state(job, "COMPLETED")

The daemons run in the foreground as our children (munged as the munge user, like `runuser -u munge
-- munged`), each in its own session. Teardown cancels the cluster's jobs and waits for them, stops
the daemons, then kills what is left of this cluster: processes in the daemons' sessions, and every
process whose environment names this cluster's conf in SLURM_CONF (each slurmstepd is its own session
and outlives slurmd; it and the jobs under it inherit that variable) — nothing else.

Measured here (2 cores): start to idle node ~1 s; sbatch -> RUNNING ~3 s (batch_sched_delay);
~100-150 sbatch/s from one caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.jobs.slurm.squeue import parse_kv_record, split_state
from tests.agentproc import free_port

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")
INSTALL_HINT = "apt-get install slurm-wlm munge"


def _which(name: str) -> str | None:
    # Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing; {INSTALL_HINT})"
    if os.geteuid() != 0:
        return "a single-node Slurm needs root (munged as the munge user, slurmd as SlurmUser=root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return f"no munge user ({INSTALL_HINT})"
    return None


def node_config() -> dict[str, str]:
    """This host as slurmd sees it (`slurmd -C`): CPUs, sockets, cores, threads, RealMemory."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)


@dataclass
class SlurmCluster:
    # Every directory above the munge socket must be traversable by the munge user, which pytest's
    # 0700 tmp dirs are not: by default the cluster makes (and at stop removes) its own dir in /tmp.
    base: Path | None = None  # type: ignore[assignment]
    node: str = "wk-node"
    partition: str = "debug"
    min_job_age: int = 300  # Slurm's default: finished jobs stay in squeue this long
    # Extra `PartitionName=` options, e.g. "OverSubscribe=FORCE:64" to run more jobs than cores.
    partition_options: str = ""
    # slurm.conf keys to add or override, e.g. {"JobAcctGatherType": "jobacct_gather/linux"}.
    extra_conf: dict[str, str] = field(default_factory=dict)
    ctld_port: int = field(default_factory=free_port)
    slurmd_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _owns_base: bool = False

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="wk-slurm-"))
            self._owns_base = True

    # ------------------------------------------------------------------ paths and environment

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.base / "munge" / "munge.sock"

    @property
    def jobcomp_path(self) -> Path:
        return self.base / "jobcomp.txt"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's client commands against this cluster."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        e["SLURM_CONF"] = str(self.conf)
        return e

    # ------------------------------------------------------------------ start / stop

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> SlurmCluster:
        """Write the config, start munged, slurmctld and slurmd, wait until the node is idle."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        try:
            self._write_files()
            self._start_munged(timeout)
            self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-f", str(self.conf), "-N", self.node])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        for d in ("etc", "state", "spool", "log", "run", "jobs"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket dir others can't traverse, and a key others can read.
        self.base.chmod(0o755)
        munge = pwd.getpwnam("munge")
        mdir = self.base / "munge"
        mdir.mkdir(exist_ok=True)
        key = mdir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        for p, mode in ((mdir, 0o711), (key, 0o400)):
            os.chown(p, munge.pw_uid, munge.pw_gid)
            p.chmod(mode)
        hw = node_config()
        b = self.base
        lines = {
            "ClusterName": "watchkeeper",
            # slurmctld only runs where this names the host it is on.
            "SlurmctldHost": f"{socket.gethostname().split('.')[0]}(127.0.0.1)",
            "SlurmctldPort": self.ctld_port,
            "SlurmdPort": self.slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": b / "state",
            "SlurmdSpoolDir": b / "spool",
            "SlurmctldPidFile": b / "run" / "slurmctld.pid",
            "SlurmdPidFile": b / "run" / "slurmd.pid",
            "SlurmctldLogFile": b / "log" / "slurmctld.log",
            "SlurmdLogFile": b / "log" / "slurmd.log",
            "PlugStackConfig": b / "etc" / "plugstack.conf",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": self.jobcomp_path,
            "MpiDefault": "none",
            "MailProg": shutil.which("true") or "/bin/true",
            "SwitchType": "switch/none",
            "ReturnToService": 2,
            "MinJobAge": self.min_job_age,
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            **self.extra_conf,
        }
        hw_keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
        node = " ".join(f"{k}={hw[k]}" for k in hw_keys if k in hw)
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname=localhost {node} State=UNKNOWN\n"
        text += f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP"
        text += f" {self.partition_options}\n" if self.partition_options else "\n"
        self.conf.write_text(text)
        (b / "etc" / "plugstack.conf").write_text("")

    def _spawn(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        log = open(self.base / "log" / f"{name}.out", "ab")  # noqa: SIM115 - lives as long as the daemon
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.base,
            start_new_session=True,
            **kw,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def _start_munged(self, timeout: float) -> None:
        mdir = self.base / "munge"
        argv = [
            _which("munged") or "munged",
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={mdir / 'munge.key'}",
            f"--log-file={mdir / 'munged.log'}",
            f"--pid-file={mdir / 'munged.pid'}",
            f"--seed-file={mdir / 'munged.seed'}",
        ]
        # As the munge user, like `runuser -u munge -- munged`, but the Popen is munged itself.
        self._spawn("munged", argv, user="munge", group="munge", extra_groups=[])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"munged made no socket in {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited {p.returncode}:\n{self.logs()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.run(["sinfo", "--noheader", "-n", self.node, "-o", "%T"], check=False)
            state = r.stdout.strip()
            if r.returncode == 0 and state.rstrip("*") == "idle":
                return
            time.sleep(0.2)
        raise TimeoutError(f"node {self.node} not idle in {timeout}s (last state {state!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel the cluster's jobs, stop the daemons we started, then kill whatever of this cluster is left."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run(["scancel", "--full", f"--partition={self.partition}"], check=False, timeout=10)
                # scancel only asks: the signals travel slurmctld -> slurmd -> slurmstepd, so give them time.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                    s in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED") for s in self.job_states().values()
                ):
                    time.sleep(0.1)
        sessions = [p.pid for p in self.procs.values()]
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        # Each slurmstepd makes its own session, so sessions alone miss them: they and the jobs under them
        # inherit SLURM_CONF naming this cluster's conf (a path under our own temp dir), and nothing else does.
        for pid in _pids_in_sessions(sessions) + _pids_with_env("SLURM_CONF", str(self.conf)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Processes still carrying this cluster's SLURM_CONF (none after stop)."""
        return _pids_with_env("SLURM_CONF", str(self.conf))

    # ------------------------------------------------------------------ client helpers

    def run(self, argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (SLURM_CONF set)."""
        argv = [_which(argv[0]) or argv[0], *argv[1:]]
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, cwd=self.base)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def sbatch(self, command: list[str], *opts: str) -> int:
        """Submit `command` (argv) as a batch job; its output goes to jobs/<id>.out. Returns the job id."""
        wrap = shlex.join(command)
        argv = ["sbatch", "--parsable", f"--chdir={self.base / 'jobs'}", f"--output={self.base / 'jobs'}/%j.out"]
        r = self.run([*argv, *opts, "--wrap", wrap])
        return int(r.stdout.strip().split(";")[0])

    def squeue_json(self) -> dict[str, Any]:
        """`squeue --json`: every job slurmctld still knows (22.05 ignores squeue's filters with --json)."""
        return json.loads(self.run(["squeue", "--json"]).stdout)

    def job_states(self) -> dict[int, str]:
        """Job id → state from one `squeue --json` call."""
        return {int(j["job_id"]): _state(j) for j in self.squeue_json().get("jobs", [])}

    def jobcomp(self) -> dict[int, dict[str, str]]:
        """Finished jobs from the jobcomp/filetxt file, by job id (the last record wins)."""
        try:
            lines = self.jobcomp_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return {}
        recs = (parse_kv_record(line) for line in lines if line.strip())
        return {int(r["JobId"]): r for r in recs if r.get("JobId", "").isdigit()}

    def wait_state(self, job: int, *states: str, timeout: float = 60.0) -> str:
        """Poll squeue (then the jobcomp file) until the job is in one of `states`; returns the state."""
        deadline = time.monotonic() + timeout
        seen = "?"
        while time.monotonic() < deadline:
            seen = self.job_states().get(job) or self.jobcomp().get(job, {}).get("JobState", "?")
            if seen in states:
                return seen
            time.sleep(0.1)
        raise TimeoutError(f"job {job} not in {states} after {timeout}s (last {seen})")

    def logs(self) -> str:
        out = []
        for p in [*sorted((self.base / "log").glob("*")), self.base / "munge" / "munged.log"]:
            with contextlib.suppress(OSError):
                out.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)


def _state(job: dict[str, Any]) -> str:
    base, flags = split_state(job.get("job_state"))
    return base or (flags[0] if flags else "?")


def _pids_in_sessions(sids: list[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) in sids:
                found.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _pids_with_env(name: str, value: str) -> list[int]:
    want = f"{name}={value}".encode()
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if want in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
