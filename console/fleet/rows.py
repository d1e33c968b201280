"""The fleet table's rows as plain values, shared by the TUI and `watchkeeper status`."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from console.core.poller import AgentState, AgentStatus, FleetStatus
from console.core.rows import MISSING, Column, fmt_age, fmt_bytes_pair, fmt_percent, render_columns, sort_key

COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("state", "STATE"),
    Column("cpu", "CPU%", numeric=True),
    Column("mem", "MEM%", numeric=True),
    Column("gpus", "GPUS", numeric=True),
    Column("gpu_util", "GPU%", numeric=True),
    Column("gpu_mem", "GPU MEM", numeric=True),
    Column("age", "AGE", numeric=True),
    Column("why", "WHY"),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
# Jobs running/pending (from the summary): on screen and in `status --json`, not in `status`'s text columns,
# whose order scripts read.
JOBS_COLUMN = Column("jobs", "JOBS R/P", numeric=True)
# The TUI's order: what is wrong (state, why) before the numbers, so a narrow terminal cuts numbers,
# never the reason. `watchkeeper status` keeps COLUMNS' order (scripts read it).
SCREEN_COLUMNS: tuple[Column, ...] = tuple(
    next(c for c in (*COLUMNS, JOBS_COLUMN) if c.key == k)
    for k in ("host", "state", "why", "cpu", "mem", "gpus", "gpu_util", "gpu_mem", "jobs", "age")
)
WHY_WIDTH = 34  # the screen's WHY cell; the whole reason is on the host screen and in `status`

# Ascending state order puts the problems first, as an on-call engineer wants them.
STATE_RANK = {AgentState.DOWN: 0, AgentState.STALE: 1, AgentState.UP: 2}


@dataclass(frozen=True)
class FleetRow:
    """One agent's row: typed values; `text()` and `sort_value()` derive the rest."""

    key: str
    order: int
    host: str
    url: str
    state: AgentState
    why: str
    cpu: float | None
    mem: float | None
    gpus: int | None
    gpu_util: float | None
    gpu_mem_used: int | None
    gpu_mem_total: int | None
    age: float | None
    hostname: str | None
    # Demo/test sources: shown as such so nobody mistakes them for hardware.
    simulated_host: bool = False
    simulated_gpus: bool = False
    # Jobs running / pending from the agent's summary; None: no jobs feature there (or not known).
    jobs_running: int | None = None
    jobs_pending: int | None = None

    @property
    def gpu_mem(self) -> float | None:
        """GPU memory used as a fraction of total (what the GPU MEM column sorts by)."""
        if self.gpu_mem_used is None or not self.gpu_mem_total:
            return None
        return self.gpu_mem_used / self.gpu_mem_total

    def text(self, column: str) -> str:
        """The display text of one column."""
        match column:
            case "host":
                return f"{self.host} (sim)" if self.simulated_host else self.host
            case "state":
                return self.state.value
            case "cpu":
                return fmt_percent(self.cpu)
            case "mem":
                return fmt_percent(self.mem)
            case "gpus":
                if self.gpus is None:
                    return MISSING
                return f"{self.gpus} sim" if self.simulated_gpus else str(self.gpus)
            case "gpu_util":
                return fmt_percent(self.gpu_util)
            case "gpu_mem":
                return fmt_bytes_pair(self.gpu_mem_used, self.gpu_mem_total)
            case "jobs":
                if self.jobs_running is None:
                    return MISSING  # no jobs there: never "0/0"
                return f"{self.jobs_running}/{self.jobs_pending or 0}"
            case "age":
                return fmt_age(self.age)
            case "why":
                return self.why
        raise KeyError(column)

    def sort_value(self, column: str) -> Any:
        """A value to sort `column` by; None means "no value" (the caller puts those last)."""
        match column:
            case "host":
                return self.host.lower()
            case "state":
                return STATE_RANK[self.state]
            case "gpu_mem":
                return self.gpu_mem
            case "why":
                return self.why or None
            case "jobs":
                return None if self.jobs_running is None else (self.jobs_running, self.jobs_pending or 0)
        return getattr(self, column)

    def matches_text(self) -> str:
        """What the `/` filter searches: name, hostname, address, state and reason."""
        return " ".join(p for p in (self.host, self.hostname or "", self.url, self.state.value, self.why) if p)

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form for `watchkeeper status --json`."""
        data = asdict(self)
        data["name"] = data.pop("key")
        data["state"] = self.state.value
        data["label"] = data.pop("host")
        for k in ("cpu", "mem", "gpu_util"):
            data[f"{k}_percent"] = data.pop(k)
        data["gpu_count"] = data.pop("gpus")
        data["sample_age_s"] = data.pop("age")
        data["reason"] = data.pop("why") or None
        data.pop("order")
        return data


def row_for(status: AgentStatus, order: int, polled_at: float) -> FleetRow:
    """Build one row from an agent's status (ages relative to the poll time)."""
    snap = status.snapshot
    live = status.state is not AgentState.DOWN and snap is not None
    gpus = snap.gpus if live and snap else []
    util = [g.utilization_percent for g in gpus if g.utilization_percent is not None]
    used = [g.memory_used_bytes for g in gpus if g.memory_used_bytes is not None]
    total = [g.memory_total_bytes for g in gpus if g.memory_total_bytes is not None]
    why = status.reason or ""
    if status.audit is not None and status.audit.broken:  # louder than any other reason
        why = f"{status.audit.message}; {why}" if why else status.audit.message
    if status.state is AgentState.DOWN and status.next_retry_at is not None:
        wait = status.next_retry_at - polled_at
        if wait >= 1:
            why = f"{why} (retry in {wait:.0f}s)"
    jobs = status.summary.jobs if live and status.summary is not None else None
    return FleetRow(
        key=status.name,
        order=order,
        host=status.label,
        url=status.url,
        state=status.state,
        why=why,
        cpu=snap.cpu.percent if live and snap else None,
        mem=snap.memory.percent if live and snap else None,
        gpus=len(snap.gpus) if live and snap else None,
        gpu_util=statistics.fmean(util) if util else None,
        gpu_mem_used=sum(used) if used else None,
        gpu_mem_total=sum(total) if total else None,
        age=status.sample_age_s,
        hostname=snap.hostname if snap else (status.host.hostname if status.host else None),
        simulated_host=bool(snap and snap.host_simulated),
        simulated_gpus=bool(snap and snap.gpu_status.simulated),
        jobs_running=jobs.running if jobs is not None else None,
        jobs_pending=jobs.pending if jobs is not None else None,
    )


def fleet_rows(fleet: FleetStatus) -> list[FleetRow]:
    """All rows of a poll, in fleet order."""
    return [row_for(a, i, fleet.polled_at) for i, a in enumerate(fleet.agents)]


class RowCache:
    """Rows of successive polls, built only for agents whose status changed.

    A phased poll hands the screen the whole fleet several times a second with only the agents just
    polled as new `AgentStatus` objects; the others reuse their row (building 1,000 rows was ~20 ms
    per batch). A down agent's row is rebuilt every time: its "retry in" counts down with the poll."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[AgentStatus, int, FleetRow]] = {}

    def rows(self, fleet: FleetStatus) -> list[FleetRow]:
        """All rows of a poll, in fleet order (as `fleet_rows`)."""
        out: list[FleetRow] = []
        seen: dict[str, tuple[AgentStatus, int, FleetRow]] = {}
        for i, agent in enumerate(fleet.agents):
            hit = self._rows.get(agent.name)
            if hit is not None and hit[0] is agent and hit[1] == i and agent.next_retry_at is None:
                row = hit[2]
            else:
                row = row_for(agent, i, fleet.polled_at)
            seen[agent.name] = (agent, i, row)
            out.append(row)
        self._rows = seen
        return out


def sort_rows(rows: list[FleetRow], column: str | None, reverse: bool = False) -> list[FleetRow]:
    """Sort rows by a column, missing values always last, ties in fleet order."""
    if column is None:
        return sorted(rows, key=lambda r: r.order)
    return sorted(rows, key=lambda r: sort_key(r.sort_value(column), r.order, reverse), reverse=reverse)


def render_table(rows: list[FleetRow]) -> str:
    """Plain aligned text of the fleet table (headless `status`)."""
    return render_columns(COLUMNS, [[r.text(c.key) for c in COLUMNS] for r in rows])
