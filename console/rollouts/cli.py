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
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
STRATEGIES = ("canary", "bluegreen", "shadow", "ab")
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
# `deploy --wait` stops waiting for a rollout in these states (ended, or waiting for a human).
WAIT_DONE = frozenset({"aborted", "promoted", "rolled_back", "rejected", "awaiting_approval", "paused"})
FAILED_END = frozenset({"aborted", "rejected", "rolled_back"})
_GATE_RE = re.compile(r"^(?P<metric>[a-z_][a-z0-9_]*):(?P<plus>\+)?(?P<value>[0-9.eE+-]+?)(?P<pct>%)?$")


class RolloutsUsageError(Exception):
    """Bad options or files, no agents: exit 2."""


# --------------------------------------------------------------------------- options


def _add_common(p: argparse.ArgumentParser) -> None:
    # SUPPRESSed defaults: `watchkeeper --agents X deploy ...` keeps X (see console.cli).
    p.add_argument(
        "--agents", metavar="URL,...", default=argparse.SUPPRESS, help="comma-separated agent addresses, as for status"
    )
    p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (names, tokens)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def configure_deploy(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper deploy`."""
    _add_common(p)
    p.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint to move to the candidate")
    p.add_argument("--model", required=True, metavar="NAME:VERSION", help="the candidate: model and version")
    p.add_argument("--strategy", required=True, choices=STRATEGIES, help="how traffic moves (default plan each)")
    p.add_argument("--plan", metavar="FILE", help="JSON or TOML: a list of steps, or a whole RolloutCreate")
    p.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="METRIC:THRESHOLD",
        help="validation gate: auc:0.8 (absolute), auc:+0.01 (beat stable by), log_loss:+5%% (relative); "
        "repeat the option or separate with commas",
    )
    p.add_argument("--dataset", metavar="NAME", help="registered validation dataset the gate runs on")
    p.add_argument("--reason", default=None, help="why (kept with the rollout and in the audit log)")
    p.add_argument("--wait", action="store_true", help="poll until every rollout ended or waits for a human")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between --wait polls (default 2)")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds")


def configure_rollouts(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper rollouts`."""
    _add_common(p)
    p.add_argument("--all", action="store_true", help="ended rollouts too (default: active ones)")


def configure_action(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper approve|reject|...`."""
    _add_common(p)
    p.add_argument("target", metavar="ID|ENDPOINT", help="a rollout id, or an endpoint (its active rollout everywhere)")
    p.add_argument("--reason", default="", help="why (recorded in the audit log)")


# --------------------------------------------------------------------------- shared plumbing


def _specs(args: argparse.Namespace) -> list[Any]:
    from console.core.config import FleetConfigError, resolve_fleet

    try:
        return resolve_fleet(getattr(args, "agents", None), getattr(args, "fleet", None))
    except FleetConfigError as exc:
        raise RolloutsUsageError(str(exc)) from None


def _emit_json(out: IO[str], doc: Any) -> None:
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _guarded(name: str, run: Callable[[argparse.Namespace, IO[str], IO[str]], int]) -> Callable[..., int]:
    def runner(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
        out, err = out or sys.stdout, err or sys.stderr
        try:
            return run(args, out, err)
        except RolloutsUsageError as exc:
            err.write(f"watchkeeper: error: {exc}\n")
            return EXIT_USAGE

    runner.__name__ = f"run_{name}"
    return runner


@dataclass
class HostResult:
    """What happened on one agent."""

    agent: str
    status: str  # started | skipped | rejected | failed | done
    rollout: Any = None  # RolloutOut
    error: str | None = None
    gate: Any = None  # GateResult of a failed gate
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "status": self.status,
            "error": self.error,
            "rollout": self.rollout.model_dump(mode="json") if self.rollout is not None else None,
            "gate": self.gate.model_dump(mode="json") if self.gate is not None else None,
            **self.extra,
        }


async def _with_clients(specs: Sequence[Any], body: Callable[[dict[str, Any]], Any]) -> Any:
    from console.rollouts.client import RolloutsClient

    clients = {s.name: RolloutsClient(s) for s in specs}
    try:
        return await body(clients)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)


async def _capture(coro: Any) -> Any:
    from console.core.errors import capture

    return await capture(coro)


def _why(exc: BaseException) -> str:
    from console.core.errors import why

    return why(exc)


# --------------------------------------------------------------------------- deploy


def parse_model(ref: str) -> tuple[str, int]:
    """`NAME:VERSION` -> (name, version)."""
    name, _, version = ref.partition(":")
    if not name or not version.isdigit() or int(version) < 1:
        raise RolloutsUsageError(f"--model {ref!r}: expected NAME:VERSION with VERSION a number >= 1")
    return name, int(version)


def parse_gate(spec: str) -> dict[str, Any]:
    """`auc:0.8` -> threshold; `auc:+0.01` -> min_absolute_change; `auc:+5%` -> min_relative_change 0.05."""
    m = _GATE_RE.match(spec.strip())
    if m is None:
        raise RolloutsUsageError(f"--gate {spec!r}: expected METRIC:THRESHOLD, METRIC:+DELTA or METRIC:+P%")
    try:
        value = float(m["value"])
    except ValueError:
        raise RolloutsUsageError(f"--gate {spec!r}: {m['value']!r} is not a number") from None
    if m["pct"] and not m["plus"]:
        raise RolloutsUsageError(f"--gate {spec!r}: a relative change is written METRIC:+P%")
    if m["pct"]:
        return {"metric": m["metric"], "min_relative_change": value / 100}
    if m["plus"]:
        return {"metric": m["metric"], "min_absolute_change": value}
    return {"metric": m["metric"], "threshold": value}


def load_plan(path: str) -> dict[str, Any]:
    """A plan file as RolloutCreate fields: a JSON list of steps, or a JSON/TOML object."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RolloutsUsageError(f"--plan {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    doc: Any
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RolloutsUsageError(f"--plan {path}: not valid TOML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as json_error:
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                raise RolloutsUsageError(f"--plan {path}: not valid JSON ({json_error}) nor TOML") from None
    if isinstance(doc, list):
        return {"steps": doc}
    if not isinstance(doc, dict):
        raise RolloutsUsageError(f"--plan {path}: expected a list of steps or an object with RolloutCreate fields")
    return doc


def build_create(args: argparse.Namespace) -> tuple[str, Any]:
    """(model name, RolloutCreate) from the options and the plan file; usage errors name the field."""
    from pydantic import ValidationError

    from agent.api.schemas import RolloutCreate

    model, version = parse_model(args.model)
    doc = load_plan(args.plan) if args.plan else {}
    doc["candidate_version"] = version
    doc["strategy"] = args.strategy
    gates = [g for option in args.gate for g in option.split(",") if g.strip()]
    if gates:
        doc["gate"] = [*doc.get("gate", []), *(parse_gate(g) for g in gates)]
    if args.dataset:
        doc["validation_dataset"] = args.dataset
    if args.reason is not None:
        doc["reason"] = args.reason
    try:
        return model, RolloutCreate.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "plan"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RolloutsUsageError(f"invalid rollout: {where}: {first['msg']}{more}") from None


async def _start_on(client: Any, endpoint: str, model: str, create: Any) -> HostResult:
    from console.core.errors import AgentError
    from console.rollouts.client import RolloutRefused

    name = client.spec.name
    try:
        info = await client.endpoint(endpoint)
    except AgentError as exc:
        if exc.status_code == 404:
            return HostResult(name, "skipped", error=f"no endpoint {endpoint!r}")
        return HostResult(name, "failed", error=exc.message)
    except Exception as exc:
        return HostResult(name, "failed", error=_why(exc))
    if info.model != model:
        return HostResult(name, "failed", error=f"{endpoint!r} serves model {info.model!r}, not {model!r}")
    try:
        rollout = await client.start_rollout(endpoint, create)
    except RolloutRefused as exc:
        if exc.rejected:
            return HostResult(name, "rejected", error=exc.message, gate=exc.gate)
        return HostResult(name, "failed", error=exc.message)
    except Exception as exc:
        return HostResult(name, "failed", error=_why(exc))
    return HostResult(name, "started", rollout=rollout)


def _say_start(result: HostResult, out: IO[str]) -> None:
    from console.rollouts.rows import gate_lines, plain, progress_line

    if result.status == "started":
        r = result.rollout
        versions = f"{r.model} v{r.stable_version}→v{r.candidate_version}"
        out.write(f"{result.agent}: started {r.id} ({r.strategy}, {versions})\n")
        out.write(f"  {progress_line(result.agent, r)}\n")
    elif result.status == "rejected":
        out.write(f"{result.agent}: REJECTED: {result.error}\n")
        out.write("".join(f"  {line}\n" for line in plain(gate_lines(result.gate)).splitlines()))
    elif result.status == "skipped":
        out.write(f"{result.agent}: skipped: {result.error}\n")
    else:
        out.write(f"{result.agent}: failed: {result.error}\n")


async def _wait(
    clients: dict[str, Any], results: list[HostResult], poll_s: float, timeout_s: float | None, progress: IO[str]
) -> bool:
    """Poll the started rollouts until each ended or waits for a human; False when the time ran out."""
    from console.rollouts.rows import progress_line

    waiting = [r for r in results if r.status == "started"]
    seen = {r.agent: progress_line(r.agent, r.rollout) for r in waiting}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    errors: dict[str, str] = {}
    while any(r.rollout.state not in WAIT_DONE for r in waiting):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
        pending = [r for r in waiting if r.rollout.state not in WAIT_DONE]
        answers = await asyncio.gather(*(_capture(clients[r.agent].rollout(r.rollout.id)) for r in pending))
        for result, answer in zip(pending, answers, strict=True):
            if isinstance(answer, Exception):
                why = _why(answer)
                if errors.get(result.agent) != why:
                    progress.write(f"{result.agent}: cannot read rollout {result.rollout.id}: {why}\n")
                errors[result.agent] = why
                continue
            errors.pop(result.agent, None)
            result.rollout = answer
            line = progress_line(result.agent, answer)
            if seen.get(result.agent) != line:
                progress.write(line + "\n")
                progress.flush()
                seen[result.agent] = line
    return True


def _run_deploy(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.poll <= 0:
        raise RolloutsUsageError("--poll must be > 0")
    model, create = build_create(args)
    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> tuple[list[HostResult], bool]:
        results = list(await asyncio.gather(*(_start_on(c, args.endpoint, model, create) for c in clients.values())))
        if not args.json:
            for result in results:
                _say_start(result, out)
            out.flush()
        finished = True
        if args.wait and any(r.status == "started" for r in results):
            finished = await _wait(clients, results, args.poll, args.wait_timeout, err if args.json else out)
        return results, finished

    results, finished = asyncio.run(_with_clients(specs, go))
    started = [r for r in results if r.status == "started"]
    rejected = [r for r in results if r.status == "rejected"]
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    ended_badly = [r for r in started if r.rollout.state in FAILED_END]
    if args.json:
        _emit_json(
            out,
            {
                "endpoint": args.endpoint,
                "model": model,
                "candidate_version": create.candidate_version,
                "strategy": create.strategy,
                "waited": bool(args.wait),
                "finished": finished,
                "hosts": [r.as_json() for r in results],
            },
        )
    else:
        if args.wait and started:
            for r in started:
                why = f" ({r.rollout.end_reason})" if r.rollout.end_reason else ""
                out.write(f"{r.agent}: {r.rollout.state.replace('_', ' ')}{why}\n")
        parts = [f"started on {len(started)} of {len(results)} agents"]
        counts = ((rejected, "rejected"), (failed, "failed"), (skipped, "without the endpoint"))
        parts += [f"{len(x)} {what}" for x, what in counts if x]
        out.write(f"deploy {args.endpoint} {model} v{create.candidate_version}: {', '.join(parts)}\n")
    if not finished:
        err.write(f"watchkeeper deploy: gave up waiting after {args.wait_timeout:g}s\n")
    if not started and not rejected and not failed:
        err.write(f"watchkeeper deploy: no agent has endpoint {args.endpoint!r}\n")
        return EXIT_FAILED
    for r in failed:
        err.write(f"watchkeeper deploy: {r.agent}: {r.error}\n")
    if rejected or ended_badly:
        return EXIT_REJECTED
    if failed or not finished:
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- rollouts (list)


def _run_rollouts(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.rollouts.rows import RolloutRow, render_rollouts, rollout_key

    specs = _specs(args)

    async def go(clients: dict[str, Any]) -> list[Any]:
        return list(
            await asyncio.gather(*(_capture(c.rollouts(active=None if args.all else True)) for c in clients.values()))
        )

    answers = asyncio.run(_with_clients(specs, go))
    now = time.time()
    rows, agents, unread, without = [], [], [], []
    for order, (spec, answer) in enumerate(zip(specs, answers, strict=True)):
        entry: dict[str, Any] = {"name": spec.name, "url": spec.url, "rollouts": "ok", "error": None}
        if isinstance(answer, Exception):
            entry.update(rollouts="error", error=_why(answer))
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
        _emit_json(out, {"all": bool(args.all), "rollouts": [r.as_json() for r in rows], "agents": agents})
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
        return HostResult(name, "failed", rollout=rollout, error=_why(exc), extra=extra)
    return HostResult(name, "done", rollout=after, extra={**extra, "step_index": step})


def _action_runner(action: str) -> Callable[[argparse.Namespace, IO[str], IO[str]], int]:
    def run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
        from console.rollouts.rows import where_now

        specs = _specs(args)
        target = args.target

        async def go(clients: dict[str, Any]) -> tuple[list[HostResult], list[tuple[str, str]]]:
            found = await asyncio.gather(*(_capture(_find_targets(c, target, action)) for c in clients.values()))
            unreachable: list[tuple[str, str]] = []
            by_id: list[tuple[Any, Any]] = []
            by_endpoint: list[tuple[Any, Any]] = []
            for client, answer in zip(clients.values(), found, strict=True):
                if isinstance(answer, Exception):
                    unreachable.append((client.spec.name, _why(answer)))
                    continue
                one, mine = answer
                if one is not None:
                    by_id.append((client, one))
                by_endpoint.extend((client, r) for r in mine)
            chosen = by_id or by_endpoint
            results = await asyncio.gather(*(_act_on(c, r, action, args.reason) for c, r in chosen))
            return list(results), unreachable

        results, unreachable = asyncio.run(_with_clients(specs, go))
        done = DONE_DEFAULT[action]
        if args.json:
            _emit_json(
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
        _guarded("deploy", _run_deploy),
    ),
    (
        "rollouts",
        "list the rollouts of every agent, those awaiting approval first (exit 1 if some agent was not read)",
        configure_rollouts,
        _guarded("rollouts", _run_rollouts),
    ),
    *((name, help, configure_action, _guarded(name, _action_runner(name))) for name, help in ACTION_HELP.items()),
)
