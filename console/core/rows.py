"""The fleet table's rows as plain values, shared by the TUI and `watchkeeper status`.

Keeping the numbers (for sorting and JSON) apart from their text (for display) means the TUI sorts
"9.5%" below "10.0%", and the headless output and the screen can never disagree.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from console.core.poller import AgentState, AgentStatus, FleetStatus

MISSING = "-"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = False


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
# The TUI's order: what is wrong (state, why) before the numbers, so a narrow terminal cuts numbers,
# never the reason. `watchkeeper status` keeps COLUMNS' order (scripts read it).
SCREEN_COLUMNS: tuple[Column, ...] = tuple(
    next(c for c in COLUMNS if c.key == k)
    for k in ("host", "state", "why", "cpu", "mem", "gpus", "gpu_util", "gpu_mem", "age")
)
WHY_WIDTH = 34  # the screen's WHY cell; the whole reason is on the host screen and in `status`


@dataclass(frozen=True)
class AgentItemRow:
    """A row of a fleet-wide table about one thing on one agent (an alert, a rollout, an endpoint version)."""

    key: str
    agent: str  # the agent's key in the fleet
    order: int  # the agent's place in the fleet
    host: str  # the agent's display name


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
    )


def fleet_rows(fleet: FleetStatus) -> list[FleetRow]:
    """All rows of a poll, in fleet order."""
    return [row_for(a, i, fleet.polled_at) for i, a in enumerate(fleet.agents)]


def sort_rows(rows: list[FleetRow], column: str | None, reverse: bool = False) -> list[FleetRow]:
    """Sort rows by a column, missing values always last, ties in fleet order."""
    if column is None:
        return sorted(rows, key=lambda r: r.order)
    return sorted(rows, key=lambda r: sort_key(r.sort_value(column), r.order, reverse), reverse=reverse)


def sort_key(value: Any, order: int, reverse: bool) -> tuple[Any, ...]:
    """Key putting None last in either direction and breaking ties by fleet order."""
    present = value is not None
    # With reverse=True Python flips the whole tuple, so flip the parts that must not flip.
    return (present, value, -order) if reverse else (not present, value, order)


# --------------------------------------------------------------------------- formatting


def fmt_percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def fmt_bytes(value: float | None) -> str:
    """Bytes in binary units, one decimal (e.g. '31.4 GiB')."""
    if value is None:
        return MISSING
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} PiB"  # pragma: no cover - loop always returns


def fmt_bytes_pair(used: int | None, total: int | None) -> str:
    """'used/total GiB' with one unit for both (so columns line up)."""
    if used is None:
        return MISSING
    if not total:
        return fmt_bytes(used)
    return f"{used / 2**30:.1f}/{total / 2**30:.1f} GiB"


def fmt_age(seconds: float | None) -> str:
    """Short age: '0.8s', '42s', '3m', '5h', '2d'."""
    if seconds is None:
        return MISSING
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def fmt_number(value: float | None) -> str:
    """A measured value, threshold or metric, short: 4 significant digits."""
    return MISSING if value is None else f"{value:.4g}"


def render_columns(columns: Sequence[Column], body: Sequence[Sequence[str]]) -> str:
    """Plain aligned text of a table: a header of the columns' labels, then `body` (a row of cells
    each); numeric columns right-aligned."""
    header = [c.label for c in columns]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = []
    for cells in [header, *body]:
        parts = [
            cell.rjust(w) if col.numeric else cell.ljust(w) for cell, w, col in zip(cells, widths, columns, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_table(rows: list[FleetRow]) -> str:
    """Plain aligned text of the fleet table (headless `status`)."""
    return render_columns(COLUMNS, [[r.text(c.key) for c in COLUMNS] for r in rows])
