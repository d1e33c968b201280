"""The loadtest's report: latency percentiles, status codes, fallbacks and CPU, as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from console.serving.loadtest.drive import Tally, percentile
from console.serving.loadtest.options import Options

CLIENT_BOUND_PERCENT = 90.0


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
