"""The `?` help screen: every key, grouped by where it works."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Everywhere",
        (
            ("?", "this help"),
            ("!", "alerts across the fleet"),
            ("R", "rollouts across the fleet"),
            ("j", "jobs across the fleet"),
            ("u", "quotas across the fleet (per host and pipeline)"),
            ("P", "pipelines across the fleet: last runs, a run's steps, metrics beside the previous run"),
            ("r", "refresh now"),
            ("q", "quit"),
        ),
    ),
    (
        "Fleet",
        (
            ("↑ ↓ PgUp PgDn", "move"),
            ("Enter", "open host"),
            ("e", "endpoints (model serving across the fleet)"),
            ("/", "filter (regex, smart case; !regex inverts)"),
            ("Esc", "clear filter"),
            ("s", "sort by next column"),
            ("N S C M G U A", "sort by name, state, CPU, mem, GPU, GPU mem, age (twice: reverse)"),
            ("click header", "sort by that column"),
        ),
    ),
    (
        "Host",
        (("Esc / Backspace", "back to fleet"),),
    ),
    (
        "Endpoints",
        (
            ("f", "switch the selected endpoint to its fallback / back (asks, reason required)"),
            ("d", "drift of the selected endpoint"),
            ("t", "timeline of the selected endpoint across its hosts"),
            ("/", "filter (host, endpoint, model:version, breaker, mode)"),
            ("Esc", "clear filter, else back to fleet"),
        ),
    ),
    (
        "Drift",
        (
            ("↑ ↓", "select a feature: its reference vs current histogram below"),
            ("b", "baseline: reference profile / previous window"),
            ("r", "refresh the drift now"),
            ("/", "filter features (name, method, verdict, quality issue)"),
            ("Esc", "clear filter, else back to endpoints"),
        ),
    ),
    (
        "Timeline",
        (
            ("← → (shift: x10)", "move the cursor through time: the items at that moment below"),
            ("+ / -", "zoom in / out (1 h, 3 h, 6 h, 12 h, 1 d, 3 d, 7 d)"),
            ("w", "what changed in the 30 min before the cursor (the alert's moment when opened from one)"),
            ("Esc", "leave 'what changed', else back"),
        ),
    ),
    (
        "Alerts",
        (
            ("a", "acknowledge the selected alert (asks; comment optional)"),
            ("z", "silence (snooze) the selected alert for 1h / 4h / 24h (asks)"),
            ("t", "timeline of the alert's endpoint, at the moment it fired"),
            ("/", "filter (host, severity, state, rule, endpoint, subject, summary)"),
            ("Esc", "clear filter, else back"),
        ),
    ),
    (
        "Rollouts",
        (
            ("m / c", "mark the selected rollout (actions apply to all marked) / clear all marks"),
            ("t", "timeline of the rollout's endpoint, around its start"),
            ("a", "approve the awaiting step (asks; reason optional)"),
            ("x", "reject the awaiting step: back to stable (asks, reason required)"),
            ("p", "promote now, skipping the remaining steps (asks)"),
            ("space", "pause / resume (asks)"),
            ("X", "abort: all traffic back to stable (asks, reason required)"),
            ("Ctrl+r", "roll back (revert), also a promoted rollout (asks, reason required)"),
            ("/", "filter (host, endpoint, model, strategy, state, id, author)"),
            ("Esc", "clear filter, else back"),
        ),
    ),
    (
        "Jobs",
        (
            ("o", "the selected job's log: stdout / stderr"),
            ("s", "sort by next column (running, pending, ended is the default)"),
            ("Ctrl+k", "cancel the selected job (asks; reason optional)"),
            ("Q", "requeue the selected ended job: a new attempt, same id (asks)"),
            ("/", "filter (host, pipeline, id, state, reason, who, command)"),
            ("Esc", "clear filter, else back"),
        ),
    ),
    (
        "Quotas",
        (
            ("/", "filter (host, pipeline, 'near cpu')"),
            ("Esc", "clear filter, else back"),
        ),
    ),
    (
        "Pipelines",
        (
            ("Ctrl+g", "run the selected pipeline with its default parameters (asks; reason optional)"),
            ("Ctrl+k", "cancel the selected pipeline's active run (asks; reason optional)"),
            ("/", "filter (host, pipeline, run, state)"),
            ("Esc", "clear filter, else back"),
        ),
    ),
)

STATES = (
    ("up", "answering, newest sample fresh"),
    ("stale", "answering, but newest sample older than 3 sample intervals"),
    ("down", "not answering or refusing us (why and next retry shown); an agent_down alert too"),
)


# Keys that change something on an agent: marked as disabled in read-only mode.
MUTATING_KEYS = {
    ("Endpoints", "f"),
    ("Alerts", "a"),
    ("Alerts", "z"),
    *(("Rollouts", key) for key in ("a", "x", "p", "space", "X", "Ctrl+r")),
    ("Jobs", "Ctrl+k"),
    ("Jobs", "Q"),
    ("Pipelines", "Ctrl+g"),
    ("Pipelines", "Ctrl+k"),
}


def help_text(readonly: bool) -> str:
    """The help body as plain text."""
    width = max(len(k) for _, rows in HELP_SECTIONS for k, _ in rows) + 2
    lines: list[str] = []
    for title, rows in HELP_SECTIONS:
        lines.append(title)
        for key, what in rows:
            off = " [disabled: read-only]" if readonly and (title, key) in MUTATING_KEYS else ""
            lines.append(f"  {key:<{width}}{what}{off}")
        lines.append("")
    lines.append("States")
    lines.extend(f"  {key:<{width}}{what}" for key, what in STATES)
    lines.append("")
    lines.append("Mode: read-only (actions that change agents are disabled)" if readonly else "Mode: read-write")
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Key reference; Escape or ? closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        # A modal masks the App's bindings; `q` must still quit from here.
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("Watchkeeper — keys", classes="help--title")
            yield Static(help_text(bool(getattr(self.app, "readonly", False))), id="help-body", markup=False)
