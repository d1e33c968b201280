"""The job launcher: one small process that forks each job's wrapper, so that no job pays an interpreter start.

Run as a plain script (`python -I -S launcher.py`: stdlib only, never imported by the agent), started by
the agent (agent/jobs/spawn.py) with one end of a Unix SOCK_SEQPACKET pair as its stdin. It loads
`wrapper.py` once; for each request it forks, and the child becomes that job's wrapper (a new session, the
job's output files as stdout/stderr, its working dir, environment and niceness) and runs `wrapper.main`.
Measured: starting the wrapper as a fresh `python -I -S wrapper.py` took ~15 ms of CPU per job, most of a
job start's cost; a fork of this process takes well under a millisecond.

A request is one datagram: JSON `{"argv": [...wrapper options and command], "cwd", "env", "nice"}` with the
stdout and stderr fds attached (SCM_RIGHTS). The answer is `{"pid": N}` or `{"error": "...", "errno": E}`.
Children are reaped by the kernel (SIGCHLD ignored here); the agent follows each wrapper by its pid and
create time, as it does a job it re-adopted after a restart. When the agent goes away (end of file on the
socket) the launcher exits; the wrappers it forked live on, as those started by the agent do.
"""

import importlib.util
import json
import os
import signal
import socket
import sys
import traceback

MAX_REQUEST = 1 << 20  # argv + environment of one job


def _load_wrapper():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrapper.py")
    spec = importlib.util.spec_from_file_location("watchkeeper_wrapper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _child(wrapper, req: dict, out: int, err: int, sock: socket.socket) -> None:
    """In the forked child: become the job's wrapper; never returns."""
    code = 1
    try:
        sock.close()
        os.setsid()  # a signal to the agent's group never reaches jobs
        for s in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if req.get("nice"):
            os.nice(int(req["nice"]))
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stderr = os.fdopen(2, "w", closefd=False)
        code = wrapper.main(["wrapper.py", *req["argv"]])
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _serve(sock: socket.socket, wrapper) -> None:
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 2)
        except InterruptedError:
            continue
        if not msg:
            return  # the agent is gone
        try:
            req = json.loads(msg)
            if len(fds) != 2:
                raise ValueError(f"expected 2 fds (stdout, stderr), got {len(fds)}")
            if not os.path.isdir(req["cwd"]):
                e = FileNotFoundError(2, "No such file or directory")
                answer = {"error": f"{e.strerror}: {req['cwd']!r}", "errno": e.errno}
            else:
                pid = os.fork()
                if pid == 0:
                    _child(wrapper, req, fds[0], fds[1], sock)
                answer = {"pid": pid}
        except OSError as e:
            answer = {"error": str(e), "errno": e.errno or 0}
        except Exception as e:  # a malformed request: say so, serve the next
            answer = {"error": f"bad request: {e}", "errno": 0}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(answer).encode())


def main() -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the wrappers: no zombies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we stop (end of file)
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    wrapper = _load_wrapper()
    sock.send(b'{"ready": true}')
    _serve(sock, wrapper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
