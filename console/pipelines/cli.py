"""`watchkeeper pipelines …`, across the fleet.

    watchkeeper pipelines register FILE [--agent NAME]
    watchkeeper pipelines run NAME [--param K=V]... [--from STEP] [--only STEP]... [--no-cache] [--reason TEXT]
    watchkeeper pipelines runs [NAME] [--state S] [--limit N]
    watchkeeper pipelines show RUN          watchkeeper pipelines cancel RUN [--reason TEXT]
    watchkeeper pipelines compare RUN_A RUN_B

Every verb takes `--agents`/`--fleet` (as `status` does), `--agent NAME` and `--json`. `register` goes
to one agent (the one named, or the only one); `run` to the agent that has the pipeline; `runs` asks
every agent; `show`, `cancel` and `compare` find the run(s) on every agent.

Exit codes: 0 done; 1 an agent could not be read or refused (one line on stderr); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
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

HELP = "register, run, list, show, cancel and compare pipeline runs on the fleet's agents"
STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")


class UsageError(RolloutsUsageError):
    """Exit 2 (printed as one line by `guarded`)."""


def configure(p: argparse.ArgumentParser) -> None:
    """`watchkeeper pipelines` and its verbs."""
    verbs = p.add_subparsers(dest="pipelines_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    def verb(name: str, what: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=what, description=what)
        add_common(v)
        v.add_argument("--agent", metavar="NAME", help="only this agent")
        v.set_defaults(pipelines_run=guarded(f"pipelines {name}", _failing(name, run)))
        return v

    verb("register", "register (or update) a pipeline from its TOML file", _run_register).add_argument(
        "file", metavar="FILE"
    )
    r = verb("run", "start a run of a pipeline", _run_run)
    r.add_argument("name", metavar="NAME")
    r.add_argument("--param", metavar="K=V", action="append", default=[], help="a parameter (repeatable)")
    r.add_argument("--from", dest="from_step", metavar="STEP", help="run STEP and what follows; reuse the rest")
    r.add_argument("--only", metavar="STEP", action="append", default=[], help="run only STEP (repeatable)")
    r.add_argument("--no-cache", action="store_true", help="run every step, even with a cached result")
    r.add_argument("--reason", default="", help="why (recorded in the audit log)")
    ls = verb("runs", "runs, newest first (of one pipeline, or all)", _run_runs)
    ls.add_argument("name", metavar="NAME", nargs="?")
    ls.add_argument("--state", type=str.upper, choices=STATES, help="only runs in this state")
    ls.add_argument("--limit", type=int, default=50, help="runs per agent (default 50)")
    verb("show", "one run in full: its steps as a tree, metrics", _run_show).add_argument("run_id", metavar="RUN")
    c = verb("cancel", "cancel a pending or running run", _run_cancel)
    c.add_argument("run_id", metavar="RUN")
    c.add_argument("--reason", default="", help="why (recorded in the audit log)")
    cmp = verb("compare", "two runs side by side: params, metrics, steps", _run_compare)
    cmp.add_argument("run_a", metavar="RUN_A")
    cmp.add_argument("run_b", metavar="RUN_B")


def run(args: argparse.Namespace) -> int:
    """Dispatch `watchkeeper pipelines VERB`."""
    return int(args.pipelines_run(args))


# --------------------------------------------------------------------------- helpers


def _specs(args: argparse.Namespace) -> list[Any]:
    specs = specs_of(args)
    if not specs:
        raise UsageError("no agents: give --agents or --fleet (or set $WATCHKEEPER_FLEET)")
    agent = getattr(args, "agent", None)
    if agent is None:
        return specs
    chosen = [s for s in specs if s.name == agent]
    if not chosen:
        raise UsageError(f"no agent {agent!r} in the fleet ({', '.join(s.name for s in specs)})")
    return chosen


def _with_clients(specs: Sequence[Any], body: Callable[[dict[str, Any]], Any]) -> Any:
    from console.pipelines.client import PipelinesClient

    async def go() -> Any:
        clients = {s.name: PipelinesClient(s) for s in specs}
        try:
            return await body(clients)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)

    return asyncio.run(go())


async def _find(clients: dict[str, Any], ask: Callable[[Any], Any]) -> tuple[list[tuple[Any, Any]], list[str]]:
    """[(client, answer)] of the agents that have it, and ["agent (why)"] of those that could not say."""
    from console.core.errors import AgentError, capture

    answers = await asyncio.gather(*(capture(ask(c)) for c in clients.values()))
    found, unread = [], []
    for client, answer in zip(clients.values(), answers, strict=True):
        if isinstance(answer, AgentError) and answer.status_code in (404, 422):
            continue
        if isinstance(answer, Exception):
            unread.append(f"{client.spec.name} ({why_failed(answer)})")
        else:
            found.append((client, answer))
    return found, unread


def _one(found: list[tuple[Any, Any]], what: str, total: int, unread: list[str]) -> tuple[Any, Any]:
    if not found:
        if unread:
            raise _Failed(f"{what} not found; {len(unread)} of {total} agents not read: {', '.join(unread)}")
        raise _Failed(f"no {what} on {total} agent{'s' if total > 1 else ''}")
    if len(found) > 1:
        raise UsageError(f"{what} is on several agents ({', '.join(c.spec.name for c, _ in found)}): say --agent")
    return found[0]


class _Failed(Exception):
    """Exit 1 with this line."""


def _failing(name: str, body: Callable[[argparse.Namespace, IO[str], IO[str]], int]) -> Callable[..., int]:
    def run_verb(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
        try:
            return body(args, out, err)
        except _Failed as exc:
            err.write(f"watchkeeper pipelines {name}: {exc}\n")
            return EXIT_FAILED

    return run_verb


def parse_param(item: str) -> tuple[str, Any]:
    """`K=V` with V read as TOML reads a scalar: true/false, an integer, a float, else the text."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--param {item!r}: say K=V")
    if text in ("true", "false"):
        return key, text == "true"
    for kind in (int, float):
        try:
            return key, kind(text)
        except ValueError:
            pass
    return key, text


# --------------------------------------------------------------------------- verbs


def _run_register(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    path = Path(args.file)
    try:
        content = path.read_text()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    specs = _specs(args)
    if len(specs) > 1:
        raise UsageError(f"{len(specs)} agents ({', '.join(s.name for s in specs)}): say which with --agent")
    spec = specs[0]
    try:
        pipe = _with_clients(specs, lambda c: c[spec.name].register_pipeline(content, str(path.resolve())))
    except Exception as exc:
        err.write(f"watchkeeper pipelines register: {spec.name}: not registered: {why_failed(exc)}\n")
        return EXIT_FAILED
    if args.json:
        emit_json(out, {"agent": spec.name, **pipe.model_dump(mode="json")})
    else:
        out.write(f"{pipe.name} registered on {spec.name}: {len(pipe.steps)} steps, version {pipe.version[:19]}\n")
    return EXIT_OK


def _run_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from pydantic import ValidationError

    from agent.schemas import RunRequest

    try:
        request = RunRequest(params=dict(parse_param(p) for p in args.param), from_step=args.from_step,
                             only=args.only, no_cache=args.no_cache, reason=args.reason)  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_step', '')}: {first['msg']}") from None
    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> Any:
        found, unread = await _find(clients, lambda c: c.pipeline(args.name))
        client, _ = _one(found, f"pipeline {args.name!r}", len(specs), unread)
        return client.spec.name, await client.start_run(args.name, request)

    try:
        agent, started = _with_clients(specs, go)
    except (_Failed, UsageError):
        raise
    except Exception as exc:
        err.write(f"watchkeeper pipelines run: {args.name}: not started: {why_failed(exc)}\n")
        return EXIT_FAILED
    if args.json:
        emit_json(out, {"agent": agent, **started.model_dump(mode="json")})
    else:
        out.write(f"{started.id} started on {agent}: {started.pipeline} {started.state}\n")
    return EXIT_OK


def _run_runs(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.core.errors import capture
    from console.pipelines.rows import RUN_COLUMNS, render, run_row

    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> list[Any]:
        asks = (c.runs(pipeline=args.name, state=args.state, limit=args.limit) for c in clients.values())
        return list(await asyncio.gather(*(capture(a) for a in asks)))

    answers = _with_clients(specs, go)
    runs, unread = [], []
    for spec, answer in zip(specs, answers, strict=True):
        if isinstance(answer, Exception):
            unread.append(f"{spec.name} ({why_failed(answer)})")
        else:
            runs.extend((spec.name, r) for r in answer.runs)
    runs.sort(key=lambda ar: -ar[1].created_at)
    if args.json:
        emit_json(out, {"runs": [{"agent": a, **r.model_dump(mode="json")} for a, r in runs], "unread": unread})
    elif runs:
        out.write(render(RUN_COLUMNS, [run_row(a, r) for a, r in runs]) + "\n")
    elif not unread:
        out.write("no runs\n")
    if unread:
        err.write(f"watchkeeper pipelines runs: {len(unread)} of {len(specs)} agents not read: {', '.join(unread)}\n")
        return EXIT_FAILED
    return EXIT_OK


def _run_show(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.pipelines.rows import metrics_beside, render, run_header, run_tree

    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> Any:
        found, unread = await _find(clients, lambda c: c.run(args.run_id))
        client, found_run = _one(found, f"run {args.run_id!r}", len(specs), unread)
        pipe = await client.pipeline(found_run.pipeline)
        listed = await client.runs(pipeline=found_run.pipeline, limit=50)
        earlier = [r for r in listed.runs if r.id != found_run.id and r.created_at <= found_run.created_at]
        previous = await client.run(earlier[0].id) if earlier else None
        return client.spec.name, found_run, pipe, previous, client.clock_offset_s

    agent, found_run, pipe, previous, offset = _with_clients(specs, go)
    if args.json:
        emit_json(out, {"agent": agent, **found_run.model_dump(mode="json")})
        return EXIT_OK
    lines = [*run_header(agent, found_run), ""]
    lines += [t.text for t in run_tree(found_run, pipe.steps, now=time.time() + offset)]
    metrics = metrics_beside(found_run, previous)
    if metrics:
        prev = previous.id if previous else "previous"
        lines += ["", render(("METRIC", "THIS RUN", prev.upper(), "CHANGE"), metrics)]
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _act_on_run(
    specs: Sequence[Any], run_id: str, act: Callable[[Any], Awaitable[Any]], failure: Callable[[str, str], str]
) -> Any:
    """(agent, answer): `act(client)` on the agent that holds run `run_id`; `failure(agent, why)` words
    a failed act (the run not found anywhere says so as `_one` does)."""

    async def go(clients: dict[str, Any]) -> Any:
        found, unread = await _find(clients, lambda c: c.run(run_id))
        client, _ = _one(found, f"run {run_id!r}", len(specs), unread)
        try:
            return client.spec.name, await act(client)
        except Exception as exc:
            raise _Failed(failure(client.spec.name, why_failed(exc))) from None

    return _with_clients(specs, go)


def _run_cancel(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    agent, done = _act_on_run(
        _specs(args),
        args.run_id,
        lambda c: c.cancel_run(args.run_id, args.reason),
        lambda name, why: f"{args.run_id} on {name}: not cancelled: {why}",
    )
    if args.json:
        emit_json(out, {"agent": agent, **done.model_dump(mode="json")})
    else:
        out.write(f"{done.id} on {agent}: cancelled; now {done.state}\n")
    return EXIT_OK


def _run_compare(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.pipelines.rows import compare_lines

    agent, cmp = _act_on_run(
        _specs(args), args.run_a, lambda c: c.compare(args.run_a, args.run_b), lambda name, why: f"{name}: {why}"
    )
    if args.json:
        emit_json(out, {"agent": agent, **cmp.model_dump(mode="json")})
    else:
        out.write("\n".join(compare_lines(cmp)) + "\n")
    return EXIT_OK
