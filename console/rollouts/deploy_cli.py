"""`watchkeeper deploy`: start a rollout on every agent with the endpoint, optionally wait for it (see
`console.rollouts.cli` for the whole story).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import IO, Any

from console.rollouts.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    HostResult,
    RolloutsUsageError,
    add_common,
    capture_result,
    emit_json,
    specs_of,
    why_failed,
    with_clients,
)

STRATEGIES = ("canary", "bluegreen", "shadow", "ab")
# `deploy --wait` stops waiting for a rollout in these states (ended, or waiting for a human).
WAIT_DONE = frozenset({"aborted", "promoted", "rolled_back", "rejected", "awaiting_approval", "paused"})
FAILED_END = frozenset({"aborted", "rejected", "rolled_back"})
_GATE_RE = re.compile(r"^(?P<metric>[a-z_][a-z0-9_]*):(?P<plus>\+)?(?P<value>[0-9.eE+-]+?)(?P<pct>%)?$")


def configure_deploy(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper deploy`."""
    add_common(p)
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

    from agent.schemas import RolloutCreate

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
        return HostResult(name, "failed", error=why_failed(exc))
    if info.model != model:
        return HostResult(name, "failed", error=f"{endpoint!r} serves model {info.model!r}, not {model!r}")
    try:
        rollout = await client.start_rollout(endpoint, create)
    except RolloutRefused as exc:
        if exc.rejected:
            return HostResult(name, "rejected", error=exc.message, gate=exc.gate)
        return HostResult(name, "failed", error=exc.message)
    except Exception as exc:
        return HostResult(name, "failed", error=why_failed(exc))
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
        answers = await asyncio.gather(*(capture_result(clients[r.agent].rollout(r.rollout.id)) for r in pending))
        for result, answer in zip(pending, answers, strict=True):
            if isinstance(answer, Exception):
                why = why_failed(answer)
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


def run_deploy(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.poll <= 0:
        raise RolloutsUsageError("--poll must be > 0")
    model, create = build_create(args)
    specs = specs_of(args)

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

    results, finished = asyncio.run(with_clients(specs, go))
    started = [r for r in results if r.status == "started"]
    rejected = [r for r in results if r.status == "rejected"]
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    ended_badly = [r for r in started if r.rollout.state in FAILED_END]
    if args.json:
        emit_json(
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
