"""Driving the predict route: concurrent workers over one connection pool, and what they counted."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from console.core.errors import classify_transport_error
from console.serving.loadtest.payloads import Body

# Give up early when this many requests in a row fail without any answer (agent gone).
ABORT_AFTER_TRANSPORT_ERRORS = 200


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
