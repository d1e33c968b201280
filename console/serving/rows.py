"""The endpoints view's rows as plain values: one per (agent, endpoint, model version).

Like `console.core.rows`, numbers are kept apart from their text so tests (and a future headless
command) can read them, and the screen only decides colours. No Textual here.

An endpoint has one row for the version it serves now and one for every other version the agent
still has traffic statistics for (e.g. the previous version after an alias moved), so a rollout's
before and after stand side by side. A version a live rollout sends traffic to is listed before its
first request. Each row says its version's role (`version_roles`): serving, stable, canary, preview,
shadow, A/B arm, warm standby, retired. Breaker and fallback mode belong to the endpoint and are shown
on its current row only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.schemas import AsyncQueueStats, EndpointInfo, EndpointVersionStats, LoadedModel, ServingStatus
from console.core.feeds import FeedState
from console.core.poller import AgentState, AgentStatus, FleetStatus, ServingState
from console.core.rows import KEY_SEP, MISSING, AgentItemRow, Column, fmt_age, fmt_bytes
from console.rollouts.client import rollout_feed

# Error rate (fraction) at which the cell is drawn as a warning / as critical.
ERROR_RATE_HOT = (0.01, 0.05)


COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("endpoint", "ENDPOINT"),
    Column("model", "MODEL:VER"),
    Column("role", "ROLE"),
    Column("rps", "REQ/S", numeric=True),
    Column("p50", "P50 ms", numeric=True),
    Column("p99", "P99 ms", numeric=True),
    Column("errors", "ERR%", numeric=True),
    Column("fallback", "FALLBACK", numeric=True),
    Column("breaker", "BREAKER"),
    Column("mode", "MODE"),
    Column("loaded", "LOADED"),
    Column("async", "ASYNC Q"),
)


def row_key(agent: str, endpoint: str, model: str, version: int | None) -> str:
    """The table key of one (agent, endpoint, model version)."""
    return KEY_SEP.join((agent, endpoint, f"{model}:{version if version is not None else '?'}"))


@dataclass(frozen=True)
class EndpointRow(AgentItemRow):
    """One (agent, endpoint, model version)."""

    agent_state: AgentState
    endpoint: str
    model: str
    version: int | None
    current: bool  # the version the endpoint serves now
    info: EndpointInfo
    stats: EndpointVersionStats | None
    loaded: bool
    stale: bool  # the agent is not answering now: these are its last known figures
    role: str = ""  # see `version_roles`
    async_queue: AsyncQueueStats | None = None  # the endpoint's async queue (current row only; docs/async.md)

    @property
    def model_version(self) -> str:
        return f"{self.model}:{self.version if self.version is not None else '?'}"

    @property
    def rps(self) -> float | None:
        return self.stats.window_rps if self.stats else None

    @property
    def window_requests(self) -> int:
        return self.stats.window_requests if self.stats else 0

    @property
    def p50_ms(self) -> float | None:
        return self.stats.latency.p50_ms if self.stats else None

    @property
    def p99_ms(self) -> float | None:
        return self.stats.latency.p99_ms if self.stats else None

    @property
    def error_rate(self) -> float | None:
        """Fraction of the window's requests that failed (None without traffic)."""
        return self.stats.window_error_rate if self.stats and self.stats.window_requests else None

    @property
    def fallback_rate(self) -> float | None:
        """Fraction of the window's requests answered with the fallback (None without traffic)."""
        return self.stats.window_fallback_rate if self.stats and self.stats.window_requests else None

    @property
    def fallbacks(self) -> int | None:
        """Fallback answers in the window (derived from the rate; the agent counts totals exactly)."""
        rate = self.fallback_rate
        return None if rate is None else round(rate * self.window_requests)

    @property
    def breaker(self) -> str | None:
        """The endpoint's breaker state, on its current row only."""
        return self.info.breaker_state if self.current else None

    @property
    def forced(self) -> bool:
        """An operator switched the endpoint to its fallback (current row only)."""
        return self.current and self.info.fallback_mode

    def text(self, column: str) -> str:
        """The display text of one column."""
        match column:
            case "host":
                return self.host
            case "endpoint":
                return self.endpoint
            case "model":
                return self.model_version
            case "role":
                return self.role or MISSING
            case "rps":
                return MISSING if self.rps is None else f"{self.rps:.1f}"
            case "p50":
                return fmt_ms(self.p50_ms)
            case "p99":
                return fmt_ms(self.p99_ms)
            case "errors":
                return fmt_rate(self.error_rate)
            case "fallback":
                if self.fallback_rate is None:
                    return MISSING
                return f"{fmt_rate(self.fallback_rate)} ({self.fallbacks})"
            case "breaker":
                return (self.breaker or MISSING).replace("_", "-")
            case "mode":
                if not self.current:
                    return MISSING
                return "FORCED" if self.forced else "auto"
            case "loaded":
                return "yes" if self.loaded else "no"
            case "async":
                return fmt_queue(self.async_queue)
        raise KeyError(column)

    def matches_text(self) -> str:
        """What the `/` filter searches."""
        parts = [self.host, self.endpoint, self.model_version, self.role, self.text("breaker"), self.text("mode")]
        if self.info.config.alias and self.current:
            parts.append(f"{self.model}@{self.info.config.alias}")
        return " ".join(parts)


def fmt_queue(q: AsyncQueueStats | None) -> str:
    """An async queue as 'queued+running (oldest age)': '120+8 (42s)', '0'; '-' without one."""
    if q is None:
        return MISSING
    if not q.queued and not q.running:
        return "0"
    age = f" ({fmt_age(q.oldest_queued_s)})" if q.oldest_queued_s is not None else ""
    return f"{q.queued}+{q.running}{age}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_rate(value: float | None) -> str:
    """A fraction as a percentage: '0.0%', '12.5%'."""
    return MISSING if value is None else f"{value * 100:.1f}%"


Version = tuple[str, str, int]  # (endpoint, model, version)


def version_roles(agent: AgentStatus) -> tuple[dict[Version, str], bool]:
    """The role of every version a rollout involves, and whether the agent's rollouts are known.

    In a live rollout stable keeps the traffic the candidate does not get; the candidate is a canary, a
    blue/green preview, a shadow (mirrored, answers dropped) or A/B arm B. The version a recently
    promoted rollout replaced is a warm standby while it stays loaded (an instant rollback). Without a
    known rollout feed a version that is not the current one cannot be told apart from a live candidate.
    """
    feed = rollout_feed(agent)
    if feed is None or feed.state not in (FeedState.OK, FeedState.NONE):
        return {}, False
    roles: dict[Version, str] = {}
    loaded = {(m.model, m.version) for m in agent.serving.loaded_models} if agent.serving else set()
    for r in feed.ended:
        if r.state == "promoted" and (r.model, r.stable_version) in loaded:
            roles[(r.endpoint, r.model, r.stable_version)] = "warm standby"
    for r in feed.active:
        w = r.weight
        stable, cand = (r.endpoint, r.model, r.stable_version), (r.endpoint, r.model, r.candidate_version)
        match r.strategy:
            case "shadow":
                roles[stable] = "stable"
                roles[cand] = f"shadow {r.shadow * 100:g}% mirrored"
            case "ab":
                roles[stable] = f"A/B arm A {100 - w:g}%"
                roles[cand] = f"A/B arm B {w:g}%"
            case "bluegreen":
                roles[stable] = f"stable {100 - w:g}%"
                roles[cand] = f"preview {w:g}%"
            case _:
                roles[stable] = f"stable {100 - w:g}%"
                roles[cand] = f"canary {w:g}%"
    return roles, True


def _role(roles: dict[Version, str], known: bool, key: Version, current: bool) -> str:
    if key in roles:
        return roles[key]
    if current:
        return "serving"
    return "retired" if known else "not current (rollouts unknown)"


def agent_rows(agent: AgentStatus, order: int) -> list[EndpointRow]:
    """The rows of one agent's endpoints (endpoint name order, current version first)."""
    serving = agent.serving
    if serving is None:
        return []
    stale = agent.state is not AgentState.UP or agent.serving_state is ServingState.ERROR
    loaded = {(m.model, m.version) for m in serving.loaded_models}
    roles, known = version_roles(agent)
    stats: dict[str, list[EndpointVersionStats]] = {}
    for s in serving.stats:
        stats.setdefault(s.endpoint, []).append(s)
    rows: list[EndpointRow] = []

    def row(info: EndpointInfo, model: str, version: int | None, current: bool, st: EndpointVersionStats | None):
        is_loaded = (model, version) in loaded or (current and info.loaded)
        role = _role(roles, known, (info.name, model, version or 0), current)
        return EndpointRow(
            key=row_key(agent.name, info.name, model, version),
            agent=agent.name,
            order=order,
            host=agent.label,
            agent_state=agent.state,
            endpoint=info.name,
            model=model,
            version=version,
            current=current,
            info=info,
            stats=st,
            loaded=is_loaded,
            stale=stale,
            role=role,
            async_queue=serving.async_queues.get(info.name) if current else None,
        )

    for info in sorted(serving.endpoints, key=lambda e: e.name):
        mine = stats.get(info.name, [])
        current = next((s for s in mine if s.model == info.model and s.version == info.version), None)
        rows.append(row(info, info.model, info.version, True, current))
        older = [s for s in mine if s is not current]
        listed = {(s.model, s.version) for s in older} | {(info.model, info.version)}
        # A rollout's versions that have no traffic yet still get their row (and role).
        waiting = [(m, v) for (e, m, v) in roles if e == info.name and (m, v) not in listed]
        entries = [(s.model, s.version, s) for s in older] + [(m, v, None) for m, v in waiting]
        entries.sort(key=lambda e: (e[0], -e[1]))
        rows.extend(row(info, m, v, False, st) for m, v, st in entries)
    return rows


def endpoint_rows(fleet: FleetStatus) -> list[EndpointRow]:
    """Every endpoint row of a poll: fleet order, then endpoint name, current version first."""
    return [row for i, agent in enumerate(fleet.agents) for row in agent_rows(agent, i)]


def row_by_key(rows: Sequence[EndpointRow], key: str | None) -> EndpointRow | None:
    return next((r for r in rows if r.key == key), None) if key is not None else None


# --------------------------------------------------------------------------- the detail panel


def agent_age(agent: AgentStatus, ts: float, now: float) -> float:
    """Seconds since the agent-clock time `ts`, at console time `now`."""
    return max(0.0, now + agent.clock_offset_s - ts)


def pool_line(serving: ServingStatus) -> str:
    """'pool 1.2 GiB / 4.0 GiB (30%)'."""
    budget = serving.pool_budget_bytes
    share = f" ({serving.pool_used_bytes / budget * 100:.0f}%)" if budget else ""
    return f"pool {fmt_bytes(serving.pool_used_bytes)} / {fmt_bytes(budget) if budget else 'no budget'}{share}"


def predlog_line(serving: ServingStatus) -> str:
    """'prediction log 12,345 rows written, 0 dropped'."""
    return f"prediction log {serving.predlog_rows_written:,} rows written, {serving.predlog_rows_dropped:,} dropped"


def loaded_model_cells(m: LoadedModel, agent: AgentStatus, now: float) -> tuple[str, ...]:
    """MODEL:VER, FORMAT, MEMORY, LOADED (age), USED (age), LOAD ms, ENDPOINTS."""
    return (
        f"{m.model}:{m.version}",
        m.format,
        fmt_bytes(m.memory_bytes),
        fmt_age(agent_age(agent, m.loaded_at, now)),
        fmt_age(agent_age(agent, m.last_used_at, now)),
        f"{m.load_ms:.0f}",
        ", ".join(m.endpoints) or MISSING,
    )


def detail_text(row: EndpointRow, agent: AgentStatus, now: float) -> str:
    """The selected row's details: what it serves, its limits, totals and fallback reasons."""
    info, cfg = row.info, row.info.config
    picked = f"alias {cfg.alias}" if cfg.alias else f"pinned v{cfg.version}"
    lines = [f"{row.host} · {row.endpoint} → {row.model_version} ({picked})"]
    if not row.current:
        serving_now = f"{info.model}:{info.version if info.version is not None else '?'}"
        lines.append(f"{row.role}: the endpoint's own version is {serving_now}")
    if info.resolve_error:
        lines.append(f"cannot resolve model: {info.resolve_error}")
    if row.current:
        breaker = info.breaker_state.replace("_", "-")
        changed = f"{info.updated_by}, {fmt_age(agent_age(agent, info.updated_at, now))} ago"
        if info.fallback_mode:
            lines.append(f"FALLBACK FORCED: {info.fallback_reason or 'no reason given'} ({changed})")
            lines.append(f"breaker {breaker}")
        else:
            lines.append(f"breaker {breaker}  ·  last change {changed}")
    lines.append(
        f"limits: timeout {cfg.timeout_ms:g} ms  ·  ≤{cfg.max_concurrency} rows in flight  ·  ≤{cfg.max_rows:,} rows"
    )
    extra = [f"missing → {cfg.missing_policy}", "fallback configured" if cfg.fallback is not None else "no fallback"]
    if cfg.batching.enabled:
        extra.append(f"batching ≤{cfg.batching.max_rows} rows / {cfg.batching.max_wait_ms:g} ms")
    lines.append("        " + "  ·  ".join(extra))
    s = row.stats
    if s is None:
        lines.append("no traffic recorded for this version")
    else:
        lat = s.latency
        lines.append(
            f"last {s.window_s:.0f}s: {s.window_requests:,} req  ·  {fmt_rate(row.error_rate)} err  ·  "
            f"p50 {fmt_ms(lat.p50_ms)} p95 {fmt_ms(lat.p95_ms)} p99 {fmt_ms(lat.p99_ms)} ms"
        )
        lines.append(
            f"total: {s.requests:,} req  ·  {s.rows:,} rows  ·  {s.errors:,} err  ·  {s.rejected:,} rejected"
            + (f"  ·  batch {s.batch_rows_mean:.1f} rows" if s.batch_rows_mean is not None else "")
        )
        fallbacks = f"fallbacks: {s.fallbacks:,}"
        if s.fallbacks_by_reason:
            by = sorted(s.fallbacks_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
            fallbacks += " (" + ", ".join(f"{k} {v:,}" for k, v in by) + ")"
        lines.append(fallbacks)
    serving = agent.serving
    if serving is not None and row.current:
        in_flight = serving.in_flight.get(row.endpoint)
        if in_flight:
            lines.append(f"in flight now: {in_flight} rows")
    if row.stale:
        why = agent.serving_error if agent.serving_state is ServingState.ERROR else agent.reason
        seen = agent.serving_at
        ago = f", fetched {fmt_age(max(0.0, now - seen))} ago" if seen is not None else ""
        lines.append(f"LAST KNOWN figures ({agent.state.value}: {why or 'not answering'}{ago})")
    return "\n".join(lines)
