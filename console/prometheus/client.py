"""`PrometheusClient`: Prometheus's HTTP API over httpx (instant and range queries, active targets).

No Textual here. Every failure is a `PrometheusError` whose message fits on one line, so the source can
put it on every row ("prometheus: connection refused") instead of aborting the poll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from console.core.errors import classify_transport_error

DEFAULT_TIMEOUT_S = 5.0
# A Prometheus answer for a whole fleet is a few hundred KiB; refuse anything absurd.
MAX_BODY_BYTES = 64 * 1024 * 1024


class PrometheusError(Exception):
    """Prometheus could not be asked or refused the query (message fits on one line)."""


def validate_prometheus_url(url: str) -> str:
    """Return `url` without a trailing slash, or raise ValueError with a one-line reason."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"prometheus address must be http(s)://host[:port][/prefix]: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"prometheus address has a bad port: {url!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"prometheus address must not carry a query: {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class Sample:
    """One series of an instant query: its labels and value (NaN when Prometheus says so)."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: its labels and (unix seconds, value) points in time order."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class Target:
    """One active scrape target (`/api/v1/targets`)."""

    labels: dict[str, str]
    scrape_url: str
    health: str  # "up", "down", "unknown"
    last_error: str
    last_scrape_age_s: float | None
    scrape_interval_s: float | None


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def parse_vector(body: Any) -> list[Sample]:
    """Samples of an instant query's JSON answer (`resultType` vector or scalar)."""
    data = _data(body)
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [Sample({}, _number(result[1]))]
    if kind != "vector" or not isinstance(result, list):
        raise PrometheusError(f"prometheus: expected a vector, got {kind!r}")
    return [Sample(dict(r.get("metric") or {}), _number((r.get("value") or [0, "NaN"])[1])) for r in result]


def parse_matrix(body: Any) -> list[RangeSeries]:
    """Series of a range query's JSON answer."""
    data = _data(body)
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise PrometheusError(f"prometheus: expected a matrix, got {data.get('resultType')!r}")
    return [
        RangeSeries(dict(r.get("metric") or {}), [(float(ts), _number(v)) for ts, v in r.get("values") or []])
        for r in data["result"]
    ]


def parse_targets(body: Any, now: float) -> list[Target]:
    """Active targets of a `/api/v1/targets?state=active` answer; ages against `now` (unix seconds)."""
    data = _data(body)
    targets = []
    for t in data.get("activeTargets") or []:
        targets.append(
            Target(
                labels=dict(t.get("labels") or {}),
                scrape_url=str(t.get("scrapeUrl") or ""),
                health=str(t.get("health") or "unknown"),
                last_error=str(t.get("lastError") or ""),
                last_scrape_age_s=_scrape_age(t.get("lastScrape"), now),
                scrape_interval_s=_duration(t.get("scrapeInterval")),
            )
        )
    return targets


def _scrape_age(text: Any, now: float) -> float | None:
    from datetime import datetime

    if not isinstance(text, str) or text.startswith("0001-"):
        return None  # never scraped yet
    try:
        # RFC 3339 with nanoseconds; Python wants at most microseconds.
        head, _, rest = text.partition(".")
        frac = "".join(ch for ch in rest if ch.isdigit())[:6]
        zone = rest[len("".join(ch for ch in rest if ch.isdigit())) :] if rest else text[19:]
        stamp = datetime.fromisoformat(f"{head}.{frac or '0'}{zone.replace('Z', '+00:00')}")
    except ValueError:
        return None
    return max(0.0, now - stamp.timestamp())


def _duration(text: Any) -> float | None:
    """Prometheus durations as its config writes them ("1s", "15s", "1m", "1m30s")."""
    if not isinstance(text, str) or not text:
        return None
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] == "ms" else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total if not number else None


def _data(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PrometheusError("prometheus: answer is not a JSON object")
    if body.get("status") != "success":
        raise PrometheusError(f"prometheus: {body.get('errorType', 'error')}: {body.get('error', 'no detail')}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("prometheus: answer has no data")
    return data


class PrometheusClient:
    """Asks one Prometheus server; one connection pool, every call bounded by `timeout_s`."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, transport: Any = None) -> None:
        self.url = validate_prometheus_url(url)
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, transport=transport)

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            reason = classify_transport_error(exc, timeout_s=self.timeout_s).message
            raise PrometheusError(f"prometheus at {self.url}: {reason}") from None
        if len(response.content) > MAX_BODY_BYTES:
            raise PrometheusError(f"prometheus at {self.url}: answer larger than {MAX_BODY_BYTES} bytes")
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"prometheus at {self.url}: HTTP {response.status_code}, not JSON") from None
        if response.status_code >= 400 and isinstance(body, dict) and body.get("status") != "error":
            raise PrometheusError(f"prometheus at {self.url}: HTTP {response.status_code}")
        return body

    async def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query (`/api/v1/query`), evaluated now or at unix time `at`."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return parse_vector(await self._get("/api/v1/query", params))

    async def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[RangeSeries]:
        """A range query (`/api/v1/query_range`) from `start` to `end` every `step_s` seconds."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{max(step_s, 0.001):.3f}"}
        return parse_matrix(await self._get("/api/v1/query_range", params))

    async def targets(self, now: float) -> list[Target]:
        """The active scrape targets, with their health and last error."""
        return parse_targets(await self._get("/api/v1/targets", {"state": "active"}), now)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
