"""`watchkeeper timeline ENDPOINT --since 2h [--until T] [--json | --markdown]`: the endpoint's timeline across
every agent that has it, merged; for a terminal (chart + items), a script (JSON) or an incident report (a
markdown postmortem skeleton: timeline, actors, figures before/after the first critical alert).

Exit codes: 0 every agent answered (those without the endpoint answer 404 and are left out); 1 some agent
could not be read (one line on stderr says which) or none has the endpoint; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO

from agent.schemas import Timeline, TimelineItem
from console.core.client import AgentClient
from console.core.errors import AgentError, capture, why
from console.timeline.client import fetch_timeline, merge
from console.timeline.render import SERIES_VIEW, clock, fmt_value, item_line, render

HELP = "one endpoint's incident timeline across the fleet: changes, who made them, signals, series"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """'2h' (ago), '90m', '1d', '30s', or unix seconds."""
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a duration (2h, 90m, 1d) nor unix seconds") from None


def configure(p: argparse.ArgumentParser) -> None:
    """Options of `watchkeeper timeline`."""
    p.add_argument("--agents", metavar="URL,...", default=argparse.SUPPRESS, help="agent addresses, as for status")
    p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (names, tokens)")
    p.add_argument("endpoint", help="the endpoint's name")
    p.add_argument("--since", default="2h", help="start: a duration ago (2h, 90m, 1d) or unix seconds (default 2h)")
    p.add_argument("--until", default=None, help="end: a duration ago or unix seconds (default now)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the merged timeline as JSON")
    fmt.add_argument("--markdown", action="store_true", help="a postmortem skeleton in markdown")


async def fetch_all(
    specs: Sequence, endpoint: str, since: float, until: float
) -> tuple[list[Timeline], dict[str, str]]:
    """Every agent's timeline of `endpoint`; agents without it (404) are left out, other failures reported."""
    clients = [AgentClient(s) for s in specs]
    try:
        answers = await asyncio.gather(*(capture(fetch_timeline(c, endpoint, since, until)) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    good, errors = [], {}
    for spec, a in zip(specs, answers, strict=True):
        if isinstance(a, Timeline):
            good.append(a)
        elif not (isinstance(a, AgentError) and a.status_code == 404):
            errors[spec.name] = why(a)
    return good, errors


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run `watchkeeper timeline`."""
    from console.core.config import FleetConfigError, resolve_fleet

    out, err = out or sys.stdout, err or sys.stderr
    now = time.time()
    try:
        specs = resolve_fleet(getattr(args, "agents", None), getattr(args, "fleet", None))
        since = parse_time(args.since, now)
        until = parse_time(args.until, now) if args.until else now
    except (FleetConfigError, argparse.ArgumentTypeError) as exc:
        err.write(f"watchkeeper: error: {exc}\n")
        return 2
    if until <= since:
        err.write("watchkeeper: error: --until must be after --since\n")
        return 2
    timelines, errors = asyncio.run(fetch_all(specs, args.endpoint, since, until))
    for name, reason in errors.items():
        err.write(f"watchkeeper: {name}: {reason}\n")
    if not timelines:
        err.write(f"watchkeeper: no agent has endpoint {args.endpoint!r}\n")
        return 1
    tl = merge(timelines)
    if args.json:
        out.write(json.dumps({"timeline": tl.model_dump(mode="json"), "errors": errors}, indent=2) + "\n")
    elif args.markdown:
        out.write(markdown(tl, errors))
    else:
        out.write(plain(tl))
    return 1 if errors else 0


def plain(tl: Timeline, width: int = 100) -> str:
    """The chart (series, markers, axis) and every item, oldest first."""
    lines, _, _ = render(tl, width, 14)
    multi = "," in tl.host
    body = [f"{tl.endpoint} on {tl.host} · {clock(tl.since, True)} → {clock(tl.until, True)} UTC · step {tl.step_s:g}s"]
    body += [line.plain.rstrip() for line in lines]
    body += [""] + [item_line(x, multi) for x in tl.items]
    body += [f"note: {n}" for n in tl.notes]
    return "\n".join(body) + "\n"


def pivot(tl: Timeline) -> TimelineItem | None:
    """The moment the postmortem turns on: the first critical alert firing, else the first alert firing."""
    fired = [x for x in tl.items if x.kind == "alert.firing"]
    critical = [x for x in fired if x.details.get("severity") == "critical"]
    return (critical or fired or [None])[0]


def _figures(tl: Timeline, at: float) -> list[str]:
    rows = ["| series | before (mean / max) | after (mean / max) |", "| --- | --- | --- |"]
    for s in tl.series:
        if s.name not in SERIES_VIEW:
            continue
        cells = []
        for side in (True, False):
            vals = [v for b, v in zip(tl.buckets, s.values, strict=True) if v is not None and (b < at) == side]
            if vals:
                cells.append(f"{fmt_value(sum(vals) / len(vals), s.name)} / {fmt_value(max(vals), s.name)}")
            else:
                cells.append("-")
        label = SERIES_VIEW[s.name][0] + (f" ({s.label})" if s.label else "")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


def markdown(tl: Timeline, errors: dict[str, str] | None = None) -> str:
    """A postmortem skeleton: what to fill in, the timeline, the actors, the figures before and after."""
    p = pivot(tl)
    at = p.ts if p is not None else (tl.since + tl.until) / 2
    out = [
        f"# Incident: {tl.endpoint}, {clock(tl.since, True)} to {clock(tl.until, True)} UTC",
        "",
        f"Hosts: {tl.host}. Generated by `watchkeeper timeline` from the agents' records.",
        "",
        "## Summary",
        "",
        "_What happened, who was affected, how it was detected, how it ended._",
        "",
        "## Timeline (UTC)",
        "",
        "| time | host | what | who | |",
        "| --- | --- | --- | --- | --- |",
    ]
    for x in tl.items:
        who = x.actor + (f" on behalf of {x.on_behalf_of}" if x.on_behalf_of else "")
        mark = "**turning point**" if x is p else ("change" if x.category == "change" else "signal")
        summary = x.summary.replace("|", "\\|")
        out.append(
            f"| {clock(x.ts, True)}:{time.gmtime(x.ts).tm_sec:02d} | {x.host} | {x.kind}: {summary} | {who} | {mark} |"
        )
    out += ["", "## Actors", ""]
    by: dict[str, Counter] = {}
    for x in tl.items:
        if x.category == "change":
            by.setdefault(x.actor, Counter())[x.kind] += 1
    for actor, kinds in sorted(by.items()):
        behalf = sorted({x.on_behalf_of for x in tl.items if x.actor == actor and x.on_behalf_of})
        note = f" (on behalf of {', '.join(behalf)})" if behalf else ""
        out.append(f"- **{actor}**{note}: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    what = f"{p.kind} at {clock(p.ts)} ({p.summary[:80]})" if p is not None else f"the middle of the range, {clock(at)}"
    out += ["", f"## Figures before / after {what}", "", *_figures(tl, at)]
    out += ["", "## Root cause", "", "_…_", "", "## What went well / what didn't", "", "_…_", ""]
    out += ["## Action items", "", "- [ ] _…_", ""]
    notes = [*tl.notes, *(f"{h}: not read ({e})" for h, e in (errors or {}).items())]
    if notes:
        out += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)
