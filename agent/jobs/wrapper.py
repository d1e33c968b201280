"""The job wrapper: the first process of every job, between the agent and the job's command.

Run as a plain script (`python -I -S wrapper.py ...`: stdlib only, no site-packages, ~10 ms to start),
never imported by the agent. It exists so that a job outlives the agent that started it and still
leaves its exit status behind:

1. has the command's process join the job's cgroups (the files named by `--procs`) before the command
   starts, so nothing of the job ever runs outside its limits. The wrapper itself stays out: in there
   it would be held to the job's CPU quota and, with the jobs root `cpu.idle`, yield to every other
   task. Under `cpu = 0.01` its few milliseconds of work (the fork, then the rc file) took 200-900 ms
   of quota periods, and on a busy host 200 such wrappers waited tens of seconds to say their job had
   ended;
2. becomes a child subreaper, so a double-forked grandchild is re-parented to it (not to init) and
   stays findable as a descendant — the psutil tier's whole notion of "the job's processes";
   takes SCHED_BATCH and, given `--cpus`, pins itself to the job's CPUs (agent/jobs/placement.py): both
   are inherited by the command;
3. runs the command in its own process group (the agent signals that group; the wrapper survives to
   write the status), given `--user`, as that account; forwards SIGTERM/SIGINT/SIGHUP to it, reaps every
   orphan it inherits;
4. when the command ends, kills what the job left behind (as Slurm does at the end of a batch job) and
   writes the rc file atomically: `{"exit_code": N | null, "signal": S | null, "ended_at": t}`.

Output goes to files opened by the agent (the wrapper's stdout/stderr), never pipes: a job writing to
a pipe whose reader (the agent) died would get SIGPIPE.
"""

import _signal as signal  # the C module: `signal` would import enum (~5 ms of every job's start)
import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
_GRACE_S = 2.0


def _join_cgroups(files: list[str]) -> None:
    me = str(os.getpid()).encode()
    for f in files:
        fd = os.open(f, os.O_WRONLY)
        try:
            os.write(fd, me)
        finally:
            os.close(fd)


def _pin(cpus: str) -> None:
    """Pin the job to its CPUs (agent/jobs/placement.py); the command and its children inherit it. A CPU
    gone offline or outside our cpuset since the agent chose is no reason to fail the job: it runs unpinned."""
    try:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    except (OSError, ValueError) as exc:
        print(f"watchkeeper: could not pin the job to CPUs {cpus}: {exc}; it runs on any CPU", file=sys.stderr)


def _batch() -> None:
    """SCHED_BATCH for the job (inherited by its processes): the kernel treats it as CPU-bound and lets it
    preempt no one on wake-up, so a job that sleeps and wakes often (a data loader, a step between I/O)
    doesn't cut into serving's requests mid-answer; its share of CPU is unchanged."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def _subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the psutil tier then finds only processes that stay in the tree


def _prefer_for_oom() -> None:
    """In the command's process, before exec: make the job, not its wrapper (which must live to write the
    rc file) nor the agent serving beside it, the OOM killer's first choice. Raising one's own
    oom_score_adj needs no privilege (lowering the wrapper's, as the cgroup tier also tries, does)."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            cur = int(f.read().strip() or 0)
            f.seek(0)
            f.write(str(min(1000, max(cur, 0) + 500)))
    except (OSError, ValueError):
        pass


def _become(name: str) -> None:
    """In the command's process, before exec: drop to account `name` (its groups, gid, uid; HOME, USER,
    LOGNAME), so the command never runs with the agent's rights. Already that account: nothing to do."""
    import pwd  # a C module: only jobs with an account pay for it

    pw = pwd.getpwnam(name)
    if os.getuid() != pw.pw_uid:
        os.initgroups(name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    os.environ.update(HOME=pw.pw_dir, USER=name, LOGNAME=name)


def _which(name: str) -> str:
    """`name` looked up on the job's PATH as execvp would (the first executable file), without imports."""
    if "/" in name:
        return name
    for d in os.environ.get("PATH", os.defpath).split(":"):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return name  # not found: execv says so


def _children() -> list[int]:
    """Our direct children (re-parented orphans included), from /proc."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _write_rc(path: str, exit_code: int | None, sig: int | None) -> None:
    tmp = path + ".tmp"
    # Written by hand, not with json: importing json (and re, enum) was a third of every job's start.
    code = "null" if exit_code is None else int(exit_code)
    signum = "null" if sig is None else int(sig)
    text = f'{{"exit_code": {code}, "signal": {signum}, "ended_at": {time.time()!r}}}'
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_all(fd: int) -> str:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return out.decode(errors="replace")
        out += chunk


def _wait_for(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _reap_leftovers() -> None:
    """Kill and reap whatever the command left running (daemonised grandchildren)."""
    deadline = time.monotonic() + _GRACE_S
    sent_kill = False
    while True:
        kids = _children()
        if not kids:
            return
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL if sent_kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        if time.monotonic() > deadline:
            sent_kill = True
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    args = argv[1:]
    procs: list[str] = []
    rc_path = ""
    cpus = ""
    user = ""
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--procs":
            procs.append(args.pop(0))
        elif opt == "--rc":
            rc_path = args.pop(0)
        elif opt == "--cpus":
            cpus = args.pop(0)
        elif opt == "--user":
            user = args.pop(0)
        else:
            print(f"watchkeeper job wrapper: unknown option {opt}", file=sys.stderr)
            return 2
    cmd = args[1:]
    if not rc_path or not cmd:
        print("usage: wrapper.py --rc FILE [--procs FILE]... [--cpus 0,1] [--user NAME] -- COMMAND...", file=sys.stderr)
        return 2
    # Everything that isn't the job's is done before its process joins the cgroups: under `cpu = 0.01` a
    # millisecond of our own work in there costs a whole quota period (100 ms) of waiting.
    _subreaper()
    if cpus:
        _pin(cpus)
    _batch()
    exe = _which(cmd[0])  # before dropping rights: execvp imports lazily, and the stdlib may be root's only
    joined_r, joined_w = os.pipe()  # the child says here why it could not join; closed unread: it did

    child = os.fork()
    if child == 0:
        os.close(joined_r)
        os.setpgid(0, 0)
        _prefer_for_oom()
        # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec, so the command
        # would get EPIPE where a shell pipeline expects to be killed (`yes | head` spinning on errors).
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_DFL)
        try:  # the command's process joins first, so nothing of the job runs outside its limits
            _join_cgroups(procs)
        except OSError as exc:
            os.write(joined_w, str(exc).encode())
            os._exit(1)
        os.close(joined_w)
        if user:
            try:
                _become(user)
            except (KeyError, OSError) as exc:
                os.write(2, f"watchkeeper: cannot run the job as {user!r}: {exc}\n".encode())
                os._exit(126)
        try:
            os.execv(exe, cmd)
        except OSError as exc:
            os.write(2, f"watchkeeper: cannot run {cmd[0]!r}: {exc.strerror}\n".encode())
            os._exit(127)

    os.close(joined_w)
    why = _read_all(joined_r)
    os.close(joined_r)
    if why:
        print(f"watchkeeper: could not join the job's cgroup: {why}", file=sys.stderr)
        _wait_for(child)
        _write_rc(rc_path, None, None)
        return 1

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    try:
        os.setpgid(child, child)  # both sides set it: whichever runs first wins the race
    except OSError:
        pass

    status = None
    while status is None:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            status = st
    exit_code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    _reap_leftovers()
    _write_rc(rc_path, exit_code, sig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
