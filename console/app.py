"""`WatchkeeperApp`: the fleet console.

Data flow (one direction each way):
- a poll runs in an exclusive worker, posts `FleetPolled`, and only when it has finished is the
  next poll armed, so polls never overlap however slow the fleet is;
- the App keeps the newest `FleetStatus` (a reactive) and hands it down to the visible screen,
  unless a modal covers it (the screen catches up when it is resumed);
- every problem the user should hear about goes to one sink, `on_console_error`.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.timer import Timer

from console.core.errors import why
from console.core.messages import ConsoleError, FallbackToggled, FleetPolled
from console.core.poller import AgentState, AgentStatus, FleetSource, FleetStatus
from console.core.readonly import allowed
from console.core.screens.base import ConsoleScreen
from console.core.screens.help import HelpScreen
from console.fleet.fleet_screen import FleetScreen
from console.fleet.host_screen import HostScreen
from console.jobs.quotas_screen import QuotasScreen
from console.jobs.screen import JobsScreen
from console.monitoring.alert_rows import firing_count
from console.monitoring.alerts_screen import AlertsScreen
from console.pipelines.screen import PipelinesScreen
from console.rollouts.rows import awaiting_count
from console.rollouts.screen import RolloutsScreen
from console.serving.endpoints_screen import EndpointsScreen

DEFAULT_REFRESH_S = 2.0
# A phased source (one with `want_phases`) spreads a poll's agents over this share of the refresh
# interval; the rest is slack for the last agents' answers before the next poll starts.
SPREAD_SHARE = 0.75
# The next poll starts this share of the interval early. Phased, the poller hands answers over at
# fixed times after a poll's start, so a row changes once per poll period; the slack absorbs the UI's
# own lateness (a timer firing late, a batch drawn behind another), so no row waits over refresh_s.
PERIOD_SLACK_SHARE = 0.05
# Unphased (--prometheus), a poll lands the whole fleet at once and the table draws it in slices over
# up to ~0.2 s at 1,000 rows: more slack.
UNPHASED_SLACK_SHARE = 0.1
# An unphased poll's answer is shown as late after its start as the slowest of this many polls.
LANDING_POLLS = 5
# The same error is reported at most once in this many seconds (a dead agent fails every poll).
ERROR_REPEAT_S = 60.0
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


NAMES_IN_A_TOAST = 5


def state_change_text(state: AgentState, agents: list[AgentStatus]) -> str:
    """One toast for the agents that went to `state` in one poll: "gpu-01 is down: why" for one,
    "12 agents down (why): a, b, c, d, e … +7 more" for many (the reason when they share one)."""
    if len(agents) == 1:
        agent = agents[0]
        if state is AgentState.UP:
            return f"{agent.label} is up again"
        return f"{agent.label} is {state.value}" + (f": {agent.reason}" if agent.reason else "")
    names = ", ".join(a.label for a in agents[:NAMES_IN_A_TOAST])
    more = f" … +{len(agents) - NAMES_IN_A_TOAST} more" if len(agents) > NAMES_IN_A_TOAST else ""
    if state is AgentState.UP:
        return f"{len(agents)} agents up again: {names}{more}"
    reasons = {a.reason for a in agents}
    why = f" ({reasons.pop()})" if len(reasons) == 1 and None not in reasons else ""
    return f"{len(agents)} agents {state.value}{why}: {names}{more}"


class WatchkeeperApp(App[int]):
    """The Watchkeeper fleet console."""

    TITLE = "Watchkeeper"
    CSS_PATH = Path(__file__).parent / "app.tcss"
    # A small SSH terminal (80x24) gets layouts that keep what is wrong on screen first: side-by-side
    # panels stack (`-narrow`) and the lower panels give their rows to the tables (`-short`).
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar = [(0, "-short"), (34, "-tall")]
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        # Textual's ctrl+c only hints at ctrl+q; operators expect Ctrl+C to leave.
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help"),
        Binding("r", "refresh_now", "Refresh"),
        # Alerts are fleet-wide: `!` opens them from any screen (the fleet screen shows the key).
        Binding("exclamation_mark", "alerts", "Alerts", show=False),
        # Rollouts are fleet-wide too: `R` opens them from any screen.
        Binding("R", "rollouts", "Rollouts", show=False),
        # Jobs and quotas are fleet-wide too: `j` and `u` open them from any screen.
        Binding("j", "jobs", "Jobs", show=False),
        Binding("u", "quotas", "Quotas", show=False),
        # `p` promotes a rollout (mutating), so pipelines are `P`.
        Binding("P", "pipelines", "Pipelines", show=False),
    ]

    # The first screen; a subclass (or a later feature) may swap in an extended one.
    FLEET_SCREEN: ClassVar[type[FleetScreen]] = FleetScreen

    fleet_status: reactive[FleetStatus | None] = reactive(None, always_update=True, init=False)

    def __init__(
        self,
        source: FleetSource,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        readonly: bool = False,
        theme: str | None = None,
        ansi_color: bool | None = None,
    ) -> None:
        super().__init__(ansi_color=ansi_color)
        self.source = source
        self.refresh_s = refresh_s
        # Plain attribute, fixed for the app's life: later mutating actions consult it (through
        # `console.core.readonly.mutating`), and nothing may switch it off at runtime.
        self.readonly = readonly
        if theme:
            self.theme = theme
        self.polls_started = 0
        self.polls_finished = 0
        self.polling = False
        self._poll_again = False
        self._poll_timer: Timer | None = None
        self._reported: dict[tuple[str, str], float] = {}
        # The last complete poll: state changes are announced between complete polls, so agents that
        # went down together share one toast even when a phased poll brings them in several batches.
        self._last_complete: FleetStatus | None = None
        self._poll_started = 0.0
        self._durations: list[float] = []  # the last unphased polls' durations (_steady_landing)
        phases = getattr(source, "want_phases", None)
        self.phased = phases is not None
        if phases is not None:
            phases(refresh_s * SPREAD_SHARE, self._poll_progress)
        self._previous_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self._install_signal_handlers()
        if self.readonly:
            self.add_class("-readonly")
        self._set_subtitle()
        self.push_screen(self.FLEET_SCREEN())
        self.poll_fleet()

    async def on_unmount(self) -> None:
        self._remove_signal_handlers()
        if self._poll_timer is not None:
            self._poll_timer.stop()
        await self.source.aclose()

    def _install_signal_handlers(self) -> None:
        # A closed SSH session (SIGHUP) or `kill` (SIGTERM) must leave through the normal exit
        # path, so the terminal is restored and whoever started us (e.g. `demo`) can clean up.
        loop = asyncio.get_running_loop()
        for sig in EXIT_SIGNALS:
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, functools.partial(self.exit, return_code=128 + sig))
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal
                continue
            self._previous_handlers[sig] = previous

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous_handlers.items():
            loop.remove_signal_handler(sig)
            # asyncio resets to SIG_DFL; put back what was there (e.g. demo's cleanup handler).
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers.clear()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed(self, action)

    # ------------------------------------------------------------------ polling

    @work(exclusive=True, group="fleet-poll")
    async def poll_fleet(self) -> None:
        """Poll every agent once in the background, then arm the next poll."""
        self.polling = True
        self.polls_started += 1
        self._poll_started = time.monotonic()
        cancelled = False
        try:
            self._tell_feeds_wanted()
            status = await self.source.poll()
            if not self.phased:
                await self._steady_landing()
            self.post_message(FleetPolled(status))
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:  # the poller should not raise; if it does, say so and keep polling
            self.post_message(ConsoleError("poll", f"poll failed: {type(exc).__name__}: {exc}"))
        finally:
            self.polling = False
            self.polls_finished += 1
            if not cancelled:
                self._arm_poll()

    async def _steady_landing(self) -> None:
        # An unphased poll (one set of PromQL queries) takes 0.3-0.5 s at 1,000 agents, varying: shown
        # as soon as it is back, rows changed every period give or take that. Held to the longest of the
        # last few polls instead, every answer lands at the same delay after its poll's start.
        took = time.monotonic() - self._poll_started
        self._durations = [*self._durations[-(LANDING_POLLS - 1) :], took]
        hold = max(self._durations) - took
        if 0 < hold < self.refresh_s * 0.25:
            await asyncio.sleep(hold)

    def _feeds_shown(self) -> tuple[str, ...]:
        screen = self.screen if self.screen_stack else None
        if isinstance(screen, AlertsScreen):
            return ("alerts",)
        if isinstance(screen, RolloutsScreen):
            return ("rollouts",)
        if isinstance(screen, (JobsScreen, QuotasScreen)):
            return ("jobs",)
        return ()

    def _tell_feeds_wanted(self) -> bool:
        """Tell the poller which feed the screen in front shows (fetched every poll; the others only when
        an agent's summary says they changed); True when that changed."""
        want = getattr(self.source, "want_feeds", None)
        if want is None:
            return False
        shown = frozenset(self._feeds_shown())
        if shown == getattr(self.source, "feeds_wanted", None):
            return False
        want(*shown)
        return True

    def _screen_feeds_changed(self) -> None:
        # A screen showing a feed opened: fetch it now rather than show what was fetched up to
        # FEED_REFRESH_S ago.
        if self._tell_feeds_wanted():
            self.request_poll()

    def _arm_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
        # The next poll starts one period after this one started (a little under refresh_s), so what
        # is on screen is never older than refresh_s. A phased poll lasts most of the period by design;
        # an unphased one that ran long still leaves a quarter interval before the next.
        # Not 0: Textual's timer divides by its interval when it runs late (ZeroDivisionError).
        period = self.refresh_s * (1.0 - (PERIOD_SLACK_SHARE if self.phased else UNPHASED_SLACK_SHARE))
        floor = 0.001 if self.phased else self.refresh_s * 0.25
        delay = max(floor, period - (time.monotonic() - self._poll_started))
        if self._poll_again:
            delay = 0.001
            self._burst()
        self._poll_again = False
        self._poll_timer = self.set_timer(delay, self.poll_fleet, name="fleet-poll")

    def request_poll(self) -> None:
        """Poll as soon as possible: now, or right after the poll in flight (never two at once)."""
        if self.polling:
            self._poll_again = True
        else:
            self.action_refresh_now()

    def action_refresh_now(self) -> None:
        """`r`: poll now, unless a poll is already running (polls never overlap)."""
        if self.polling:
            return
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._burst()
        self.poll_fleet()

    def _burst(self) -> None:
        # Asked for now (a key, a screen opened): every agent at once, not spread over the interval.
        burst = getattr(self.source, "burst_next", None)
        if burst is not None:
            burst()

    def _poll_progress(self, status: FleetStatus) -> None:
        # Called on the poller's thread (post_message is thread-safe): part of a phased poll arrived.
        self.post_message(FleetPolled(status, partial=True))

    @on(FleetPolled)
    def _fleet_polled(self, message: FleetPolled) -> None:
        self.fleet_status = message.status
        if message.partial:
            return
        previous, self._last_complete = self._last_complete, message.status
        if previous is not None:
            self._announce_changes(previous, message.status)

    def _announce_changes(self, before: FleetStatus, after: FleetStatus) -> None:
        # The table shows the state; a toast tells the operator who is looking elsewhere that it
        # changed (first poll excluded: nothing changed, we just started looking). Agents that changed
        # to the same state in one poll share one toast ("12 agents down: …"), not one each.
        changed: dict[AgentState, list[AgentStatus]] = {}
        previous = {a.name: a for a in before.agents}
        for agent in after.agents:
            old = previous.get(agent.name)
            if old is not None and old.state is not agent.state:
                changed.setdefault(agent.state, []).append(agent)
        for state, agents in changed.items():
            severity = "information" if state is AgentState.UP else "warning" if state is AgentState.STALE else "error"
            self.post_message(ConsoleError(f"state {state.value}", state_change_text(state, agents), severity=severity))

    def watch_fleet_status(self, status: FleetStatus | None) -> None:
        if status is None or not self.screen_stack:
            return  # nothing polled yet, or a poll landing while the app shuts down
        self._set_subtitle()
        screen = self.screen
        if isinstance(screen, ModalScreen):
            return  # skip redraw under a modal; the screen catches up on resume
        if isinstance(screen, ConsoleScreen) and screen.is_mounted:
            # Not mounted yet (a big fleet's first poll can land before the first screen is composed):
            # its on_mount shows the newest status.
            screen.show_fleet(status)

    def _set_subtitle(self) -> None:
        parts: list[str] = []
        status = self.fleet_status
        if status is None:
            parts.append(f"{len(self.source.specs)} agents")
        else:
            parts.append(f"{len(status.agents)} agents")
            parts.extend(f"{status.count(s)} {s.value}" for s in AgentState if status.count(s))
            firing = firing_count(status)
            if firing:
                parts.append(f"{firing} alert{'s' if firing != 1 else ''} firing")
            waiting = awaiting_count(status)
            if waiting:
                parts.append(f"{waiting} rollout{'s' if waiting != 1 else ''} awaiting approval")
        if self.readonly:
            parts.insert(0, "READ-ONLY")  # first: a narrow header cuts the end, never this
        self.sub_title = " · ".join(parts)

    # ------------------------------------------------------------------ navigation

    def open_host(self, agent: str) -> None:
        """Drill into one agent's host screen."""
        self.push_screen(HostScreen(agent))

    def open_endpoints(self) -> None:
        """Open the fleet's endpoints screen."""
        if not isinstance(self.screen, EndpointsScreen):
            self.push_screen(EndpointsScreen())

    def open_alerts(self) -> None:
        """Open the alerts of the whole fleet."""
        if not isinstance(self.screen, AlertsScreen):
            self.push_screen(AlertsScreen())
            self._screen_feeds_changed()

    def action_alerts(self) -> None:
        """`!`: the alerts of the whole fleet."""
        self.open_alerts()

    def open_rollouts(self) -> None:
        """Open the rollouts of the whole fleet."""
        if not isinstance(self.screen, RolloutsScreen):
            self.push_screen(RolloutsScreen())
            self._screen_feeds_changed()

    def action_rollouts(self) -> None:
        """`R`: the rollouts of the whole fleet."""
        self.open_rollouts()

    def open_jobs(self) -> None:
        """Open the jobs of the whole fleet."""
        if not isinstance(self.screen, JobsScreen):
            self.push_screen(JobsScreen())
            self._screen_feeds_changed()

    def action_jobs(self) -> None:
        """`j`: the jobs of the whole fleet."""
        self.open_jobs()

    def open_quotas(self) -> None:
        """Open the per-pipeline quotas of the whole fleet."""
        if not isinstance(self.screen, QuotasScreen):
            self.push_screen(QuotasScreen())
            self._screen_feeds_changed()

    def action_quotas(self) -> None:
        """`u`: the quotas of the whole fleet."""
        self.open_quotas()

    def open_pipelines(self) -> None:
        """Open the pipelines of the whole fleet with their last runs."""
        if not isinstance(self.screen, PipelinesScreen):
            self.push_screen(PipelinesScreen())

    def action_pipelines(self) -> None:
        """`P`: the pipelines of the whole fleet."""
        self.open_pipelines()

    # ------------------------------------------------------------------ actions on agents

    @work(group="fallback")
    async def set_fallback(self, agent: str, endpoint: str, enabled: bool, reason: str) -> None:
        """Switch an endpoint to (or back from) its fallback, in the background (App-owned, so
        leaving the screen does not cancel a request the agent may already have applied)."""
        if self.readonly:  # the key and the dialog refuse already; this is the last line
            self.post_message(ConsoleError("readonly", "read-only mode: fallback switch refused", severity="warning"))
            return
        try:
            info = await self.source.set_fallback(agent, endpoint, enabled, reason)
        except Exception as exc:
            self.post_message(FallbackToggled(agent, endpoint, enabled, error=why(exc)))
        else:
            self.post_message(FallbackToggled(agent, endpoint, enabled, info=info))

    @on(FallbackToggled)
    def _fallback_toggled(self, message: FallbackToggled) -> None:
        status = self.fleet_status.get(message.agent) if self.fleet_status else None
        host = status.label if status else message.agent
        what = "switched to fallback" if message.enabled else "switched back to the model"
        if message.error is not None:
            text = f"{message.endpoint} on {host}: not {what}: {message.error}"
            self.post_message(ConsoleError(f"fallback {message.agent}/{message.endpoint}", text))
        else:
            version = message.info.version if message.info else None
            text = f"{message.endpoint} on {host} {what}" + (f" (v{version})" if version is not None else "")
            # Not deduplicated like errors: every switch the operator makes deserves its answer.
            self.notify(text, severity="information", timeout=8)
        self.request_poll()

    def action_help(self) -> None:
        """`?`: show the key reference."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # ------------------------------------------------------------------ the error sink

    @on(ConsoleError)
    def report_error(self, message: ConsoleError) -> None:
        """Report a problem once (repeats within ERROR_REPEAT_S are dropped)."""
        now = time.monotonic()
        key = (message.source, message.message)
        last = self._reported.get(key)
        if last is not None and now - last < ERROR_REPEAT_S:
            return
        self._reported[key] = now
        self.log.error(f"{message.source}: {message.message}")
        severity = message.severity if message.severity in ("information", "warning", "error") else "error"
        self.notify(message.message, severity=severity, timeout=8)  # type: ignore[arg-type]
