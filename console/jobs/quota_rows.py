"""The quotas view's rows as plain values, shared by the TUI and `watchkeeper quotas`. No Textual.

One row per (agent, pipeline): each resource's allocation (the running jobs' requests, what admission
counts) against the quota's limit, and what is measured beside it. A resource without a limit says
"unlimited" (never a 0 % bar). Order: rows the agent reports near their limit first, then by the
fullest resource, fullest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.schemas import QuotaList, QuotaUsage
from console.core.feeds import FeedState, is_outage
from console.core.poller import FleetStatus
from console.core.rows import KEY_SEP, MISSING, AgentItemRow, Column, fmt_bytes, render_columns
from console.jobs.client import jobs_feed

RESOURCES = ("cpu", "mem", "gpus", "jobs")
UNLIMITED = "unlimited"
BAR_WIDTH = 6
BAR_FULL, BAR_EMPTY = "█", "░"
COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("pipeline", "PIPELINE"),
    Column("cpu", "CPU"),
    Column("mem", "MEM"),
    Column("gpus", "GPUS"),
    Column("jobs", "JOBS"),
    Column("pending", "PEND", numeric=True),
)
CLI_COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("pipeline", "PIPELINE"),
    Column("cpu", "CPU", numeric=True),
    Column("mem", "MEM", numeric=True),
    Column("gpus", "GPUS", numeric=True),
    Column("jobs", "JOBS", numeric=True),
    Column("pending", "PENDING", numeric=True),
    Column("near", "NEAR LIMIT"),
)


def quota_key(agent: str, pipeline: str) -> str:
    return f"{agent}{KEY_SEP}{pipeline}"


def fmt_amount(resource: str, value: float | None) -> str:
    """One resource's amount: cores, bytes (GiB), a count."""
    if value is None:
        return MISSING
    if resource in ("mem", "gpu_mem"):
        return f"{value / 2**30:.1f}G" if value >= 2**30 or value == 0 else f"{value / 2**20:.0f}M"
    return f"{value:g}"


@dataclass(frozen=True)
class QuotaRow(AgentItemRow):
    """One pipeline's quota on one agent, as last seen."""

    usage: QuotaUsage
    stale: bool = False  # the agent is not answering: last known usage

    @property
    def pipeline(self) -> str:
        return self.usage.pipeline

    def limit(self, resource: str) -> float | None:
        return self.usage.limit.get(resource)

    def allocated(self, resource: str) -> float | None:
        if resource == "jobs":
            return float(self.usage.allocated.get("jobs", self.usage.running_jobs))
        return self.usage.allocated.get(resource)

    def fraction(self, resource: str) -> float | None:
        """Allocated share of the limit (None: unlimited, or nothing known)."""
        limit, alloc = self.limit(resource), self.allocated(resource)
        if limit is None or alloc is None:
            return None
        if limit <= 0:
            return 1.0 if alloc > 0 else 0.0
        return alloc / limit

    @property
    def near(self) -> list[str]:
        return list(self.usage.near_limit)

    @property
    def fullest(self) -> float:
        fractions = [f for f in (self.fraction(r) for r in RESOURCES) if f is not None]
        return max(fractions, default=-1.0)

    def amount_text(self, resource: str) -> str:
        """'2/4', '1.5G/8.0G', 'unlimited (2)'."""
        alloc, limit = self.allocated(resource), self.limit(resource)
        if limit is None:
            return f"{UNLIMITED} ({fmt_amount(resource, alloc)})" if alloc else UNLIMITED
        return f"{fmt_amount(resource, alloc)}/{fmt_amount(resource, limit)}"

    def bar_text(self, resource: str) -> str:
        """A bar of the allocated share and its percent ('████░░ 67%'), or 'unlimited'."""
        frac = self.fraction(resource)
        if frac is None:
            return UNLIMITED if self.limit(resource) is None else MISSING
        filled = min(BAR_WIDTH, round(min(frac, 1.0) * BAR_WIDTH))
        if frac > 0 and filled == 0:
            filled = 1  # something is allocated: never draw it as an empty bar
        return BAR_FULL * filled + BAR_EMPTY * (BAR_WIDTH - filled) + f" {frac * 100:3.0f}%"

    def text(self, column: str) -> str:
        match column:
            case "host":
                return self.host + (" (stale)" if self.stale else "")
            case "pipeline":
                return self.pipeline + ("" if self.usage.configured else " (default)")
            case "pending":
                return str(self.usage.pending_jobs)
            case "near":
                return ", ".join(self.near) or MISSING
        if column in RESOURCES:
            return self.bar_text(column)
        raise KeyError(column)

    def cli_text(self, column: str) -> str:
        """`watchkeeper quotas`: usage/limit per resource, with the percent."""
        if column in RESOURCES:
            frac = self.fraction(column)
            pct = f" ({frac * 100:.0f}%)" if frac is not None else ""
            return self.amount_text(column) + pct
        return self.text(column)

    def sort_key(self) -> tuple[Any, ...]:
        return (not self.near, -self.fullest, self.order, self.pipeline)

    def matches_text(self) -> str:
        near = " ".join(f"near {r}" for r in self.near)
        return f"{self.host} {self.pipeline} {near}" + (" stale" if self.stale else "")

    def as_json(self) -> dict[str, Any]:
        data = self.usage.model_dump(mode="json")
        data.update(agent=self.agent, host=self.host, stale=self.stale)
        data["share"] = {r: self.fraction(r) for r in RESOURCES}
        return data


def quota_rows(status: FleetStatus) -> list[QuotaRow]:
    """Every agent's pipelines, near-limit first."""
    rows: list[QuotaRow] = []
    for order, agent in enumerate(status.agents):
        feed = jobs_feed(agent)
        if feed is None or feed.quotas is None:
            continue
        stale = is_outage(agent) or feed.state is FeedState.ERROR
        for q in feed.quotas.quotas:
            rows.append(QuotaRow(quota_key(agent.name, q.pipeline), agent.name, order, agent.label, q, stale))
    return sorted(rows, key=QuotaRow.sort_key)


def near_limit_count(status: FleetStatus) -> int:
    """Pipelines across the fleet the agents report near a limit."""
    return sum(1 for r in quota_rows(status) if r.near)


def host_line(host: str, quotas: QuotaList) -> str:
    """What jobs may use on a host at all, and the enforcement tier."""
    tier = quotas.tier + (f" ({quotas.tier_detail})" if quotas.tier_detail else "")
    return (
        f"{host}: jobs may use {quotas.host_cpu:g} cores, {fmt_bytes(quotas.host_mem)}"
        f" (serving keeps {quotas.serving_reserved_cpu:g} cores, {fmt_bytes(quotas.serving_reserved_mem)})"
        f"  ·  enforcement {tier}"
    )


def detail_lines(row: QuotaRow, quotas: QuotaList | None) -> list[str]:
    """One pipeline's quota in full: per resource allocated, measured and limit; priority and the host."""
    u = row.usage
    head = f"{row.pipeline} on {row.host}" + ("" if u.configured else " (no quota configured: the defaults apply)")
    if row.stale:
        head += " — STALE: host not answering"
    lines = [head]
    for r in (*RESOURCES, "gpu_mem"):
        if r not in u.limit and r not in u.allocated:
            continue
        alloc = fmt_amount(r, row.allocated(r))
        in_use = f"  ·  in use {fmt_amount(r, u.used.get(r))}" if r in u.used and r != "jobs" else ""
        mark = "  NEAR LIMIT" if r in u.near_limit else ""
        frac = row.fraction(r)
        if row.limit(r) is None:
            lines.append(f"{r:<8}no limit  ·  allocated {alloc}{in_use}")
        else:
            pct = f" ({frac * 100:.0f}%)" if frac is not None else ""
            lines.append(f"{r:<8}allocated {row.amount_text(r)}{pct}{in_use}{mark}")
    lines.append(
        f"running {u.running_jobs}  ·  pending {u.pending_jobs}  ·  priority {u.quota.priority}"
        f"  ·  near-limit share {u.quota.near_limit:.0%}" + ("  ·  shares GPUs" if u.quota.share_gpus else "")
    )
    if quotas is not None:
        lines.append(host_line(row.host, quotas))
    return lines


def render_quotas(rows: Sequence[QuotaRow]) -> str:
    """Plain aligned text of the quotas (`watchkeeper quotas`)."""
    return render_columns(CLI_COLUMNS, [[r.cli_text(c.key) for c in CLI_COLUMNS] for r in rows])
