"""One meaning per key across the console's screens; destructive keys never harmless elsewhere."""

from __future__ import annotations

from textual.binding import Binding

from console.app import WatchkeeperApp
from console.core.readonly import is_mutating
from console.core.screens.help import MUTATING_KEYS, help_text
from console.fleet.fleet_screen import FleetScreen
from console.fleet.host_screen import HostScreen
from console.jobs.quotas_screen import QuotasScreen
from console.jobs.screen import JobsScreen
from console.monitoring.alerts_screen import AlertsScreen
from console.monitoring.drift_screen import DriftScreen
from console.pipelines.screen import PipelinesScreen
from console.rollouts.screen import RolloutsScreen
from console.serving.endpoints_screen import EndpointsScreen
from console.timeline.screen import TimelineScreen

SCREENS = (
    FleetScreen,
    HostScreen,
    EndpointsScreen,
    DriftScreen,
    AlertsScreen,
    RolloutsScreen,
    JobsScreen,
    QuotasScreen,
    TimelineScreen,
    PipelinesScreen,
)
# Actions that are the same meaning under other names: go back / close, and refresh.
SYNONYMS = {
    "app.pop_screen": "back",
    "clear_filter": "back",
    "dismiss_filter": "back",
    "reload": "refresh_now",
    "app.alerts": "alerts",
    "app.jobs": "jobs",
    "app.quotas": "quotas",
    # Ctrl+k cancels the selected thing: a job, a pipeline run.
    "cancel_run": "cancel_job",
    # `a` affirms the selected item: acknowledge an alert, approve a rollout's awaiting step.
    "ack": "affirm",
    "approve": "affirm",
}


def bindings(cls: type) -> list[tuple[str, str, bool]]:
    """(key, action, mutating) of every binding a class declares or inherits from our classes (not Textual's)."""
    out = []
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("console."):
            continue
        for b in klass.__dict__.get("BINDINGS", []):
            if isinstance(b, Binding):
                for key in b.key.split(","):
                    out.append((key.strip(), b.action, is_mutating(cls, b.action)))
    return out


def test_every_key_means_one_thing_on_every_screen() -> None:
    meanings: dict[str, set[str]] = {}
    for cls in (WatchkeeperApp, *SCREENS):
        for key, action, _ in bindings(cls):
            meanings.setdefault(key, set()).add(SYNONYMS.get(action, action))
    clashes = {k: v for k, v in meanings.items() if len(v) > 1}
    assert clashes == {}
    assert meanings["r"] == {"refresh_now"}
    # The jobs and quotas screens open from everywhere with one key each; `s` sorts wherever it is bound.
    assert meanings["j"] == {"jobs"} and meanings["u"] == {"quotas"}
    assert meanings["s"] == {"cycle_sort"}
    # `p` promotes a rollout, so pipelines are `P`; running one is `Ctrl+g` (`G` sorts the fleet by GPU).
    assert meanings["P"] == {"pipelines"} and meanings["ctrl+g"] == {"run_pipeline"}


def test_destructive_keys_are_never_a_harmless_key_elsewhere() -> None:
    harmless = {key for cls in (WatchkeeperApp, *SCREENS) for key, _, mut in bindings(cls) if not mut}
    destructive = {key for cls in SCREENS for key, _, mut in bindings(cls) if mut}
    assert destructive and destructive.isdisjoint(harmless)
    # The help screen lists exactly the keys that are bound to mutating actions.
    listed = {key.lower() for _, key in MUTATING_KEYS}
    assert listed == {k.lower() for k in destructive}
    assert "Ctrl+r" in help_text(readonly=False) and "X " in help_text(readonly=False)
    # Cancelling and requeueing a job are mutating keys of the jobs screen, listed in the help as such.
    assert {("ctrl+k", "cancel_job", True), ("Q", "requeue_job", True)} <= set(bindings(JobsScreen))
    assert "Ctrl+k" in help_text(readonly=False) and "[disabled: read-only]" in help_text(readonly=True)
    # Running a pipeline and cancelling its run are mutating keys of the pipelines screen.
    assert {("ctrl+g", "run_pipeline", True), ("ctrl+k", "cancel_run", True)} <= set(bindings(PipelinesScreen))
