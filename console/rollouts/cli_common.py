"""What the rollout verbs share: exit codes, the common options, the agents to ask, one result per host.

Heavy imports (the clients, pydantic) wait until a verb runs, so `watchkeeper --help` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


class RolloutsUsageError(Exception):
    """Bad options or files, no agents: exit 2."""


def add_common(p: argparse.ArgumentParser) -> None:
    # SUPPRESSed defaults: `watchkeeper --agents X deploy ...` keeps X (see console.cli).
    p.add_argument(
        "--agents", metavar="URL,...", default=argparse.SUPPRESS, help="comma-separated agent addresses, as for status"
    )
    p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (names, tokens)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def specs_of(args: argparse.Namespace) -> list[Any]:
    from console.core.config import FleetConfigError, resolve_fleet

    try:
        return resolve_fleet(getattr(args, "agents", None), getattr(args, "fleet", None))
    except FleetConfigError as exc:
        raise RolloutsUsageError(str(exc)) from None


def emit_json(out: IO[str], doc: Any) -> None:
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def guarded(name: str, run: Callable[[argparse.Namespace, IO[str], IO[str]], int]) -> Callable[..., int]:
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


async def with_clients(specs: Sequence[Any], body: Callable[[dict[str, Any]], Any]) -> Any:
    from console.rollouts.client import RolloutsClient

    clients = {s.name: RolloutsClient(s) for s in specs}
    try:
        return await body(clients)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)


async def capture_result(coro: Any) -> Any:
    from console.core.errors import capture

    return await capture(coro)


def why_failed(exc: BaseException) -> str:
    from console.core.errors import why

    return why(exc)
