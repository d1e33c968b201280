"""`watchkeeper deploy`, `watchkeeper rollouts` and the rollout actions, across the fleet.

    watchkeeper deploy ENDPOINT --model NAME:VERSION --strategy canary|bluegreen|shadow|ab
                       [--plan FILE] [--gate METRIC:THRESHOLD ...] [--dataset NAME] [--reason TEXT]
                       [--wait [--poll S] [--wait-timeout S]] [--json]
    watchkeeper rollouts [--all] [--json]
    watchkeeper approve|reject|promote|pause|resume|abort|rollback ID|ENDPOINT [--reason TEXT] [--json]

Agents come from `--agents`/`--fleet` (or `$WATCHKEEPER_FLEET`), as for `status`.

`deploy` starts the rollout on every agent that has the endpoint (`GET /api/v1/endpoints/{name}` 200; the
others are skipped) and reports each host. `--plan` is a JSON or TOML file: a list of steps (JSON; in TOML
`[[steps]]` tables) or a whole `RolloutCreate` (guards, A/B settings...); the options given on the
command line win over the file. `--gate` takes `METRIC:THRESHOLD` (an absolute bar), `METRIC:+DELTA` (beat
stable by DELTA) or `METRIC:+P%` (beat stable by P percent), repeatable. With `--wait` it then polls until
every rollout has ended or waits for a human (awaiting approval, or paused), printing a line whenever one
moves (on stderr with `--json`).

An action's argument is a rollout id (`r-...`, looked up on every agent) or an endpoint name: then it
acts on that endpoint's active rollout on every agent that has one (`rollback` also takes the newest
promoted one when none is active). `approve` and `reject` send the step that awaits approval.

Exit codes: 0 done everywhere; 1 some agent could not be reached or refused (one line each on stderr,
or in the JSON); 2 usage: bad options, an unreadable plan file, no agents; 3 the candidate was rejected
somewhere: a failed validation gate, or (with `--wait`) a rollout that ended aborted, rejected or rolled back.
Like the rest of the console this imports nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import IO, Any

from console.rollouts.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    HostResult,
    add_common,
    capture_result,
    emit_json,
    guarded,
    specs_of,
    why_failed,
    with_clients,
)
from console.rollouts.deploy_cli import configure_deploy, run_deploy

ACTION_HELP = {
    "approve": "approve the step awaiting approval of a rollout (ID, or ENDPOINT on every agent)",
    "reject": "reject the step awaiting approval: the rollout ends, traffic back to stable",
    "promote": "promote a rollout now, skipping its remaining steps",
    "pause": "pause a running rollout (traffic split kept, guards watching)",
    "resume": "resume a paused rollout",
    "abort": "abort a rollout: all traffic back to stable",
    "rollback": "roll back a rollout, also one already promoted",
}
DONE_DEFAULT = {
    "approve": "approved",
    "reject": "rejected",
    "promote": "promoted",
    "pause": "paused",
    "resume": "resumed",
    "abort": "aborted",
    "rollback": "rolled back",
}


def configure_rollouts(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper rollouts`."""
    add_common(p)
    p.add_argument("--all", action="store_true", help="ended rollouts too (default: active ones)")


def configure_action(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper approve|reject|...`."""
    add_common(p)
    p.add_argument("target", metavar="ID|ENDPOINT", help="a rollout id, or an endpoint (its active rollout everywhere)")
    p.add_argument("--reason", default="", help="why (recorded in the audit log)")


# --------------------------------------------------------------------------- rollouts (list)


def _run_rollouts(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.rollouts.rows import RolloutRow, render_rollouts, rollout_key

    specs = specs_of(args)

    async def go(clients: dict[str, Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                *(capture_result(c.rollouts(active=None if args.all else True)) for c in clients.values())
            )
        )

    answers = asyncio.run(with_clients(specs, go))
    now = time.time()
    rows, agents, unread, without = [], [], [], []
    for order, (spec, answer) in enumerate(zip(specs, answers, strict=True)):
        entry: dict[str, Any] = {"name": spec.name, "url": spec.url, "rollouts": "ok", "error": None}
        if isinstance(answer, Exception):
            entry.update(rollouts="error", error=why_failed(answer))
            unread.append(f"{spec.name} ({entry['error']})")
        elif answer is None:
            entry["rollouts"] = "none"
            without.append(spec.name)
        else:
            for r in answer:
                rows.append(RolloutRow(rollout_key(spec.name, r.id), spec.name, order, spec.name, r, now))
        agents.append(entry)
    rows.sort(key=RolloutRow.sort_key)
    if args.json:
        emit_json(out, {"all": bool(args.all), "rollouts": [r.as_json() for r in rows], "agents": agents})
    else:
        out.write(_rollouts_text(rows, render_rollouts, "" if args.all else "active ", len(specs), unread) + "\n")
    if without:
        err.write(f"watchkeeper rollouts: no rollouts on {', '.join(without)} (older agent, or rollouts off)\n")
    if unread:
        err.write(f"watchkeeper rollouts: {len(unread)} of {len(specs)} agents not read: {', '.join(unread)}\n")
        return EXIT_FAILED
    return EXIT_OK


def _rollouts_text(
    rows: list[Any], render: Callable[[list[Any]], str], kind: str, total: int, unread: list[str]
) -> str:
    """The table, or what is known to be empty; an agent that could not be read is never an empty answer."""
    missing = f"{len(unread)} of {total} agents not read: {', '.join(unread)}"
    if rows:
        return render(rows) + (f"\n({missing})" if unread else "")
    if not unread:
        return f"no {kind}rollouts"
    if len(unread) == total:
        return f"rollouts unknown: {missing}"
    return f"no {kind}rollouts on {total - len(unread)} of {total} agents; {len(unread)} not read: {', '.join(unread)}"


# --------------------------------------------------------------------------- actions


async def _find_targets(client: Any, target: str, action: str) -> tuple[Any | None, list[Any]]:
    """(the rollout with id `target` on this agent, or None; the rollouts of endpoint `target` to act on).
    Raises AgentError when the agent can't be read; an agent without rollouts has none."""
    from console.core.errors import AgentError

    async def by_id() -> Any | None:
        try:
            return await client.rollout(target)
        except AgentError as exc:
            if exc.status_code in (404, 422) or (exc.status_code == 503 and exc.error_code == "unavailable"):
                return None
            raise

    # Filtered here rather than with `?endpoint=`: the agent refuses a query that is no endpoint name.
    found, active = await asyncio.gather(by_id(), client.rollouts(active=True))
    mine = [r for r in active or [] if r.endpoint == target]
    if not mine and action == "rollback" and active is not None:
        ended = [r for r in await client.rollouts(active=False) or [] if r.endpoint == target]
        newest = max(ended, key=lambda r: r.ended_at or r.updated_at, default=None)
        if newest is not None and newest.state == "promoted":
            mine = [newest]
    return found, mine


async def _act_on(client: Any, rollout: Any, action: str, reason: str) -> HostResult:
    from console.rollouts.rows import RolloutRow, rollout_key

    name = client.spec.name
    extra = {"rollout_id": rollout.id, "endpoint": rollout.endpoint}
    row = RolloutRow(rollout_key(name, rollout.id), name, 0, name, rollout, time.time())
    why = row.blocked(action)
    if why is not None:
        return HostResult(name, "failed", rollout=rollout, error=why, extra=extra)
    step = rollout.awaiting_approval_for if action in ("approve", "reject") else None
    try:
        after = await client.rollout_action(rollout.id, action, step_index=step, reason=reason)
    except Exception as exc:
        return HostResult(name, "failed", rollout=rollout, error=why_failed(exc), extra=extra)
    return HostResult(name, "done", rollout=after, extra={**extra, "step_index": step})


def _action_runner(action: str) -> Callable[[argparse.Namespace, IO[str], IO[str]], int]:
    def run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
        from console.rollouts.rows import where_now

        specs = specs_of(args)
        target = args.target

        async def go(clients: dict[str, Any]) -> tuple[list[HostResult], list[tuple[str, str]]]:
            found = await asyncio.gather(*(capture_result(_find_targets(c, target, action)) for c in clients.values()))
            unreachable: list[tuple[str, str]] = []
            by_id: list[tuple[Any, Any]] = []
            by_endpoint: list[tuple[Any, Any]] = []
            for client, answer in zip(clients.values(), found, strict=True):
                if isinstance(answer, Exception):
                    unreachable.append((client.spec.name, why_failed(answer)))
                    continue
                one, mine = answer
                if one is not None:
                    by_id.append((client, one))
                by_endpoint.extend((client, r) for r in mine)
            chosen = by_id or by_endpoint
            results = await asyncio.gather(*(_act_on(c, r, action, args.reason) for c, r in chosen))
            return list(results), unreachable

        results, unreachable = asyncio.run(with_clients(specs, go))
        done = DONE_DEFAULT[action]
        if args.json:
            emit_json(
                out,
                {
                    "action": action,
                    "target": target,
                    "results": [r.as_json() for r in results],
                    "unreachable": [{"agent": a, "error": e} for a, e in unreachable],
                },
            )
        else:
            for r in results:
                head = f"{r.agent} {r.extra['endpoint']} {r.extra['rollout_id']}"
                if r.status == "done":
                    out.write(f"{head}: {done}; now {where_now(r.rollout)}\n")
                else:
                    out.write(f"{head}: not {done}: {r.error}\n")
        for agent, why in unreachable:
            err.write(f"watchkeeper {action}: {agent}: {why}\n")
        if not results:
            err.write(f"watchkeeper {action}: no rollout {target!r} and no active rollout of endpoint {target!r}")
            err.write(f" on {len(specs) - len(unreachable)} of {len(specs)} agents\n")
            return EXIT_FAILED
        failed = [r for r in results if r.status != "done"]
        if not args.json:
            for r in failed:
                err.write(f"watchkeeper {action}: {r.agent}: {r.error}\n")
        return EXIT_FAILED if failed or unreachable else EXIT_OK

    return run


# --------------------------------------------------------------------------- wiring

# (name, help, configure, run) for console.cli's COMMANDS.
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]], ...] = (
    (
        "deploy",
        "start a rollout of a model version on every agent with the endpoint (exit 3 if a gate rejects it)",
        configure_deploy,
        guarded("deploy", run_deploy),
    ),
    (
        "rollouts",
        "list the rollouts of every agent, those awaiting approval first (exit 1 if some agent was not read)",
        configure_rollouts,
        guarded("rollouts", _run_rollouts),
    ),
    *((name, help, configure_action, guarded(name, _action_runner(name))) for name, help in ACTION_HELP.items()),
)
