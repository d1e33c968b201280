"""A batch's progress as one line: a bar, rows done/total, rows/s, ETA (pure: no I/O, no Textual)."""

from __future__ import annotations

from typing import Any

BAR = 28


def _eta(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(b: Any) -> str:
    """`[#######.......]  41% 412,000/1,000,000 rows  85,210 rows/s  ETA 0:06  running` for a Batch."""
    p = b.progress
    total = p.rows_total
    share = min(1.0, p.rows_done / total) if total else (1.0 if b.state == "succeeded" else 0.0)
    filled = int(share * BAR)
    bar = "#" * filled + "." * (BAR - filled)
    of = f"{p.rows_done:,}/{total:,}" if total is not None else f"{p.rows_done:,}/?"
    rate = f"{p.rows_per_s:,.0f} rows/s" if p.rows_per_s else "- rows/s"
    rej = f"  {p.rows_rejected:,} rejected" if p.rows_rejected else ""
    return f"[{bar}] {share * 100:3.0f}% {of} rows  {rate}  ETA {_eta(p.eta_s)}  {b.state}{rej}"


def summary_lines(b: Any) -> list[str]:
    """`batch status`: the progress line, then what a person on call needs (files that failed, where)."""
    lines = [f"{b.id}  {b.model}:{b.version}" + (f" (endpoint {b.endpoint})" if b.endpoint else "")
             + f"  job {b.job_id or '-'} {b.job_state or ''} attempt {b.attempt}", progress_line(b),
             f"input  {b.input}", f"output {b.output}   rejects {b.rejects}"]  # fmt: skip
    if b.reason and b.state != "succeeded":
        lines.append(f"reason {b.reason}")
    for f in b.files:
        if f.state == "failed":
            lines.append(f"failed {f.path}: {f.error}")
    return lines


def as_json(agent: str, b: Any) -> dict[str, Any]:
    return {"agent": agent, **b.model_dump(mode="json")}
