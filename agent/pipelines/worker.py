"""The process that runs callable steps: `python -m agent.pipelines.worker` serves a run's in-process
steps one after another (JSON lines on stdin/stdout), `... --call module:function` runs one isolated
step as a job. Imports nothing of the agent but `steplog` (stdlib), so a step's imports are its own."""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from agent.pipelines.steplog import context_from_env


def _call(call: str, workdir: str | None) -> None:
    if workdir and workdir not in sys.path:
        sys.path.insert(0, workdir)
    module, _, fn = call.partition(":")
    func = getattr(importlib.import_module(module), fn)
    func(context_from_env())


def serve() -> int:
    """One request per line: {"call", "workdir", "env", "log"}; answers {"ok", "error"}. The step's own
    output (fd 1 and 2, C extensions included) goes to its `log` file, not into the protocol."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    base_env = dict(os.environ)
    for line in sys.stdin:
        req = json.loads(line)
        os.environ.clear()
        os.environ.update(base_env | req["env"])
        cwd = os.getcwd()
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            if req.get("workdir"):
                os.chdir(req["workdir"])
            _call(req["call"], req.get("workdir"))
            answer = {"ok": True}
        except BaseException as e:  # a step's failure is an answer, not the worker's death
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for f in (fd, *saved):
                os.close(f)
            os.chdir(cwd)
        proto.write(json.dumps(answer) + "\n")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--call":
        _call(sys.argv[2], os.getcwd())
        return 0
    return serve()


if __name__ == "__main__":
    sys.exit(main())
