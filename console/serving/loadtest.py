"""`watchkeeper loadtest ENDPOINT`: drive an endpoint's predict route and report what it did.

    watchkeeper loadtest flights --agent http://10.0.0.5:7070 --duration 30 --concurrency 16 --rows 1-50

Always bounded: it stops after `--duration` seconds or `--requests` requests, whichever comes
first (with only `--requests`, a time cap of MAX_DURATION_S still applies). Payloads are built
before the clock starts, from `--data FILE` (parquet, CSV or JSON lines, read with polars) or
generated from the model version's signature, so the client spends its time sending, not
building JSON. Requests go over one keep-alive HTTP/1.1 connection pool with `--concurrency`
asyncio workers.

The report has client-side latency percentiles (linear interpolation between closest ranks, as
numpy's default), status codes, fallback answers by reason, and the agent process's CPU use over
the run from `process_cpu_seconds_total` on its /metrics, before and after. The client's own CPU
is shown too: near 100 % of one core, the client was the bottleneck and the rates are a lower
bound on what the agent can do.

Exit codes: 0 every request answered 2xx, 1 any error (non-2xx status or transport failure),
2 usage (unknown endpoint, unreachable agent, bad options), 130 interrupted.

No Textual here; from `agent/` only the wire contract.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from agent.api.schemas import API_PREFIX, EndpointInfo, FeatureSpec, ModelVersion
from console.core.client import AgentClient, AgentError, classify_transport_error, http_client
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
# Distinct request bodies built before the run (cycled through), and the most rows they may hold.
BODY_POOL = 256
BODY_POOL_ROWS = 2_000_000
DATA_ROWS_LIMIT = 200_000
# A numeric feature without min/max is drawn from this range.
DEFAULT_RANGE = (0.0, 100.0)
# Give up early when this many requests in a row fail without any answer (agent gone).
ABORT_AFTER_TRANSPORT_ERRORS = 200
CLIENT_BOUND_PERCENT = 90.0


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


# --------------------------------------------------------------------------- payloads


def feature_value(f: FeatureSpec, rng: random.Random) -> Any:
    """A valid random value for one feature of a signature."""
    if f.dtype == "bool":
        return rng.random() < 0.5
    if f.dtype == "category":
        return rng.choice(f.categories) if f.categories else "unknown"
    lo, hi = f.min, f.max
    if lo is None and hi is None:
        lo, hi = DEFAULT_RANGE
    elif lo is None:
        lo = hi - (DEFAULT_RANGE[1] - DEFAULT_RANGE[0])  # type: ignore[operator]
    elif hi is None:
        hi = lo + (DEFAULT_RANGE[1] - DEFAULT_RANGE[0])
    assert lo is not None and hi is not None
    if f.dtype == "int":
        a, b = math.ceil(lo), math.floor(hi)
        return rng.randint(a, b) if a <= b else round(lo)
    return round(rng.uniform(lo, hi), 6)


def generated_rows(features: Sequence[FeatureSpec]) -> Callable[[random.Random], dict[str, Any]]:
    """A row maker for a signature."""

    def make(rng: random.Random) -> dict[str, Any]:
        return {f.name: feature_value(f, rng) for f in features}

    return make


def sampled_rows(rows: Sequence[dict[str, Any]]) -> Callable[[random.Random], dict[str, Any]]:
    """A row maker that samples (with replacement) from rows read from a file."""
    if not rows:
        raise LoadtestError("the data file has no rows")

    def make(rng: random.Random) -> dict[str, Any]:
        return dict(rows[rng.randrange(len(rows))])

    return make


def read_data(path: Path, features: Sequence[str] | None, limit: int = DATA_ROWS_LIMIT) -> tuple[list[dict], list[str]]:
    """Rows of a parquet / CSV / JSON-lines file (first `limit`), restricted to `features` if known.

    Returns the rows and a list of warnings (e.g. features the file lacks).
    """
    import polars as pl

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.scan_parquet(path).head(limit).collect()
        elif suffix in (".csv", ".tsv"):
            frame = pl.scan_csv(path, separator="\t" if suffix == ".tsv" else ",").head(limit).collect()
        elif suffix in (".jsonl", ".ndjson"):
            frame = pl.scan_ndjson(path).head(limit).collect()
        elif suffix == ".json":
            frame = pl.read_json(path).head(limit)
        else:
            raise LoadtestError(f"--data: unknown file type {suffix or '(none)'}: use .parquet, .csv or .jsonl")
    except LoadtestError:
        raise
    except Exception as exc:  # polars raises many kinds; all mean "cannot read this file"
        raise LoadtestError(f"--data: cannot read {path}: {type(exc).__name__}: {exc}") from None
    warnings: list[str] = []
    if features:
        absent = [f for f in features if f not in frame.columns]
        if len(absent) == len(features):
            raise LoadtestError(f"--data: {path} has none of the model's features ({', '.join(features)})")
        if absent:
            warnings.append(f"data file lacks feature(s) {', '.join(absent)}: they are sent as missing")
        frame = frame.select([c for c in features if c in frame.columns])
    # JSON has numbers, strings, booleans and null; anything else (dates, categoricals) goes as text.
    casts = [
        pl.col(name).cast(pl.String)
        for name, dtype in frame.schema.items()
        if not (dtype.is_numeric() or dtype == pl.Boolean or dtype == pl.String)
    ]
    if casts:
        frame = frame.with_columns(casts)
    rows = frame.to_dicts()
    if features:
        for row in rows:
            for f in features:
                row.setdefault(f, None)
    return rows, warnings


@dataclass(frozen=True)
class Body:
    content: bytes
    rows: int


def build_bodies(
    make_row: Callable[[random.Random], dict[str, Any]],
    rng: random.Random,
    *,
    rows: tuple[int, int],
    count: int,
    missing_rate: float = 0.0,
    columnar: bool = False,
) -> list[Body]:
    """`count` request bodies of `rows` (uniform MIN..MAX) rows each, values nulled at `missing_rate`."""
    import orjson

    bodies: list[Body] = []
    for _ in range(count):
        n = rng.randint(rows[0], rows[1])
        records = [make_row(rng) for _ in range(n)]
        if missing_rate > 0:
            for record in records:
                for key in record:
                    if rng.random() < missing_rate:
                        record[key] = None
        if columnar:
            names = list(dict.fromkeys(k for r in records for k in r))
            payload: dict[str, Any] = {"columns": {k: [r.get(k) for r in records] for k in names}}
        else:
            payload = {"records": records}
        bodies.append(Body(orjson.dumps(payload), n))
    return bodies


def pool_size(requests: int | None, max_rows: int) -> int:
    """How many distinct bodies to build: enough variety, bounded in memory."""
    size = max(1, min(BODY_POOL, BODY_POOL_ROWS // max(1, max_rows)))
    return min(size, requests) if requests is not None else size


# --------------------------------------------------------------------------- measuring


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of already sorted values, linear between closest ranks."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


_CPU_LINE = re.compile(r"^process_cpu_seconds_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def cpu_seconds(metrics_text: str) -> float | None:
    """`process_cpu_seconds_total` from a Prometheus text exposition, if present."""
    m = _CPU_LINE.search(metrics_text)
    return float(m.group(1)) if m else None


@dataclass
class Tally:
    """Everything counted during a run."""

    latencies_ms: list[float] = field(default_factory=list)
    status: Counter[int] = field(default_factory=Counter)
    transport: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    rows_sent: int = 0
    rows_ok: int = 0
    consecutive_transport_errors: int = 0

    @property
    def responses(self) -> int:
        return sum(self.status.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.status.items() if not 200 <= code < 300) + sum(self.transport.values())


def fallback_reason(response: httpx.Response) -> str | None:
    """The fallback reason of a 200 answer, or None for a model answer."""
    reason = response.headers.get("x-watchkeeper-fallback")
    if reason is not None:
        return reason or "unknown"
    content = response.content
    if b'"fallback":true' in content or b'"fallback": true' in content:
        try:
            return str(json.loads(content).get("fallback_reason") or "unknown")
        except (ValueError, AttributeError):
            return "unknown"
    return None


async def drive(
    client: httpx.AsyncClient,
    path: str,
    bodies: Sequence[Body],
    *,
    concurrency: int,
    duration_s: float,
    requests: int | None,
    timeout_s: float,
    stop: asyncio.Event | None = None,
    run_id: str = "lt",
) -> tuple[Tally, float, str | None]:
    """Send requests until a bound is reached; returns the tally, elapsed seconds, abort reason."""
    tally = Tally()
    stop = stop or asyncio.Event()
    aborted: list[str] = []
    perf = time.perf_counter
    start = perf()
    deadline = start + duration_s

    async def worker() -> None:
        while not stop.is_set():
            if requests is not None and tally.requests >= requests:
                return
            if perf() >= deadline:
                return
            i = tally.requests
            tally.requests += 1
            body = bodies[i % len(bodies)]
            tally.rows_sent += body.rows
            t0 = perf()
            try:
                response = await client.post(path, content=body.content, headers={"X-Request-Id": f"{run_id}-{i}"})
            except httpx.HTTPError as exc:
                tally.transport[classify_transport_error(exc, timeout_s=timeout_s).kind.value] += 1
                tally.consecutive_transport_errors += 1
                if tally.consecutive_transport_errors >= ABORT_AFTER_TRANSPORT_ERRORS:
                    aborted.append(f"{tally.consecutive_transport_errors} transport errors in a row")
                    stop.set()
                continue
            tally.latencies_ms.append((perf() - t0) * 1000.0)
            tally.consecutive_transport_errors = 0
            tally.status[response.status_code] += 1
            if response.is_success:
                tally.rows_ok += body.rows
                reason = fallback_reason(response)
                if reason is not None:
                    tally.fallbacks[reason] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, perf() - start, (aborted[0] if aborted else None)


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    target: str
    endpoint: str
    model: str | None
    version: int | None
    bounds: dict[str, Any]
    payload: dict[str, Any]
    tally: Tally
    elapsed_s: float
    agent_cpu_percent: float | None
    agent_cpu_error: str | None
    client_cpu_percent: float | None
    interrupted: bool = False
    aborted: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tally.errors == 0 and self.tally.requests > 0 and not self.aborted

    def latency(self) -> dict[str, float | int | None]:
        values = sorted(self.tally.latencies_ms)
        return {
            "count": len(values),
            "p50": _r(percentile(values, 50)),
            "p90": _r(percentile(values, 90)),
            "p99": _r(percentile(values, 99)),
            "max": _r(values[-1]) if values else None,
            "mean": _r(sum(values) / len(values)) if values else None,
        }

    def as_json(self) -> dict[str, Any]:
        t = self.tally
        elapsed = max(self.elapsed_s, 1e-9)
        return {
            "target": self.target,
            "endpoint": self.endpoint,
            "model": self.model,
            "version": self.version,
            "bounds": self.bounds,
            "payload": self.payload,
            "requests": t.requests,
            "responses": t.responses,
            "rows": t.rows_ok,
            "rows_sent": t.rows_sent,
            "elapsed_s": round(self.elapsed_s, 4),
            "req_per_s": round(t.requests / elapsed, 2),
            "rows_per_s": round(t.rows_ok / elapsed, 2),
            "latency_ms": self.latency(),
            "status": {str(code): n for code, n in sorted(t.status.items())},
            "transport_errors": dict(sorted(t.transport.items())),
            "errors": t.errors,
            "fallbacks": {"total": sum(t.fallbacks.values()), "by_reason": dict(t.fallbacks.most_common())},
            "agent_cpu_percent": _r(self.agent_cpu_percent),
            "agent_cpu_error": self.agent_cpu_error,
            "client_cpu_percent": _r(self.client_cpu_percent),
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "warnings": self.warnings,
            "ok": self.ok,
        }


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def render_report(report: Report) -> str:
    """The human-readable report."""
    doc = report.as_json()
    t = report.tally
    lat = doc["latency_ms"]
    lines: list[tuple[str, str]] = [
        ("requests", f"{t.requests:,} in {report.elapsed_s:.2f} s  ({doc['req_per_s']:,.1f} req/s)"),
        ("rows", f"{t.rows_ok:,} answered  ({doc['rows_per_s']:,.1f} rows/s; {t.rows_sent:,} sent)"),
        (
            "latency ms",
            f"p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}  "
            f"mean {_ms(lat['mean'])}  (client-side, {lat['count']:,} responses)",
        ),
    ]
    codes = "  ".join(f"{code}: {n:,}" for code, n in doc["status"].items())
    transport = "  ".join(f"{kind}: {n:,}" for kind, n in doc["transport_errors"].items())
    lines.append(("status", "  ".join(p for p in (codes, transport) if p) or "-"))
    share = f" ({t.errors / t.requests * 100:.1f}%)" if t.requests else ""
    lines.append(("errors", f"{t.errors:,}{share}"))
    fb = doc["fallbacks"]
    reasons = ", ".join(f"{k} {v:,}" for k, v in fb["by_reason"].items())
    lines.append(("fallbacks", f"{fb['total']:,}" + (f"  ({reasons})" if reasons else "")))
    if report.agent_cpu_percent is not None:
        agent_cpu = f"{report.agent_cpu_percent:.1f}% of one core  (process_cpu_seconds_total)"
    else:
        agent_cpu = f"n/a ({report.agent_cpu_error or 'no data'})"
    lines.append(("agent CPU", agent_cpu))
    if report.client_cpu_percent is not None:
        client = f"{report.client_cpu_percent:.1f}% of one core"
        if report.client_cpu_percent >= CLIENT_BOUND_PERCENT:
            client += "  (client-bound: rates are a lower bound; lower --concurrency or run more clients)"
        lines.append(("client CPU", client))
    if report.interrupted:
        lines.append(("stopped", "interrupted: partial results"))
    if report.aborted:
        lines.append(("stopped", f"aborted: {report.aborted}"))
    lines.append(("result", "OK" if report.ok else f"FAIL: {t.errors:,} errors" if t.errors else "FAIL"))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)


def describe_bounds(options: Options) -> str:
    """'stops after 10 s; concurrency 8; 1-20 rows/request; timeout 10 s' (printed before the run)."""
    if options.requests is None:
        stop = f"stops after {options.duration_s:g} s"
    else:
        stop = f"stops after {options.requests:,} requests or {options.duration_s:g} s, whichever comes first"
    lo, hi = options.rows
    rows = f"{lo} row" if lo == hi == 1 else f"{lo} rows" if lo == hi else f"{lo}-{hi} rows"
    return f"{stop}; concurrency {options.concurrency}; {rows}/request; timeout {options.timeout_s:g} s"


async def _scrape_cpu(client: AgentClient) -> tuple[float | None, str | None]:
    try:
        text = await client.metrics_text()
    except AgentError as exc:
        return None, f"/metrics: {exc.message}"
    value = cpu_seconds(text)
    return (value, None) if value is not None else (None, "/metrics has no process_cpu_seconds_total")


async def prepare(options: Options, client: AgentClient) -> tuple[EndpointInfo, list[Body], dict[str, Any], list[str]]:
    """Check the endpoint exists and build the request bodies (before the clock starts)."""
    try:
        info = await client.endpoint(options.endpoint)
    except AgentError as exc:
        if exc.status_code == 404:
            raise LoadtestError(f"no endpoint {options.endpoint!r} on {options.spec.url}") from None
        raise LoadtestError(f"cannot read endpoint {options.endpoint!r} from {options.spec.url}: {exc}") from None
    warnings: list[str] = []
    features: list[FeatureSpec] | None = None
    signature_error = None
    if info.version is None:
        signature_error = info.resolve_error or "the endpoint's model does not resolve"
    else:
        try:
            mv: ModelVersion = await client.model_version(info.model, info.version)
            features = list(mv.signature.features)
        except AgentError as exc:
            signature_error = f"model {info.model}:{info.version}: {exc}"
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    payload: dict[str, Any] = {
        "format": "columns" if options.columnar else "records",
        "missing_rate": options.missing_rate,
        "seed": seed,
    }
    if options.data is not None:
        rows, data_warnings = await asyncio.to_thread(
            read_data, options.data, [f.name for f in features] if features else None
        )
        warnings.extend(data_warnings)
        make_row = sampled_rows(rows)
        payload.update(source="file", file=str(options.data), file_rows=len(rows))
    else:
        if features is None:
            raise LoadtestError(f"cannot generate payloads ({signature_error}); pass --data FILE")
        make_row = generated_rows(features)
        payload.update(source="generated", features=len(features))
    if options.rows[1] > info.config.max_rows:
        warnings.append(f"--rows up to {options.rows[1]:,} exceeds the endpoint's max_rows {info.config.max_rows:,}")
    count = pool_size(options.requests, options.rows[1])
    bodies = await asyncio.to_thread(
        build_bodies,
        make_row,
        rng,
        rows=options.rows,
        count=count,
        missing_rate=options.missing_rate,
        columnar=options.columnar,
    )
    biggest = max(b.content.__len__() for b in bodies)
    if biggest > info.config.max_payload_bytes:
        warnings.append(
            f"some bodies ({biggest:,} bytes) exceed the endpoint's max_payload_bytes "
            f"{info.config.max_payload_bytes:,}: expect 413"
        )
    return info, bodies, payload, warnings


async def run(options: Options, *, out: IO[str], err: IO[str], stop: asyncio.Event | None = None) -> int:
    """Prepare, announce, drive, report. Returns the exit code."""
    note = err if options.as_json else out
    stop = stop or asyncio.Event()
    client = AgentClient(options.spec)
    try:
        try:
            info, bodies, payload, warnings = await prepare(options, client)
        except LoadtestError as exc:
            err.write(f"watchkeeper loadtest: error: {exc}\n")
            return EXIT_USAGE
        version = f"{info.model}:{info.version}" if info.version is not None else f"{info.model} (unresolved)"
        note.write(f"loadtest {options.endpoint} ({version}) on {options.spec.url}\n")
        note.write(f"  {describe_bounds(options)}; payloads: {_payload_text(payload, len(bodies))}\n")
        for w in warnings:
            note.write(f"  warning: {w}\n")
        note.flush()

        limits = httpx.Limits(
            max_connections=options.concurrency, max_keepalive_connections=options.concurrency, keepalive_expiry=30
        )
        load = http_client(options.spec, timeout_s=options.timeout_s, limits=limits)
        load.headers["Content-Type"] = "application/json"
        path = f"{API_PREFIX}/endpoints/{quote(options.endpoint, safe='')}/predict"
        interrupted = False
        try:
            cpu0, cpu_error = await _scrape_cpu(client)
            wall0, proc0 = time.perf_counter(), time.process_time()
            with _stop_on_sigint(stop):
                tally, elapsed, aborted = await drive(
                    load,
                    path,
                    bodies,
                    concurrency=options.concurrency,
                    duration_s=options.duration_s,
                    requests=options.requests,
                    timeout_s=options.timeout_s,
                    stop=stop,
                    run_id=f"lt-{payload['seed']:x}",
                )
            interrupted = stop.is_set() and aborted is None
            wall1, proc1 = time.perf_counter(), time.process_time()
            cpu1, cpu_error1 = await _scrape_cpu(client)
        finally:
            await load.aclose()
        agent_cpu = None
        if cpu0 is not None and cpu1 is not None:
            agent_cpu = max(0.0, cpu1 - cpu0) / max(wall1 - wall0, 1e-9) * 100.0
        report = Report(
            target=options.spec.url,
            endpoint=options.endpoint,
            model=info.model,
            version=info.version,
            bounds={
                "duration_s": options.duration_s,
                "requests": options.requests,
                "concurrency": options.concurrency,
                "rows_min": options.rows[0],
                "rows_max": options.rows[1],
                "timeout_s": options.timeout_s,
            },
            payload=payload,
            tally=tally,
            elapsed_s=elapsed,
            agent_cpu_percent=agent_cpu,
            agent_cpu_error=cpu_error or cpu_error1,
            client_cpu_percent=(proc1 - proc0) / max(wall1 - wall0, 1e-9) * 100.0,
            interrupted=interrupted,
            aborted=aborted,
            warnings=warnings,
        )
        if options.as_json:
            out.write(json.dumps(report.as_json(), indent=2) + "\n")
        else:
            out.write(render_report(report) + "\n")
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if report.ok else EXIT_ERRORS
    finally:
        await client.aclose()


def _payload_text(payload: dict[str, Any], bodies: int) -> str:
    source = (
        f"rows from {payload['file']} ({payload['file_rows']:,} read)"
        if payload["source"] == "file"
        else f"generated from the signature ({payload['features']} features)"
    )
    missing = f", {payload['missing_rate']:.1%} missing" if payload["missing_rate"] else ""
    return f"{source}, {bodies} distinct {payload['format']} bodies, seed {payload['seed']}{missing}"


@contextlib.contextmanager
def _stop_on_sigint(stop: asyncio.Event):  # type: ignore[no-untyped-def]
    """Ctrl+C ends the run early (partial report) instead of a traceback."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _skip_missing_sniffio() -> None:
    # httpcore runs `import sniffio` on every request to learn the event loop; without sniffio
    # installed each of those is a failed import that searches sys.path (~70 us, several times
    # per request: a fifth of the client's CPU). A None entry makes the same ImportError instant.
    import importlib.util

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def main_from_args(args: argparse.Namespace) -> int:
    """The `loadtest` subcommand."""
    _skip_missing_sniffio()
    try:
        options = options_from_args(args)
    except LoadtestError as exc:
        print(f"watchkeeper loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run(options, out=sys.stdout, err=sys.stderr))
