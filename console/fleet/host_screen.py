"""The host screen: one agent's current values, recent history and top processes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Footer, Header, Label, Static

from agent.schemas import GpuSample, SeriesResponse, Snapshot
from console.core.errors import AgentError
from console.core.messages import ConsoleError, SeriesLoaded
from console.core.poller import AgentState, AgentStatus, FleetStatus
from console.core.rows import fmt_age, fmt_bytes, fmt_bytes_pair, fmt_percent
from console.core.screens.base import ConsoleScreen
from console.fleet.metric import MetricSpark
from console.fleet.process_table import GpuProcessTable, ProcessTable

HISTORY_WINDOW_S = 15 * 60.0
# Enough points to fill a wide terminal without asking the agent for every raw sample.
HISTORY_POINTS = 300
SERIES_METRICS = ("cpu_percent", "memory_percent", "gpu_utilization_percent", "gpu_memory_used_bytes")


def values_of(
    response: SeriesResponse | None, gpu: int | None = None, live: tuple[float, float | None] | None = None
) -> list[float]:
    """Values of the (GPU's) series in time order, missing samples dropped.

    `live` (ts, value) from the newest snapshot is appended when it is newer than the series: the
    agent writes samples to its store in batches, so the stored history lags the live value.
    """
    points: list[tuple[float, float]] = []
    if response is not None:
        for series in response.series:
            if gpu is None or series.labels.get("gpu") == str(gpu):
                points = [(p.ts, p.value) for p in sorted(series.points, key=lambda p: p.ts) if p.value is not None]
                break
    if live is not None and live[1] is not None and (not points or live[0] > points[-1][0]):
        points.append((live[0], live[1]))
    return [v for _, v in points]


def gpu_util_text(g: GpuSample) -> str:
    parts = [f"{fmt_percent(g.utilization_percent)}%"]
    if g.power_watts is not None:
        limit = f"/{g.power_limit_watts:.0f}" if g.power_limit_watts else ""
        parts.append(f"{g.power_watts:.0f}{limit} W")
    if g.temperature_c is not None:
        parts.append(f"{g.temperature_c:.0f}°C")
    return "  ".join(parts)


def stale_banner(a: AgentStatus, now: float) -> str:
    """'LAST KNOWN figures, 4m ago: down (connection refused)' for an agent that is not up; '' when it is."""
    if a.state is AgentState.UP:
        return ""
    why = f" ({a.reason})" if a.reason else ""
    if a.snapshot is None:
        return f"NO DATA: {a.state.value}{why}"
    seen = a.last_seen if a.last_seen is not None else a.snapshot.ts - a.clock_offset_s
    age = fmt_age(max(0.0, now - seen))
    if a.state is AgentState.STALE and a.sample_age_s is not None:
        age = fmt_age(a.sample_age_s)
    return f"LAST KNOWN figures, {age} old: {a.state.value}{why}"


class GpuPanel(Vertical):
    """Title line plus utilisation and memory history of one GPU."""

    DEFAULT_CSS = "GpuPanel { height: auto; }"

    def __init__(self, gpu: GpuSample) -> None:
        super().__init__(id=f"gpu-{gpu.index}")
        self.index = gpu.index
        self._title = self._title_of(gpu)
        self.util = MetricSpark("  util", classes="gpu-util")
        self.mem = MetricSpark("  memory", classes="gpu-mem")

    @staticmethod
    def _title_of(g: GpuSample) -> str:
        bits = [f"GPU {g.index}", g.name]
        if g.pci_bus_id:
            bits.append(g.pci_bus_id)
        if g.mig_enabled:
            bits.append(f"MIG ({len(g.mig_devices)} devices)")
        return "  ·  ".join(bits)

    def compose(self) -> ComposeResult:
        yield Label(self._title, classes="gpu--title", markup=False)
        yield self.util
        yield self.mem

    def show(self, g: GpuSample) -> None:
        self.util.set_value(gpu_util_text(g))
        self.mem.set_value(fmt_bytes_pair(g.memory_used_bytes, g.memory_total_bytes))

    def show_history(self, util: list[float], mem_used: list[float], mem_total: int | None) -> None:
        self.util.set_history(util)
        self.mem.set_history(mem_used, ceiling=float(mem_total or 0) or None)


class HostScreen(ConsoleScreen):
    """Details of one agent; Escape goes back to the fleet."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
    ]

    def __init__(self, agent: str) -> None:
        super().__init__()
        self.agent = agent
        self.status: AgentStatus | None = None
        self.series: dict[str, SeriesResponse] = {}
        self.series_errors: dict[str, str] = {}
        self._series_timer: Timer | None = None
        self._gpu_panels: list[GpuPanel] = []
        # The agent's whole sample (`/snapshot`), fetched beside the history while the poll brings a lean
        # one (the summary leaves out processes): the process tables come from it.
        self.detail: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="host-stale", markup=False)
        with VerticalScroll(id="host-body"):
            yield Static("", id="host-summary", markup=False)
            yield Label("History (last 15 min)", classes="section")
            yield MetricSpark("CPU", id="cpu")
            yield MetricSpark("Memory", id="mem")
            yield Vertical(id="gpu-panels")
            yield Static("", id="history-note", markup=False)
            with Horizontal(id="procs"):
                with Vertical():
                    yield Label("Top CPU", classes="section")
                    yield ProcessTable(id="top-cpu")
                with Vertical():
                    yield Label("Top RSS", classes="section")
                    yield ProcessTable(id="top-rss")
            yield Label("GPU processes", classes="section")
            yield GpuProcessTable(id="gpu-procs")
        yield Footer()

    def on_mount(self) -> None:
        if self.wk_app.fleet_status is not None:
            self.show_fleet(self.wk_app.fleet_status)
        self.load_series()

    def on_screen_resume(self) -> None:
        status = self.wk_app.fleet_status
        if status is not None:
            self.show_fleet(status)

    # ------------------------------------------------------------------ current values

    def show_fleet(self, status: FleetStatus) -> None:
        """Show this agent's part of a new poll."""
        agent = status.get(self.agent)
        if agent is None:
            return
        self.status = agent
        self.sub_title = agent.label
        self.query_one("#host-summary", Static).update(self._summary(agent, status.polled_at))
        self._mark_stale(agent, status.polled_at)
        snap = agent.snapshot
        if snap is None:
            return
        cpu = snap.cpu
        self.query_one("#cpu", MetricSpark).set_value(
            f"{cpu.percent:.1f}%  load {cpu.load1:.2f} {cpu.load5:.2f} {cpu.load15:.2f}"
        )
        mem = snap.memory
        swap = f"  swap {fmt_bytes(mem.swap_used_bytes)}" if mem.swap_total_bytes else ""
        self.query_one("#mem", MetricSpark).set_value(
            f"{mem.percent:.1f}%  {fmt_bytes_pair(mem.used_bytes, mem.total_bytes)}{swap}"
        )
        self._sync_gpu_panels(snap)
        self._show_processes()

    def lean(self) -> bool:
        """Whether the poll's sample of this agent leaves the processes out (its summary's is lean)."""
        a = self.status
        return bool(a and a.summary and a.summary.snapshot_lean and a.snapshot is a.summary.snapshot)

    def _show_processes(self) -> None:
        if not self.is_mounted or self.status is None:
            return
        # From the whole sample when the poll's is lean; none yet (just opened): empty until it comes.
        full = self.detail if self.lean() else self.status.snapshot
        self.query_one("#top-cpu", ProcessTable).show(full.top_cpu if full else [])
        self.query_one("#top-rss", ProcessTable).show(full.top_rss if full else [])
        self.query_one("#gpu-procs", GpuProcessTable).show(full.gpus if full else [])

    def _mark_stale(self, a: AgentStatus, now: float) -> None:
        """Old figures must look old: a banner with their age, and everything below it dimmed."""
        text = stale_banner(a, now)
        banner = self.query_one("#host-stale", Static)
        banner.update(text)
        banner.display = bool(text)
        self.query_one("#host-body").set_class(bool(text), "-stale")

    def _summary(self, a: AgentStatus, now: float) -> str:
        snap, host = a.snapshot, a.host
        state = a.state.value
        if a.state is not AgentState.UP and a.reason:
            state = f"{state}: {a.reason}"
            if a.next_retry_at is not None and a.next_retry_at - now >= 1:
                state += f" (retry in {a.next_retry_at - now:.0f}s)"
        first = [a.label, state, a.url]
        if snap is not None and snap.hostname != a.label:
            first.insert(1, snap.hostname)
        second: list[str] = []
        if host is not None:
            second.append(f"agent {host.agent_version}")
            second.append(host.platform)
            cpus = f"{host.cpu_logical} CPUs" + (f" ({host.cpu_physical} cores)" if host.cpu_physical else "")
            second.append(cpus)
            second.append(f"{fmt_bytes(host.memory_total_bytes)} RAM")
            if snap is not None:
                second.append(f"up {fmt_age(max(0.0, snap.ts - host.boot_time))}")
            second.append(f"sample every {host.sample_interval_s:g}s")
        third: list[str] = []
        if snap is not None:
            third.append(f"last sample {fmt_age(a.sample_age_s)} ago")
            gs = snap.gpu_status
            gpu_src = f"GPUs: {gs.source}"
            if gs.driver_version:
                gpu_src += f" (driver {gs.driver_version})"
            if gs.reason:
                gpu_src += f" - {gs.reason}"
            third.append(gpu_src)
            if snap.host_simulated:
                third.append("host data simulated")
        if a.latency_s is not None:
            third.append(f"latency {a.latency_s * 1000:.0f} ms")
        if a.clock_offset_s:
            third.append(f"clock offset {a.clock_offset_s:+.0f}s")
        return "\n".join("  ·  ".join(p) for p in (first, second, third) if p)

    def _sync_gpu_panels(self, snap: Snapshot) -> None:
        wanted = [g.index for g in snap.gpus]
        if [p.index for p in self._gpu_panels] != wanted:
            # The GPU set changes only when an agent restarts with other devices: rebuild then.
            container = self.query_one("#gpu-panels", Vertical)
            container.remove_children()
            self._gpu_panels = [GpuPanel(g) for g in snap.gpus]
            container.mount_all(self._gpu_panels)
        for panel, g in zip(self._gpu_panels, snap.gpus, strict=True):
            panel.show(g)
        self._show_history()

    # ------------------------------------------------------------------ history

    @work(exclusive=True, group="series")
    async def load_series(self) -> None:
        """Fetch the history charts' data in the background, then re-arm the next fetch."""
        source = self.wk_app.source
        end = source.now()
        start = end - HISTORY_WINDOW_S
        interval = self.status.sample_interval_s if self.status else 5.0
        step = max(interval, HISTORY_WINDOW_S / HISTORY_POINTS)
        cancelled = False
        # Before the first poll (status None) too: an agent with a summary is the rule.
        ask_detail = (self.status is None or self.lean()) and hasattr(source, "snapshot")
        try:
            asks = [source.series(self.agent, m, start, end, step) for m in SERIES_METRICS]
            if ask_detail:
                asks.append(source.snapshot(self.agent))
            results = await asyncio.gather(*asks, return_exceptions=True)
            if ask_detail:
                self._note_detail(results.pop())
            series: dict[str, SeriesResponse] = {}
            errors: dict[str, str] = {}
            for metric, result in zip(SERIES_METRICS, results, strict=True):
                if isinstance(result, SeriesResponse):
                    series[metric] = result
                elif isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    errors[metric] = str(result) if isinstance(result, AgentError) else repr(result)
            self.post_message(SeriesLoaded(self.agent, series, errors))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if not cancelled and self.is_attached:
                # Re-armed only now, so a slow agent never has two history fetches in flight.
                self._series_timer = self.set_timer(self.wk_app.refresh_s, self.load_series)

    def _note_detail(self, result: object) -> None:
        if isinstance(result, Snapshot):
            self.detail = result
            self._show_processes()
        elif isinstance(result, Exception):
            # The last whole sample stays (its processes may be a refresh old); say why it is not newer.
            why = str(result) if isinstance(result, AgentError) else repr(result)
            text = f"{self.agent}: processes unavailable ({why})"
            self.post_message(ConsoleError(f"processes {self.agent}", text, severity="warning"))
        elif isinstance(result, BaseException):
            raise result

    @on(SeriesLoaded)
    def _series_loaded(self, message: SeriesLoaded) -> None:
        if message.agent != self.agent:
            return
        self.series = message.series
        self.series_errors = message.errors
        if message.errors:
            first = next(iter(message.errors.items()))
            self.post_message(
                ConsoleError(
                    f"history {self.agent}",
                    f"{self.agent}: history unavailable ({first[1]})",
                    severity="warning",
                )
            )
        self._show_history()

    def _show_history(self) -> None:
        if not self.is_mounted:
            return
        snap = self.status.snapshot if self.status else None
        # Only a live agent's snapshot extends the history; a down agent's last one is old news.
        live = snap if self.status is not None and self.status.state is not AgentState.DOWN else None
        ts = live.ts if live else 0.0
        cpu = values_of(self.series.get("cpu_percent"), live=(ts, live.cpu.percent) if live else None)
        mem = values_of(self.series.get("memory_percent"), live=(ts, live.memory.percent) if live else None)
        self.query_one("#cpu", MetricSpark).set_history(cpu)
        self.query_one("#mem", MetricSpark).set_history(mem)
        gpus: Mapping[int, GpuSample] = {g.index: g for g in snap.gpus} if snap else {}
        for panel in self._gpu_panels:
            g = gpus.get(panel.index)
            panel.show_history(
                values_of(
                    self.series.get("gpu_utilization_percent"),
                    panel.index,
                    live=(ts, g.utilization_percent) if live and g else None,
                ),
                values_of(
                    self.series.get("gpu_memory_used_bytes"),
                    panel.index,
                    live=(ts, None if g is None or g.memory_used_bytes is None else float(g.memory_used_bytes))
                    if live
                    else None,
                ),
                g.memory_total_bytes if g else None,
            )
        note = ""
        if self.series_errors:
            note = "history unavailable: " + "; ".join(f"{m}: {e}" for m, e in self.series_errors.items())
        elif not self.series:
            note = "loading history…"
        elif not any(s.series and s.series[0].points for s in self.series.values()):
            note = "no stored history yet (the agent writes samples in batches)"
        box = self.query_one("#history-note", Static)
        box.update(note)
        box.display = bool(note)
