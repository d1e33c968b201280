"""The rollouts view's rows and texts as plain values, shared by the TUI and the rollout commands. No Textual.

One row per (agent, rollout): the agent's active rollouts and those that ended recently. Order: the
ones waiting for a human first (awaiting approval, then paused), then validating and progressing, then
the ended ones, newest first. Texts that carry colour (the detail panel, the gate) are built as lines of
(text, style) segments: the TUI turns them into rich Text, the CLI prints the text.

Steps are numbered from 1 on screen ("step 2/7"); the API's `step_index` counts from 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.schemas import ROLLOUT_TERMINAL, ABResult, GateResult, GuardMetric, RolloutOut, RolloutStep
from console.core.feeds import FeedState, is_outage
from console.core.poller import FleetStatus
from console.core.rows import KEY_SEP, MISSING, AgentItemRow, Column, fmt_age, fmt_number, render_columns
from console.rollouts.client import RolloutFeed, rollout_feed

Seg = tuple[str, str]  # (text, rich style; "" for none)
Line = list[Seg]

COLUMNS: tuple[Column, ...] = (
    Column("host", "HOST"),
    Column("endpoint", "ENDPOINT"),
    Column("strategy", "STRATEGY"),
    Column("versions", "STABLE→CANDIDATE"),
    Column("state", "STATE"),
    Column("step", "STEP"),
    Column("weight", "WEIGHT", numeric=True),
    Column("shadow", "SHADOW", numeric=True),
    Column("in_step", "IN STEP", numeric=True),
    Column("guards", "GUARDS"),
    Column("by", "STARTED BY"),
)

STATE_RANK = {"awaiting_approval": 0, "paused": 1, "validating": 2, "progressing": 3}
STATE_STYLE = {
    "awaiting_approval": "bold reverse yellow",
    "paused": "bold yellow",
    "validating": "cyan",
    "progressing": "bold green",
    "promoted": "green",
    "aborted": "bold red",
    "rolled_back": "red",
    "rejected": "bold red",
}
# Guards whose values are shares (shown as percent) and latencies (ms); the rest are plain numbers.
PERCENT_GUARDS = frozenset({"error_rate", "fallback_rate", "shadow_disagreement", "feature_drift_share"})
MS_GUARDS = frozenset({"p99_ms", "p99_vs_stable"})
AB_STATUS = {
    "not_enough_data": ("not enough data yet", "yellow"),
    "no_difference": ("no significant difference", ""),
    "candidate_better": ("candidate better", "bold green"),
    "candidate_worse": ("candidate worse", "bold red"),
}


def rollout_key(agent: str, rollout_id: str) -> str:
    """The table key of one rollout of one agent."""
    return f"{agent}{KEY_SEP}{rollout_id}"


def state_label(state: str) -> str:
    return state.replace("_", " ")


def step_kind(step: RolloutStep) -> str:
    """Which field a step sets: set_weight, shadow, pause_s, approval or analysis_s."""
    for name in ("set_weight", "shadow", "pause_s", "approval", "analysis_s"):
        if getattr(step, name) is not None:
            return name
    return "?"


def describe_step(step: RolloutStep) -> str:
    """'weight 25%', 'shadow 10%', 'pause 60s', 'approval', 'analysis 2m'."""
    match step_kind(step):
        case "set_weight":
            return f"weight {step.set_weight:g}%"
        case "shadow":
            return f"shadow {(step.shadow or 0) * 100:g}%"
        case "pause_s":
            return f"pause {fmt_age(step.pause_s)}"
        case "analysis_s":
            return f"analysis {fmt_age(step.analysis_s)}"
        case "approval":
            return "approval"
    return "?"


def fmt_guard(name: str, value: float | None) -> str:
    """A guard's value or limit in its unit."""
    if value is None:
        return MISSING
    if name in PERCENT_GUARDS:
        return f"{value * 100:.1f}%"
    if name in MS_GUARDS:
        return f"{value:.1f} ms"
    return f"{value:.3g}"


def fmt_signed(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:+.{digits}g}"


@dataclass(frozen=True)
class RolloutRow(AgentItemRow):
    """One rollout of one agent, as last seen."""

    rollout: RolloutOut
    now: float  # "now" on the agent's clock (ages are measured against it)
    stale: bool = False  # the agent is not answering: its last known state

    @property
    def state(self) -> str:
        return self.rollout.state

    @property
    def ended(self) -> bool:
        return self.rollout.state in ROLLOUT_TERMINAL

    @property
    def awaiting(self) -> bool:
        """Waiting for an approver (on a step we know)."""
        return self.rollout.state == "awaiting_approval" and self.rollout.awaiting_approval_for is not None

    @property
    def step(self) -> RolloutStep | None:
        r = self.rollout
        return r.steps[r.step_index] if 0 <= r.step_index < len(r.steps) else None

    @property
    def step_elapsed_s(self) -> float:
        return max(0.0, self.now - self.rollout.step_started_at)

    @property
    def breached(self) -> list[GuardMetric]:
        return [g for g in self.rollout.guards if g.breached]

    @property
    def unjudged(self) -> list[GuardMetric]:
        """Guards with nothing measured yet (an older agent says so by a missing candidate value)."""
        return [g for g in self.rollout.guards if not_judged(g)]

    def guards_text(self) -> str:
        """'1 breached', 'ok', 'ok; 1 not judged', or 'not judged (12 of 50 requests)' - never 'ok' on no evidence."""
        guards = self.rollout.guards
        if not guards:
            return MISSING
        if self.breached:
            return f"{len(self.breached)} breached"
        unjudged = self.unjudged
        if len(unjudged) == len(guards):
            return f"not judged{requests_text(unjudged)}"
        return f"ok; {len(unjudged)} not judged" if unjudged else "ok"

    @property
    def versions(self) -> str:
        r = self.rollout
        return f"{r.model} v{r.stable_version}→v{r.candidate_version}"

    def blocked(self, action: str) -> str | None:
        """Why `action` can't apply to this rollout now (the agent has the last word), or None."""
        r = self.rollout
        if self.stale:
            return f"{self.host} is not answering; try again when it is back"
        if action == "rollback":
            if self.ended and r.state != "promoted":
                return f"it is {state_label(r.state)}: its traffic is already on stable"
            return None
        if self.ended:
            return f"it has ended ({state_label(r.state)})"
        if action in ("approve", "reject"):
            if not self.awaiting:
                return f"nothing awaits approval: it is {state_label(r.state)} at step {r.step_index + 1}"
        elif action == "promote" and r.state == "validating":
            return "it is still being validated"
        elif action == "pause" and r.state not in ("progressing", "awaiting_approval"):
            return f"it is {state_label(r.state)}; only a running rollout pauses"
        elif action == "resume" and r.state != "paused":
            return f"it is {state_label(r.state)}, not paused"
        return None

    def text(self, column: str) -> str:
        """The display text of one column."""
        r = self.rollout
        match column:
            case "host":
                return self.host
            case "endpoint":
                return r.endpoint
            case "strategy":
                return r.strategy
            case "versions":
                return self.versions
            case "state":
                if self.awaiting:
                    return f"AWAITING APPROVAL (step {(r.awaiting_approval_for or 0) + 1})"
                return state_label(r.state)
            case "step":
                step = self.step
                if step is None:
                    return f"{min(r.step_index, len(r.steps))}/{len(r.steps)} done"
                return f"{r.step_index + 1}/{len(r.steps)} {describe_step(step)}"
            case "weight":
                return f"{r.weight:g}%"
            case "shadow":
                return f"{r.shadow * 100:g}%" if r.shadow else MISSING
            case "in_step":
                if self.ended:
                    return f"ended {fmt_age(max(0.0, self.now - r.ended_at))} ago" if r.ended_at else "ended"
                step = self.step
                limit = (step.pause_s or step.analysis_s) if step is not None else None
                elapsed = fmt_age(self.step_elapsed_s)
                return f"{elapsed} of {fmt_age(limit)}" if limit else elapsed
            case "guards":
                return self.guards_text()
            case "by":
                return r.started_by
        raise KeyError(column)

    def sort_key(self) -> tuple[Any, ...]:
        r = self.rollout
        if self.ended:
            return (len(STATE_RANK), -(r.ended_at or r.updated_at), self.order, r.endpoint, r.id)
        return (STATE_RANK.get(r.state, len(STATE_RANK)), 0.0, self.order, r.endpoint, r.id)

    def matches_text(self) -> str:
        """What the `/` filter searches."""
        r = self.rollout
        parts = (self.host, r.endpoint, r.model, r.strategy, r.state, state_label(r.state), r.id, r.started_by)
        return " ".join(parts)

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form: the agent's rollout plus where it came from."""
        data = self.rollout.model_dump(mode="json")
        data.update(agent=self.agent, host=self.host, stale=self.stale)
        return data


def rollout_rows(status: FleetStatus, *, include_ended: bool = True) -> list[RolloutRow]:
    """Every agent's rollouts (active and recently ended), sorted (see the module docstring)."""
    rows: list[RolloutRow] = []
    for order, agent in enumerate(status.agents):
        feed = rollout_feed(agent)
        if feed is None:
            continue
        now = status.polled_at + agent.clock_offset_s
        down = is_outage(agent)
        for r in feed.rollouts if include_ended else feed.active:
            rows.append(RolloutRow(rollout_key(agent.name, r.id), agent.name, order, agent.label, r, now, stale=down))
    return sorted(rows, key=RolloutRow.sort_key)


def awaiting_count(status: FleetStatus) -> int:
    """Rollouts across the fleet waiting for an approver."""
    return sum(
        1
        for agent in status.agents
        if (feed := rollout_feed(agent)) is not None
        for r in feed.active
        if r.state == "awaiting_approval"
    )


# --------------------------------------------------------------------------- plain text


def render_rollouts(rows: Sequence[RolloutRow]) -> str:
    """Plain aligned text of the rollouts table (`watchkeeper rollouts`)."""
    return render_columns(COLUMNS, [[r.text(c.key) for c in COLUMNS] for r in rows])


def plain(lines: Iterable[Line]) -> str:
    """The text of styled lines."""
    return "\n".join("".join(text for text, _ in line) for line in lines)


def progress_line(host: str, r: RolloutOut) -> str:
    """One line of `deploy --wait` progress: where a rollout stands now."""
    return f"{host} {r.endpoint}: {where_now(r)}"


def where_now(r: RolloutOut) -> str:
    """State, step, weight (and shadow, breached guards, what it waits for, why it ended)."""
    step = r.steps[r.step_index] if 0 <= r.step_index < len(r.steps) else None
    where = f"step {r.step_index + 1}/{len(r.steps)} {describe_step(step)}" if step is not None else "all steps done"
    text = f"{state_label(r.state)}, {where}, weight {r.weight:g}%"
    if r.shadow:
        text += f", shadow {r.shadow * 100:g}%"
    breached = [g.name for g in r.guards if g.breached]
    if breached:
        text += f", guards breached: {', '.join(breached)}"
    if r.state == "awaiting_approval" and r.awaiting_approval_for is not None:
        text += f" (approve step {r.awaiting_approval_for + 1}: watchkeeper approve {r.id})"
    if r.end_reason:
        text += f" ({r.end_reason})"
    return text


# --------------------------------------------------------------------------- the detail panel


def plan_line(r: RolloutOut) -> Line:
    """The plan's steps, done ones dim, the current one marked."""
    line: Line = [("plan  ", "bold")]
    for i, step in enumerate(r.steps):
        desc = f"{i + 1} {describe_step(step)}"
        if i == r.step_index and r.state not in ROLLOUT_TERMINAL:
            style = "bold reverse yellow" if r.state == "awaiting_approval" else "bold reverse"
            line.append((f"[{desc}]", style))
        else:
            line.append((desc, "dim" if i < r.step_index else ""))
        if i < len(r.steps) - 1:
            line.append(("  ", ""))
    return line


def gate_lines(gate: GateResult | None) -> list[Line]:
    """The validation gate's verdict and each metric, stable beside candidate."""
    if gate is None:
        return [[("gate  ", "bold"), ("none recorded", "dim")]]
    verdict: Seg = ("passed", "green") if gate.passed else ("FAILED", "bold red")
    where = f" on {gate.dataset}" if gate.dataset else ""
    facts = []
    if gate.dataset_digest:
        facts.append(f"sha256 {gate.dataset_digest[:12]}")
    if gate.rows:
        facts.append(f"{gate.rows} rows")
    tail = where + (f" ({', '.join(facts)})" if facts else "") + (f": {gate.note}" if gate.note else "")
    lines: list[Line] = [[("gate  ", "bold"), verdict, (tail, "")]]
    for m in gate.metrics:
        bounds = []
        if m.threshold is not None:
            bounds.append(f"threshold {fmt_number(m.threshold)}")
        if m.min_absolute_change is not None:
            bounds.append(f"change {fmt_signed(m.min_absolute_change)}")
        if m.min_relative_change is not None:
            bounds.append(f"change {m.min_relative_change * 100:+.3g}%")
        text = f"  {m.metric:<9} candidate {fmt_number(m.candidate)}  stable {fmt_number(m.stable)}"
        if bounds:
            text += f"  ({', '.join(bounds)})"
        line: Line = [(text + "  ", ""), ("ok", "green") if m.passed else ("FAIL", "bold red")]
        if m.detail:
            line.append((f"  {m.detail}", "dim" if m.passed else "red"))
        lines.append(line)
    return lines


def not_judged(g: GuardMetric) -> bool:
    """Nothing measured for this guard yet (too few requests in the window)."""
    return not g.breached and (not g.judged or g.candidate is None)


def requests_text(guards: Sequence[GuardMetric]) -> str:
    """' (12 of 50 requests)' from the guards' counts (the fewest), '' when the agent gave none."""
    counted = [g for g in guards if g.requests is not None and g.min_requests is not None]
    if not counted:
        return ""
    g = min(counted, key=lambda g: g.requests or 0)
    return f" ({g.requests} of {g.min_requests} requests)"


def guard_lines(r: RolloutOut, now: float) -> list[Line]:
    """The guards, stable beside candidate; breached ones red with how long."""
    if not r.guards:
        return [[("guards  ", "bold"), ("none judged yet", "dim")]]
    w = max(len("guard"), *(len(g.name) for g in r.guards))
    lines: list[Line] = [[(f"{'guard':<{w}}  {'stable':>9}  {'candidate':>9}  {'limit':>9}", "bold")]]
    for g in r.guards:
        text = (
            f"{g.name:<{w}}  {fmt_guard(g.name, g.stable):>9}  {fmt_guard(g.name, g.candidate):>9}  "
            f"{fmt_guard(g.name, g.limit):>9}"
        )
        if g.breached:
            since = f" for {fmt_age(max(0.0, now - g.breached_since))}" if g.breached_since is not None else ""
            lines.append([(text, "red"), (f"  BREACHED{since}", "bold red")])
        elif not_judged(g):
            lines.append([(text, "dim"), (f"  not judged{requests_text([g])}", "yellow")])
        else:
            lines.append([(text, ""), ("  ok", "green")])
    if any(not_judged(g) for g in r.guards):
        lines.append([("not judged: too few requests in the window yet - no evidence either way", "yellow")])
    return lines


def ab_lines(ab: ABResult | None) -> list[Line]:
    """The A/B result: lift with its confidence interval, p-value and verdict."""
    if ab is None:
        return []
    label, style = AB_STATUS.get(ab.status, (ab.status, ""))
    head: Line = [("A/B  ", "bold"), (f"{ab.outcome.replace('_', ' ')} ({ab.test}): ", ""), (label, style)]
    arms = (
        f"  stable {fmt_number(ab.stable_mean)} (n {ab.stable_n})  candidate {fmt_number(ab.candidate_mean)} "
        f"(n {ab.candidate_n})"
    )
    lines = [head, [(arms, "")]]
    if ab.status == "not_enough_data":
        lines.append([("  lift, CI and p-value once both arms have enough outcomes", "dim")])
    else:
        ci = f"[{fmt_signed(ab.ci_low)}, {fmt_signed(ab.ci_high)}]"
        p = MISSING if ab.p_value is None else f"{ab.p_value:.3g}"
        lines.append([(f"  lift {fmt_signed(ab.lift)}  95% CI {ci}  p {p}", "")])
    return lines


def approval_lines(r: RolloutOut, now: float) -> list[Line]:
    """Who approved or rejected which step, newest last."""
    if not r.approvals:
        rule = "two-person rule: someone other than " + r.started_by if r.two_person_rule else "no two-person rule"
        return [[("approvals  ", "bold"), (f"none yet ({rule})", "dim")]]
    lines: list[Line] = [[("approvals", "bold")]]
    for a in r.approvals:
        style = "green" if a.decision == "approved" else "bold red"
        text = f"  step {a.step_index + 1} "
        tail = f" by {a.principal} {fmt_age(max(0.0, now - a.at))} ago" + (f": {a.reason}" if a.reason else "")
        lines.append([(text, ""), (a.decision, style), (tail, "")])
    return lines


def lineage_line(r: RolloutOut) -> Line:
    lin = r.candidate_lineage
    if lin is None:
        return [("candidate  ", "bold"), ("no lineage recorded", "dim")]
    commit = lin.code_commit
    if len(commit) > 12 and all(c in "0123456789abcdef" for c in commit.lower()):
        commit = commit[:12]  # a git hash; the whole one is in the JSON
    line: Line = [("candidate  ", "bold"), (f"build {lin.build_id}  commit {commit}", "")]
    if lin.code_dirty:
        line.append((" (dirty)", "bold yellow"))
    line.append((f"  data {lin.data_version}", ""))
    extra = []
    if lin.params_hash:
        extra.append(f"params {lin.params_hash[:12]}")
    if lin.parent_version is not None:
        extra.append(f"parent v{lin.parent_version}")
    if lin.job_id:
        extra.append(f"job {lin.job_id}")
    if extra:
        line.append(("  " + "  ".join(extra), "dim"))
    return line


def head_lines(row: RolloutRow) -> list[Line]:
    r = row.rollout
    state: Seg = (row.text("state"), STATE_STYLE.get(r.state, ""))
    first: Line = [(f"{r.endpoint} on {row.host}  ", "bold"), (f"{r.strategy}  {row.versions}  ", ""), state]
    if row.stale:
        first.append((f"  [{row.host} not answering: last known state]", "bold yellow"))
    started = f"id {r.id}  started by {r.started_by} {fmt_age(max(0.0, row.now - r.started_at))} ago"
    second: Line = [(started, "dim")]
    if not row.ended:
        second.append((f"  step {r.step_index + 1}/{len(r.steps)} for {fmt_age(row.step_elapsed_s)}", "dim"))
        loaded = "candidate loaded" if r.candidate_loaded else "candidate loading"
        second.append((f"  {loaded}", "dim" if r.candidate_loaded else "yellow"))
    lines = [first, second]
    if row.ended:
        ago = f" {fmt_age(max(0.0, row.now - r.ended_at))} ago" if r.ended_at else ""
        lines.append([(f"ended{ago}", STATE_STYLE.get(r.state, "")), (f": {r.end_reason}" if r.end_reason else "", "")])
    return lines


def detail_lines(row: RolloutRow) -> list[Line]:
    """The left half of the detail panel: what, plan, gate, approvals, lineage."""
    r = row.rollout
    return [*head_lines(row), plan_line(r), *gate_lines(r.gate), *approval_lines(r, row.now), lineage_line(r)]


def live_lines(row: RolloutRow) -> list[Line]:
    """The right half: guards side by side, then the A/B result."""
    r = row.rollout
    lines = guard_lines(r, row.now)
    ab = ab_lines(r.ab)
    if ab:
        lines.append([])
        lines.extend(ab)
    return lines


def feed_summary(feed: RolloutFeed | None) -> str:
    """How an agent's rollouts were read, for the JSON output."""
    return (feed.state if feed else FeedState.UNKNOWN).value
