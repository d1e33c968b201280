"""The alerts view's rows as plain values, shared by the TUI and `watchkeeper alerts`. No Textual here.

One row per alert *instance* of each agent, plus one row the console makes itself for every agent
that stopped answering (kind `agent_down`, critical, firing): an agent that cannot be asked for its
alerts is an outage of its own, and its last known alerts stay listed, dimmed. Order: firing, then
pending, then resolved; within a state the worst severity first, alerts nobody has in hand (not
acknowledged, not silenced) before those somebody has, then the newest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.schemas import AlertOut
from console.core.feeds import is_outage
from console.core.poller import AgentStatus, FleetStatus
from console.core.rows import KEY_SEP, MISSING, AgentItemRow, Column, fmt_age, fmt_number, render_columns

if TYPE_CHECKING:
    from console.monitoring.client import AlertFeed

OUTAGE_KIND = "agent_down"
STATES = ("firing", "pending", "resolved")
STATE_RANK = {s: i for i, s in enumerate(STATES)}
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

COLUMNS: tuple[Column, ...] = (
    Column("severity", "SEVERITY"),
    Column("state", "STATE"),
    Column("host", "HOST"),
    Column("endpoint", "ENDPOINT"),
    Column("subject", "SUBJECT"),
    Column("summary", "SUMMARY"),
    Column("value", "VALUE/THR", numeric=True),
    Column("since", "SINCE", numeric=True),
    Column("acked", "ACKED BY"),
)


def alert_key(agent: str, fingerprint: str, started_at: float | None = None) -> str:
    """The table key of one alert instance of one agent.

    A fingerprint (rule + labels) can fire, resolve and fire again: the agent then lists both
    instances. The newest instance is keyed by the fingerprint alone (acks and silences address it);
    an earlier one also by when it started, so it can never overwrite the one firing now.
    """
    key = f"{agent}{KEY_SEP}{fingerprint}"
    return key if started_at is None else f"{key}@{started_at:.3f}"


@dataclass(frozen=True)
class AlertRow(AgentItemRow):
    """One alert of one agent, or the console's outage row for an agent that stopped answering."""

    alert: AlertOut
    now: float  # "now" on the agent's clock (ages are measured against it)
    synthesized: bool = False  # made by the console (agent_down), not an alert the agent holds
    stale: bool = False  # the agent is not answering: its last known state

    @property
    def severity(self) -> str:
        return self.alert.severity

    @property
    def state(self) -> str:
        return self.alert.state

    @property
    def since_ts(self) -> float | None:
        """When the alert entered its current state."""
        a = self.alert
        if a.state == "resolved":
            return a.resolved_at or a.updated_at
        if a.state == "firing":
            return a.firing_at or a.started_at
        return a.started_at

    @property
    def silenced(self) -> bool:
        until = self.alert.silenced_until
        return until is not None and until > self.now

    @property
    def handled(self) -> bool:
        """Somebody has it in hand: acknowledged or silenced."""
        return bool(self.alert.acked_by) or self.silenced

    @property
    def actionable(self) -> str | None:
        """Why `a`/`s` cannot act on this row, or None when they can."""
        if self.synthesized:
            return f"the outage of {self.host} is the console's own row; the agent holds no such alert"
        if self.stale:
            return f"{self.host} is not answering; try again when it is back"
        return None

    def text(self, column: str) -> str:
        """The display text of one column."""
        a = self.alert
        match column:
            case "severity":
                return a.severity
            case "state":
                return a.state
            case "host":
                return self.host
            case "endpoint":
                return a.endpoint or MISSING
            case "subject":
                return a.subject or MISSING
            case "summary":
                return " ".join(a.summary.split())
            case "value":
                if a.value is None and a.threshold is None:
                    return MISSING
                return f"{fmt_number(a.value)} / {fmt_number(a.threshold)}"
            case "since":
                ts = self.since_ts
                return MISSING if ts is None else fmt_age(max(0.0, self.now - ts))
            case "acked":
                parts = [a.acked_by] if a.acked_by else []
                if self.silenced and a.silenced_until is not None:
                    parts.append(f"silenced {fmt_age(a.silenced_until - self.now)}")
                return ", ".join(parts) or MISSING
        raise KeyError(column)

    def sort_key(self) -> tuple[Any, ...]:
        return (
            STATE_RANK.get(self.state, len(STATES)),
            SEVERITY_RANK.get(self.severity, len(SEVERITY_RANK)),
            self.handled,
            -(self.since_ts or 0.0),
            self.order,
            self.alert.fingerprint,
        )

    def matches_text(self) -> str:
        """What the `/` filter searches."""
        a = self.alert
        parts = (self.host, a.severity, a.state, a.rule, a.kind, a.endpoint, a.subject, a.summary, a.acked_by)
        return " ".join(p for p in parts if p)

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form for `watchkeeper alerts --json`: the agent's alert plus where it came from."""
        data = self.alert.model_dump(mode="json")
        data.update(agent=self.agent, host=self.host, synthesized=self.synthesized, stale=self.stale)
        return data


def outage_alert(agent: AgentStatus, polled_at: float) -> AlertOut:
    """The console's own alert for an agent that stopped answering."""
    reason = agent.reason or "not answering"
    seen = agent.last_seen
    since = f"last answer {fmt_age(max(0.0, polled_at - seen))} ago" if seen is not None else "no answer yet"
    return AlertOut(
        fingerprint=f"{OUTAGE_KIND}:{agent.name}",
        rule=OUTAGE_KIND,
        kind=OUTAGE_KIND,
        severity="critical",
        state="firing",
        subject=agent.error_kind.value if agent.error_kind else None,
        summary=f"agent not answering: {reason} ({since})",
        started_at=seen if seen is not None else polled_at,
        firing_at=seen,
        updated_at=polled_at,
        host=agent.label,
    )


def alert_rows(status: FleetStatus, states: Iterable[str] | None = None) -> list[AlertRow]:
    """Every agent's alerts and the outage rows, sorted (see the module docstring)."""
    wanted = set(states) if states is not None else None
    rows: list[AlertRow] = []
    for order, agent in enumerate(status.agents):
        down = is_outage(agent)
        if down:
            alert = outage_alert(agent, status.polled_at)
            rows.append(
                AlertRow(alert_key(agent.name, alert.fingerprint), agent.name, order, agent.label, alert,
                         status.polled_at, synthesized=True)
            )  # fmt: skip
        feed = agent.alerts
        if feed is None:
            continue
        now = status.polled_at + agent.clock_offset_s
        newest: dict[str, float] = {}
        for alert in feed.alerts:
            newest[alert.fingerprint] = max(alert.started_at, newest.get(alert.fingerprint, alert.started_at))
        for alert in feed.alerts:
            earlier = alert.started_at < newest[alert.fingerprint]
            key = alert_key(agent.name, alert.fingerprint, alert.started_at if earlier else None)
            rows.append(AlertRow(key, agent.name, order, agent.label, alert, now, stale=down))
    if wanted is not None:
        rows = [r for r in rows if r.state in wanted]
    return sorted(rows, key=AlertRow.sort_key)


def firing_count(status: FleetStatus) -> int:
    """Alerts the agents report as firing (the console's outage rows not counted: the fleet shows those)."""
    return sum(1 for a in status.agents if a.alerts for x in a.alerts.alerts if x.state == "firing")


def alert_feed(agent: AgentStatus) -> AlertFeed | None:
    """The alerts of `agent` (None: not asked), for `console.core.feeds`."""
    return agent.alerts


def render_alerts(rows: Sequence[AlertRow], summary_width: int = 60) -> str:
    """Plain aligned text of the alerts table (`watchkeeper alerts`)."""
    body = []
    for r in rows:
        cells = [r.text(c.key) for c in COLUMNS]
        i = [c.key for c in COLUMNS].index("summary")
        if len(cells[i]) > summary_width:
            cells[i] = cells[i][: summary_width - 1] + "…"
        body.append(cells)
    return render_columns(COLUMNS, body)
