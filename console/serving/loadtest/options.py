"""The loadtest's options: its bounds, the parser's arguments and the agent it targets."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.core.config import TOKEN_ENV, AgentSpec, FleetConfigError, name_for_url, resolve_fleet, validate_url

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_DURATION_S = 10.0
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 10_000_000
MAX_CONCURRENCY = 1024
MAX_ROWS_PER_REQUEST = 100_000
DEFAULT_TIMEOUT_S = 10.0


class LoadtestError(Exception):
    """A problem before the run starts: printed as one line, exit 2."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    endpoint: str
    spec: AgentSpec
    duration_s: float
    requests: int | None
    concurrency: int
    rows: tuple[int, int]
    data: Path | None = None
    missing_rate: float = 0.0
    seed: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    columnar: bool = False
    as_json: bool = False


def parse_rows(value: str) -> tuple[int, int]:
    """'5' -> (5, 5); '1-50' -> (1, 50); within 1..MAX_ROWS_PER_REQUEST."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
    if not m:
        raise argparse.ArgumentTypeError(f"rows must be N or MIN-MAX, e.g. 1-50: {value!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not 1 <= lo <= hi <= MAX_ROWS_PER_REQUEST:
        raise argparse.ArgumentTypeError(f"rows must satisfy 1 <= MIN <= MAX <= {MAX_ROWS_PER_REQUEST:,}")
    return lo, hi


def _bounded(kind: Callable[[str], Any], lo: float, hi: float, what: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not lo <= number <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo:g} and {hi:g}")
        return number

    return parse


def configure(p: argparse.ArgumentParser) -> None:
    """Add the loadtest options to its subparser."""
    p.add_argument("endpoint", metavar="ENDPOINT", help="endpoint name on the agent")
    p.add_argument(
        "--agent",
        metavar="URL|NAME",
        help="agent address (token from $WATCHKEEPER_TOKEN) or a name from the fleet; default: the fleet's only agent",
    )
    p.add_argument("--agents", metavar="URL,...", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (see watchkeeper -h)")
    p.add_argument(
        "--duration",
        type=_bounded(float, 0.1, MAX_DURATION_S, "--duration"),
        metavar="S",
        help=f"stop after S seconds (default {DEFAULT_DURATION_S:g}; with only --requests: {MAX_DURATION_S:g})",
    )
    p.add_argument(
        "--requests",
        type=_bounded(int, 1, MAX_REQUESTS, "--requests"),
        metavar="N",
        help="stop after N requests",
    )
    p.add_argument(
        "--concurrency",
        type=_bounded(int, 1, MAX_CONCURRENCY, "--concurrency"),
        default=8,
        metavar="C",
        help="requests in flight at once (default 8)",
    )
    p.add_argument(
        "--rows",
        type=parse_rows,
        default=(1, 1),
        metavar="MIN-MAX",
        help="rows per request, drawn uniformly (default 1-1)",
    )
    p.add_argument("--data", type=Path, metavar="FILE", help="sample rows from a parquet, CSV or JSON-lines file")
    p.add_argument(
        "--missing-rate",
        type=_bounded(float, 0.0, 1.0, "--missing-rate"),
        default=0.0,
        metavar="P",
        help="share of feature values sent as null (default 0)",
    )
    p.add_argument("--seed", type=int, help="random seed for payloads (default: random)")
    p.add_argument(
        "--timeout",
        type=_bounded(float, 0.01, 600, "--timeout"),
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-request timeout (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument("--columnar", action="store_true", help='send {"columns": {...}} instead of {"records": [...]}')
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def options_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Options:
    """Validate the parsed command line into `Options` (raises LoadtestError)."""
    env = dict(os.environ) if env is None else env
    agent, agents, fleet = (getattr(args, k, None) for k in ("agent", "agents", "fleet"))
    spec = resolve_target(agent, agents, fleet, env)
    duration = args.duration
    if duration is None:
        duration = MAX_DURATION_S if args.requests is not None else DEFAULT_DURATION_S
    if args.data is not None and not args.data.is_file():
        raise LoadtestError(f"--data: no such file: {args.data}")
    return Options(
        endpoint=args.endpoint,
        spec=spec,
        duration_s=duration,
        requests=args.requests,
        concurrency=args.concurrency,
        rows=args.rows,
        data=args.data,
        missing_rate=args.missing_rate,
        seed=args.seed,
        timeout_s=args.timeout,
        columnar=args.columnar,
        as_json=args.json,
    )


def resolve_target(agent: str | None, agents: str | None, fleet: str | None, env: dict[str, str]) -> AgentSpec:
    """`--agent URL`, `--agent NAME` from the fleet, or the fleet's only agent."""
    if agent and "://" in agent:
        try:
            url = validate_url(agent)
        except FleetConfigError as exc:
            raise LoadtestError(str(exc)) from None
        return AgentSpec(name=name_for_url(url), url=url, token=env.get(TOKEN_ENV) or None, name_from_url=True)
    try:
        specs = resolve_fleet(agents, fleet, env=env)
    except FleetConfigError as exc:
        raise LoadtestError(f"{exc} (or give --agent URL)") from None
    if agent:
        match = [s for s in specs if s.name == agent]
        if not match:
            raise LoadtestError(f"no agent named {agent!r} in the fleet ({', '.join(s.name for s in specs)})")
        return match[0]
    if len(specs) != 1:
        raise LoadtestError(f"the fleet has {len(specs)} agents: pick one with --agent NAME|URL")
    return specs[0]
