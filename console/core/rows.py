"""Rows as plain values: what every fleet-wide table shares (a row per thing on an agent, its columns,
the formatting of numbers, plain aligned text for the CLI).

Keeping the numbers (for sorting and JSON) apart from their text (for display) means the TUI sorts
"9.5%" below "10.0%", and the headless output and the screen can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "-"

# Joins the parts of a row key; agent names may contain "/" and ":" (unix socket paths), never a tab.
KEY_SEP = "\t"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = False


@dataclass(frozen=True)
class AgentItemRow:
    """A row of a fleet-wide table about one thing on one agent (an alert, a rollout, an endpoint version)."""

    key: str
    agent: str  # the agent's key in the fleet
    order: int  # the agent's place in the fleet
    host: str  # the agent's display name


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
