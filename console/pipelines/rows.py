"""Pipelines and runs as plain text: table rows, a run's steps as a tree, metrics beside the previous
run's, a comparison. Pure: no Textual, no network; the CLI and the screen both draw from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.schemas import PipelineSummary, Run, RunCompare, RunSummary, StepRun, StepSpec
from console.core.rows import KEY_SEP

STATE_STYLE = {
    "RUNNING": "bold cyan",
    "PENDING": "yellow",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "UPSTREAM_FAILED": "red",
    "CANCELLED": "magenta",
    "SKIPPED": "dim",
}
STATE_MARK = {
    "RUNNING": "▶",
    "PENDING": "·",
    "COMPLETED": "✓",
    "FAILED": "✗",
    "UPSTREAM_FAILED": "✗",
    "CANCELLED": "⊘",
    "SKIPPED": "-",
}
ACTIVE = frozenset({"PENDING", "RUNNING"})


def duration(seconds: float | None) -> str:
    """1.2s, 3m05s, 2h10m; `-` when not measured."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class PipelineRow:
    """One pipeline on one agent, with its last run."""

    key: str
    agent: str
    order: int
    summary: PipelineSummary

    @property
    def name(self) -> str:
        return self.summary.spec.name

    @property
    def last(self) -> RunSummary | None:
        return self.summary.last_run

    def cells(self) -> tuple[str, ...]:
        last = self.last
        return (
            self.agent,
            self.name,
            str(len(self.summary.spec.steps)),
            last.id if last else "-",
            last.state if last else "never run",
            progress(last) if last else "-",
            duration(last.duration_s) if last else "-",
        )

    def as_json(self) -> dict[str, Any]:
        return {"agent": self.agent, **self.summary.model_dump(mode="json")}

    def matches_text(self) -> str:
        """What the `/` filter searches: host, pipeline, last run and its state."""
        return " ".join(self.cells())


COLUMNS = ("HOST", "PIPELINE", "STEPS", "LAST RUN", "STATE", "DONE", "TOOK")


def pipeline_rows(agent: str, order: int, summaries: Sequence[PipelineSummary]) -> list[PipelineRow]:
    return [PipelineRow(f"{agent}{KEY_SEP}{p.spec.name}", agent, order, p) for p in summaries]


def progress(run: RunSummary) -> str:
    """`7/10 (3 cached)`: steps over, of all; the cache hits among them."""
    text = f"{run.steps_done}/{run.steps_total}"
    return text + (f" ({run.cache_hits} cached)" if run.cache_hits else "")


def run_row(agent: str, run: RunSummary) -> tuple[str, ...]:
    return (agent, run.id, run.pipeline, run.state, progress(run), duration(run.duration_s), run.trigger,
            run.reason or run.trigger_detail)  # fmt: skip


RUN_COLUMNS = ("HOST", "RUN", "PIPELINE", "STATE", "DONE", "TOOK", "TRIGGER", "WHY")


def render(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table for the CLI."""
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [columns, *rows]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- a run's steps as a tree


@dataclass(frozen=True)
class TreeLine:
    """One step in the tree: its depth (longest path from a root), its line, its state."""

    step: str
    depth: int
    text: str
    state: str


def step_note(s: StepRun) -> str:
    """What the tree says beside a step: cache hit, reuse, its job, retries, why it failed."""
    notes = []
    if s.cache_hit:
        notes.append(f"cache hit{f' (from {s.reused_from})' if s.reused_from else ''}")
    elif s.reused_from:
        notes.append(f"reused from {s.reused_from}")
    if s.job_id:
        notes.append(f"job {s.job_id}")
    if s.attempt > 1:
        notes.append(f"attempt {s.attempt}")
    if s.reason and s.state not in ("COMPLETED", "RUNNING"):
        notes.append(s.reason)
    return " · ".join(notes)


def run_tree(run: Run, specs: Sequence[StepSpec] = (), now: float | None = None) -> list[TreeLine]:
    """The run's steps in dependency order, each indented under the step it waits for last.

    `specs` (the pipeline's steps) gives the edges; without them the steps come as the run lists them.
    A running step's duration is how long it has run so far (`now`, agent clock).
    """
    deps = {s.name: list(s.depends_on) for s in specs}
    for s in specs:
        for src in s.inputs.values():
            head = src.split(".", 1)[0]
            if "." in src and not src.startswith(("file:", "dataset:")) and head not in deps[s.name]:
                deps[s.name].append(head)
    depth: dict[str, int] = {}

    def depth_of(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            parents = [d for d in deps.get(name, []) if d not in seen]
            depth[name] = 1 + max((depth_of(p, seen | {name}) for p in parents), default=-1)
        return depth[name]

    steps = sorted(run.steps, key=lambda s: depth_of(s.step)) if specs else list(run.steps)
    lines = []
    for s in steps:
        d = depth_of(s.step) if specs else 0
        took = s.duration_s
        if took is None and s.state == "RUNNING" and s.started_at is not None and now is not None:
            took = max(0.0, now - s.started_at)
        indent = "  " * d + ("└ " if d else "")
        mark = STATE_MARK.get(s.state, "?")
        note = step_note(s)
        text = f"{indent}{mark} {s.step}  {s.state.lower()}  {duration(took)}" + (f"  {note}" if note else "")
        lines.append(TreeLine(s.step, d, text, s.state))
    return lines


def run_header(agent: str, run: Run) -> list[str]:
    lines = [
        f"{run.id} on {agent}: {run.pipeline} {run.state}  {progress(run)}  took {duration(run.duration_s)}",
        f"  version {run.pipeline_version[:19]}  trigger {run.trigger}"
        + (f" ({run.trigger_detail})" if run.trigger_detail else "")
        + f"  by {run.created_by}",
    ]
    if run.code_commit:
        lines.append(f"  code {run.code_commit[:12]}{' (dirty)' if run.code_dirty else ''}  host {run.host or '-'}")
    if run.params:
        lines.append("  params " + ", ".join(f"{k}={value(v)}" for k, v in sorted(run.params.items())))
    if run.reason:
        lines.append(f"  why: {run.reason}")
    for m in run.models:
        lines.append(f"  model {m.model} v{m.version}" + (f"  rollout {m.rollout_id}" if m.rollout_id else ""))
    return lines


# --------------------------------------------------------------------------- metrics, compare


def run_metrics(run: Run) -> dict[str, float]:
    """Every step's metrics as `STEP.metric`."""
    return {f"{s.step}.{k}": v for s in run.steps for k, v in s.metrics.items()}


def metrics_beside(run: Run, previous: Run | None) -> list[tuple[str, str, str, str]]:
    """(metric, this run, previous run, change) for every metric either logged."""
    now, before = run_metrics(run), run_metrics(previous) if previous else {}
    out = []
    for key in sorted(set(now) | set(before)):
        a, b = now.get(key), before.get(key)
        change = f"{a - b:+.4g}" if a is not None and b is not None else ""
        out.append((key, value(a), value(b), change))
    return out


def compare_lines(cmp: RunCompare) -> list[str]:
    """A comparison as the CLI prints it: changed values marked `*`."""
    out = [f"A {cmp.a.id} {cmp.a.pipeline} {cmp.a.state}    B {cmp.b.id} {cmp.b.pipeline} {cmp.b.state}", ""]
    for title, diffs in (("params", cmp.params), ("metrics", cmp.metrics)):
        rows = [("*" if d.changed else " ", d.key, value(d.a), value(d.b)) for d in diffs]
        out.append(render((" ", title.upper(), "A", "B"), rows) if rows else f"no {title}")
        out.append("")
    rows = [
        ("*" if d.outputs_changed else " ", d.step, f"{d.a_state or '-'}{' (cached)' if d.a_cache_hit else ''}",
         f"{d.b_state or '-'}{' (cached)' if d.b_cache_hit else ''}", duration(d.a_duration_s),
         duration(d.b_duration_s))
        for d in cmp.steps
    ]  # fmt: skip
    out.append(render((" ", "STEP", "A", "B", "A TOOK", "B TOOK"), rows) if rows else "no steps")
    return out
