"""`watchkeeper jobs …` and `watchkeeper quotas`, across the fleet.

    watchkeeper jobs submit --pipeline NAME [--cpu N] [--mem SIZE] [--gpus N|UUID,...] [--time DUR]
                            [--env K=V]... [--workdir DIR] [--retries N] [--array N [--array-parallel K]]
                            [--reason TEXT] [--agent NAME] -- COMMAND ARGS...
    watchkeeper jobs list [--state S] [--pipeline P]
    watchkeeper jobs show ID            watchkeeper jobs logs ID [--stderr] [--task N] [-f]
    watchkeeper jobs cancel ID [--reason TEXT]      watchkeeper jobs requeue ID [--reason TEXT]
    watchkeeper quotas

Every verb takes `--agents`/`--fleet` (as `status` does) and `--json`. `submit` goes to one agent: the one
named by `--agent`, or the only one. `list` and `quotas` ask every agent at once. `show`, `logs`,
`cancel` and `requeue` find the job on every agent (ids are unique per agent; `--agent` picks one when
two agents have the same id). `logs -f` follows until the job is over and its output read.

Exit codes: 0 done; 1 some agent could not be read, or refused (one line on stderr); 2 usage: bad
options, no agents, a request the wire contract refuses before it is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Sequence
from typing import IO, Any

from console.rollouts.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    RolloutsUsageError,
    add_common,
    emit_json,
    guarded,
    specs_of,
    why_failed,
)

HELP = "submit, list, show, follow the logs of, cancel and requeue jobs on the fleet's agents"
QUOTAS_HELP = "each agent's per-pipeline quotas: usage against the limit per resource (near-limit first)"
STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "LOST", "REQUEUED")
FOLLOW_POLL_S = 1.0


class UsageError(RolloutsUsageError):
    """Exit 2 (printed as one line by `guarded`)."""


# --------------------------------------------------------------------------- options


def configure(p: argparse.ArgumentParser) -> None:
    """`watchkeeper jobs` and its verbs."""
    verbs = p.add_subparsers(dest="jobs_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    s = verbs.add_parser("submit", help="submit a job to one agent", description="submit a job to one agent")
    add_common(s)
    s.add_argument("--pipeline", required=True, help="the pipeline (its quota applies)")
    s.add_argument("--cpu", type=float, help="cores (default 1)")
    s.add_argument("--mem", metavar="SIZE", help="memory limit, e.g. 4G, 512M (default: the agent's default_mem)")
    s.add_argument("--gpus", metavar="N|UUID,...", help="a GPU count, or GPU (MIG) UUIDs")
    s.add_argument("--time", metavar="DUR", help="time limit, e.g. 90s, 30m, 2h, 1h30m")
    s.add_argument("--env", metavar="K=V", action="append", default=[], help="an environment variable (repeatable)")
    s.add_argument("--workdir", metavar="DIR", help="working directory on the agent's host")
    s.add_argument("--retries", type=int, metavar="N", help="retries of a failed attempt")
    s.add_argument("--array", type=int, metavar="N", help="a Slurm job array of N tasks (SLURM_ARRAY_TASK_ID)")
    s.add_argument("--array-parallel", type=int, metavar="K", help="at most K of the array's tasks at once")
    s.add_argument("--name", help="a name to show beside the id")
    s.add_argument("--reason", default="", help="why (recorded in the audit log)")
    s.add_argument("--agent", metavar="NAME", help="the agent to run it on (default: the only one)")
    s.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS", help="the argv to run")
    s.set_defaults(jobs_run=guarded("jobs submit", _run_submit))

    ls = verbs.add_parser("list", help="jobs across the fleet, running and pending first")
    add_common(ls)
    ls.add_argument("--state", type=str.upper, choices=STATES, help="only jobs in this state")
    ls.add_argument("--pipeline", help="only this pipeline's jobs")
    ls.add_argument("--limit", type=int, default=200, help="jobs per agent (default 200)")
    ls.set_defaults(jobs_run=guarded("jobs list", _run_list))

    for verb, what, run in (
        ("show", "one job in full", _run_show),
        ("logs", "a job's output (stdout; --stderr); -f follows until it ends", _run_logs),
        ("cancel", "cancel a pending or running job", _action_runner("cancel")),
        ("requeue", "run an ended job again as a new attempt (same id)", _action_runner("requeue")),
    ):
        v = verbs.add_parser(verb, help=what, description=what)
        add_common(v)
        v.add_argument("job_id", metavar="ID")
        v.add_argument("--agent", metavar="NAME", help="look only on this agent")
        if verb == "logs":
            v.add_argument("--stderr", action="store_true", help="the stderr stream")
            v.add_argument("--task", type=int, metavar="N", help="a job array's task (each has its own output)")
            v.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
        if verb in ("cancel", "requeue"):
            v.add_argument("--reason", default="", help="why (recorded in the audit log)")
        v.set_defaults(jobs_run=guarded(f"jobs {verb}", run))


def run(args: argparse.Namespace) -> int:
    """Dispatch `watchkeeper jobs VERB`."""
    return int(args.jobs_run(args))


def configure_quotas(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run_quotas(args: argparse.Namespace) -> int:
    return int(guarded("quotas", _run_quotas)(args))


# --------------------------------------------------------------------------- helpers


def _specs(args: argparse.Namespace, agent: str | None = None) -> list[Any]:
    specs = specs_of(args)
    if not specs:
        raise UsageError("no agents: give --agents or --fleet (or set $WATCHKEEPER_FLEET)")
    if agent is None:
        return specs
    chosen = [s for s in specs if s.name == agent]
    if not chosen:
        raise UsageError(f"no agent {agent!r} in the fleet ({', '.join(s.name for s in specs)})")
    return chosen


async def _with_clients(specs: Sequence[Any], body: Callable[[dict[str, Any]], Any]) -> Any:
    from console.jobs.client import JobsClient

    clients = {s.name: JobsClient(s) for s in specs}
    try:
        return await body(clients)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)


async def _find(clients: dict[str, Any], job_id: str) -> tuple[list[tuple[Any, Any]], list[tuple[str, str]]]:
    """[(client, job)] of the agents that have `job_id`, and [(agent, why)] of those that could not say."""
    from console.core.errors import AgentError, capture

    answers = await asyncio.gather(*(capture(c.job(job_id)) for c in clients.values()))
    found, unread = [], []
    for client, answer in zip(clients.values(), answers, strict=True):
        if isinstance(answer, AgentError) and answer.status_code in (404, 422):
            continue  # not there (or not a job id this agent could have)
        if isinstance(answer, Exception):
            unread.append((client.spec.name, why_failed(answer)))
        else:
            found.append((client, answer))
    return found, unread


def _not_found(err: IO[str], verb: str, job_id: str, total: int, unread: list[tuple[str, str]]) -> int:
    for agent, why in unread:
        err.write(f"watchkeeper jobs {verb}: {agent}: {why}\n")
    err.write(f"watchkeeper jobs {verb}: no job {job_id!r} on {total - len(unread)} of {total} agents\n")
    return EXIT_FAILED


def _one(found: list[tuple[Any, Any]], job_id: str) -> tuple[Any, Any]:
    if len(found) > 1:
        names = ", ".join(c.spec.name for c, _ in found)
        raise UsageError(f"job {job_id!r} is on several agents ({names}): say which with --agent")
    return found[0]


def _job_json(agent: str, job: Any) -> dict[str, Any]:
    return {"agent": agent, **job.model_dump(mode="json")}


def _state_line(job: Any) -> str:
    from console.jobs.rows import state_reason

    why = state_reason(job)
    return f"{job.state}" + (f" ({why})" if why and why != "-" else "")


# --------------------------------------------------------------------------- submit


def _submit_body(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from agent.schemas import JobSubmit

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command: put it after --, e.g. jobs submit --pipeline training -- python train.py")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: say K=V")
        env[key] = value
    gpus: Any = None
    if args.gpus is not None:
        text = args.gpus.strip()
        gpus = int(text) if text.isdigit() else [g.strip() for g in text.split(",") if g.strip()]
    fields: dict[str, Any] = {
        "pipeline": args.pipeline,
        "command": command,
        "cpu": args.cpu,
        "mem": args.mem,
        "gpus": gpus,
        "time_limit": args.time,
        "env": env,
        "workdir": args.workdir,
        "retries": args.retries,
        "array": args.array,
        "array_parallel": args.array_parallel,
        "reason": args.reason,
        "name": args.name,
    }
    try:
        return JobSubmit.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        flag = {"time_limit": "time", "command": "command"}.get(str(first["loc"][0]) if first["loc"] else "", where)
        raise UsageError(f"--{flag}: {first['msg']}") from None


def _run_submit(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    body = _submit_body(args)
    specs = _specs(args, args.agent)
    if len(specs) > 1:
        names = ", ".join(s.name for s in specs)
        raise UsageError(f"{len(specs)} agents ({names}): say which runs the job with --agent")
    spec = specs[0]

    async def go(clients: dict[str, Any]) -> Any:
        return await clients[spec.name].submit_job(body)

    try:
        job = asyncio.run(_with_clients(specs, go))
    except Exception as exc:
        err.write(f"watchkeeper jobs submit: {spec.name}: not submitted: {why_failed(exc)}\n")
        return EXIT_FAILED
    if args.json:
        emit_json(out, _job_json(spec.name, job))
    else:
        out.write(f"{job.id} submitted on {spec.name}: {_state_line(job)}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- list


def _run_list(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import time

    from console.jobs.rows import JobRow, job_key, render_jobs

    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> list[Any]:
        from console.core.errors import capture

        return list(
            await asyncio.gather(
                *(capture(c.jobs(state=args.state, pipeline=args.pipeline, limit=args.limit)) for c in clients.values())
            )
        )

    answers = asyncio.run(_with_clients(specs, go))
    now = time.time()
    rows, agents, unread, without = [], [], [], []
    for order, (spec, answer) in enumerate(zip(specs, answers, strict=True)):
        entry: dict[str, Any] = {"name": spec.name, "url": spec.url, "jobs": "ok", "error": None, "total": None}
        if isinstance(answer, Exception):
            entry.update(jobs="error", error=why_failed(answer))
            unread.append(f"{spec.name} ({entry['error']})")
        elif answer is None:
            entry["jobs"] = "none"
            without.append(spec.name)
        else:
            entry["total"] = answer.total
            rows.extend(JobRow(job_key(spec.name, j.id), spec.name, order, spec.name, j, now) for j in answer.jobs)
        agents.append(entry)
    rows.sort(key=JobRow.sort_key)
    if args.json:
        emit_json(out, {"state": args.state, "pipeline": args.pipeline, "jobs": [r.as_json() for r in rows],
                        "agents": agents})  # fmt: skip
    elif rows:
        out.write(render_jobs(rows) + "\n")
    elif not unread:
        out.write("no jobs\n")
    if without:
        err.write(f"watchkeeper jobs list: no jobs on {', '.join(without)} (older agent, or jobs off)\n")
    if unread:
        err.write(f"watchkeeper jobs list: {len(unread)} of {len(specs)} agents not read: {', '.join(unread)}\n")
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- show, logs


def _run_show(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import time

    from console.jobs.rows import JobRow, detail_lines, job_key

    specs = _specs(args, args.agent)
    found, unread = asyncio.run(_with_clients(specs, lambda clients: _find(clients, args.job_id)))
    if not found:
        return _not_found(err, "show", args.job_id, len(specs), unread)
    if args.json:
        emit_json(out, [_job_json(c.spec.name, j) for c, j in found] if len(found) > 1 else _job_json(
            found[0][0].spec.name, found[0][1]))  # fmt: skip
    else:
        now = time.time()
        for i, (client, job) in enumerate(found):
            name = client.spec.name
            row = JobRow(job_key(name, job.id), name, i, name, job, now + client.clock_offset_s)
            out.write(("\n" if i else "") + "\n".join(detail_lines(row)) + "\n")
    return EXIT_OK


def _run_logs(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    specs = _specs(args, args.agent)
    stream = "stderr" if args.stderr else "stdout"

    async def go(clients: dict[str, Any]) -> int:
        from console.jobs.logs import LogTail, read_on

        found, unread = await _find(clients, args.job_id)
        if not found:
            return _not_found(err, "logs", args.job_id, len(specs), unread)
        client, job = _one(found, args.job_id)
        tail = LogTail(job.id, stream, keep=1)

        async def fetch(offset: int) -> Any:
            return await client.job_log(job.id, stream, offset, task=args.task)

        warned = 0
        while True:
            before = tail.offset
            text = await read_on(tail, fetch, max_requests=64)
            if tail.dropped_bytes > warned:
                err.write(f"watchkeeper jobs logs: {tail.dropped_bytes} bytes cut by the agent's size cap\n")
                warned = tail.dropped_bytes
            if args.json:
                if text or tail.eof:
                    doc = {"agent": client.spec.name, "job_id": job.id, "stream": stream, "offset": before,
                           "next_offset": tail.offset, "text": text, "eof": tail.eof}  # fmt: skip
                    out.write(json.dumps(doc) + "\n")
            else:
                out.write(text)
            out.flush()
            if not args.follow or tail.eof:
                return EXIT_OK
            await asyncio.sleep(FOLLOW_POLL_S)

    try:
        return int(asyncio.run(_with_clients(specs, go)))
    except UsageError:
        raise
    except Exception as exc:
        err.write(f"watchkeeper jobs logs: {why_failed(exc)}\n")
        return EXIT_FAILED


# --------------------------------------------------------------------------- cancel, requeue


def _action_runner(action: str) -> Callable[[argparse.Namespace, IO[str], IO[str]], int]:
    done = {"cancel": "cancelled", "requeue": "requeued"}[action]

    def run_action(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
        specs = _specs(args, args.agent)

        async def go(clients: dict[str, Any]) -> Any:
            found, unread = await _find(clients, args.job_id)
            if not found:
                return None, unread
            client, job = _one(found, args.job_id)
            try:
                return (client.spec.name, await client.job_action(job.id, action, args.reason)), unread
            except Exception as exc:
                return (client.spec.name, exc), unread

        result, unread = asyncio.run(_with_clients(specs, go))
        if result is None:
            return _not_found(err, action, args.job_id, len(specs), unread)
        agent, answer = result
        if isinstance(answer, Exception):
            if args.json:
                emit_json(out, {"agent": agent, "job_id": args.job_id, "action": action, "error": why_failed(answer)})
            err.write(f"watchkeeper jobs {action}: {args.job_id} on {agent}: not {done}: {why_failed(answer)}\n")
            return EXIT_FAILED
        if args.json:
            emit_json(out, _job_json(agent, answer))
        else:
            out.write(f"{answer.id} on {agent}: {done}; now {_state_line(answer)}\n")
        return EXIT_OK

    return run_action


# --------------------------------------------------------------------------- quotas


def _run_quotas(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.jobs.quota_rows import QuotaRow, host_line, quota_key, render_quotas

    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> list[Any]:
        from console.core.errors import capture

        return list(await asyncio.gather(*(capture(c.quotas()) for c in clients.values())))

    answers = asyncio.run(_with_clients(specs, go))
    rows, hosts, agents, unread, without = [], [], [], [], []
    for order, (spec, answer) in enumerate(zip(specs, answers, strict=True)):
        entry: dict[str, Any] = {"name": spec.name, "url": spec.url, "quotas": "ok", "error": None}
        if isinstance(answer, Exception):
            entry.update(quotas="error", error=why_failed(answer))
            unread.append(f"{spec.name} ({entry['error']})")
        elif answer is None:
            entry["quotas"] = "none"
            without.append(spec.name)
        else:
            hosts.append(host_line(spec.name, answer))
            entry.update({k: v for k, v in answer.model_dump(mode="json").items() if k != "quotas"})
            rows.extend(
                QuotaRow(quota_key(spec.name, q.pipeline), spec.name, order, spec.name, q) for q in answer.quotas
            )
        agents.append(entry)
    rows.sort(key=QuotaRow.sort_key)
    if args.json:
        emit_json(out, {"quotas": [r.as_json() for r in rows], "agents": agents})
    else:
        if rows:
            out.write(render_quotas(rows) + "\n")
        elif not unread:
            out.write("no quotas\n")
        for line in hosts:
            out.write(line + "\n")
    if without:
        err.write(f"watchkeeper quotas: no jobs on {', '.join(without)} (older agent, or jobs off)\n")
    if unread:
        err.write(f"watchkeeper quotas: {len(unread)} of {len(specs)} agents not read: {', '.join(unread)}\n")
        return EXIT_FAILED
    return EXIT_OK
