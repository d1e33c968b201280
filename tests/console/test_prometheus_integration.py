"""`--prometheus`: a real Prometheus (Debian's package, started here) scraping real agents.

Skips only when the `prometheus` binary is absent (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from console.core.config import AgentSpec
from console.core.poller import AgentState, FleetStatus, ServingState
from console.prometheus.source import PrometheusSource
from tests.promproc import PromProc, prometheus_available

pytestmark = pytest.mark.skipif(
    not prometheus_available(), reason="the prometheus binary is not installed (apt-get install prometheus)"
)
REPO = Path(__file__).resolve().parents[2]
# A loaded 2-core box: Prometheus start-up, first scrapes and the down transition get generous time.
DEADLINE_S = 40.0


async def poll_until(source: PrometheusSource, ok: Callable[[FleetStatus], bool], what: str) -> FleetStatus:
    deadline = time.monotonic() + DEADLINE_S
    status = await source.poll()
    while not ok(status):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {DEADLINE_S}s; last poll: {status.agents}")
        await asyncio.sleep(0.5)
        status = await source.poll()
    return status


@pytest.fixture
def prometheus(tmp_path: Path):
    started: list[PromProc] = []

    def factory(targets: list[str]) -> PromProc:
        p = PromProc(tmp_path / "prometheus", targets)
        started.append(p)
        return p.start()

    yield factory
    for p in started:
        p.stop()


async def test_fleet_table_from_prometheus_then_a_killed_agent_shows_down(agent_factory, prometheus) -> None:
    a = agent_factory(name="prom-a", simulate_gpus=2)
    b = agent_factory(name="prom-b", simulate_host=True)
    prom = prometheus([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    # a is named by the fleet file (with its token); b is found among Prometheus's targets.
    specs = [AgentSpec("alpha", a.url, token=a.token)]
    async with PrometheusSource(prom.url, specs) as source:

        def both_up(s: FleetStatus) -> bool:
            return len(s.agents) == 2 and all(x.state is AgentState.UP for x in s.agents)

        status = await poll_until(source, both_up, "both agents up")
        alpha = status.get("alpha")
        beta = status.get(f"127.0.0.1:{b.port}")
        assert alpha is not None and beta is not None, status.agents
        assert beta.label == "prom-b"  # the agent's own name, from watchkeeper_agent_info
        assert alpha.snapshot is not None and len(alpha.snapshot.gpus) == 2
        assert alpha.snapshot.gpu_status.simulated and not alpha.snapshot.host_simulated
        g = alpha.snapshot.gpus[0]
        assert g.memory_total_bytes and g.memory_used_bytes is not None and g.utilization_percent is not None
        assert 0 < alpha.snapshot.memory.percent < 100
        assert beta.snapshot is not None and beta.snapshot.host_simulated and beta.snapshot.gpus == []
        assert [s.name for s in source.specs] == ["alpha", beta.name]
        # Prometheus counts no alerts firing or pending: the alert list is known empty without asking.
        assert alpha.alerts is not None and alpha.alerts.state == "ok" and alpha.alerts.alerts == ()

        # The host screen's history comes from query_range.
        now = source.now()
        gpu = await poll_series(source, "alpha", "gpu_utilization_percent", now)
        assert sorted(s.labels["gpu"] for s in gpu.series) == ["0", "1"]
        cpu = await source.series(beta.name, "cpu_percent", now - 60, source.now(), 1.0)
        assert any(p.value is not None for p in cpu.series[0].points)

        # The endpoints view open: what each agent serves comes from the agent, with the fleet file's
        # token (beta, found in Prometheus only, has none: its error says so).
        assert status.get("alpha").serving_state is ServingState.UNKNOWN
        source.want_serving(True)
        status = await source.poll()
        assert status.get("alpha").serving_state is ServingState.OK and status.get("alpha").serving is not None
        assert status.get(beta.name).serving_state is ServingState.ERROR
        assert status.get(beta.name).serving_error == "401 no token"
        source.want_serving(False)

        # Drill-down reaches the agent itself, with the fleet file's token.
        snap = await source.client("alpha").snapshot()
        assert snap.agent_name == "prom-a"

        a.kill()
        status = await poll_until(
            source, lambda s: s.get("alpha") is not None and s.get("alpha").state is AgentState.DOWN, "alpha down"
        )
        alpha = status.get("alpha")
        assert alpha.reason and alpha.reason.startswith("scrape failed"), alpha.reason
        assert alpha.snapshot is not None  # last known figures kept
        assert status.get(beta.name).state is AgentState.UP


async def poll_series(source: PrometheusSource, name: str, metric: str, now: float):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = await source.series(name, metric, now - 60, source.now(), 1.0)
        if len(r.series) >= 2 or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.5)


async def test_status_command_reads_prometheus(agent_factory, prometheus) -> None:
    a = agent_factory(name="prom-s")
    prom = prometheus([f"127.0.0.1:{a.port}", "127.0.0.1:1"])  # the second target never answers
    async with PrometheusSource(prom.url) as source:
        await poll_until(  # the dead target scraped at least once: "not scraped yet" until then
            source,
            lambda s: (
                any(x.state is AgentState.UP for x in s.agents)
                and any("refused" in (x.reason or "") for x in s.agents)
                and len(s.agents) == 2
            ),
            "one up, one down",
        )
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHKEEPER_FLEET", "WATCHKEEPER_TOKEN")}
    out = subprocess.run(
        [sys.executable, "-m", "console.cli", "status", "--prometheus", prom.url, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr  # one target is down
    doc = json.loads(out.stdout)
    by_name = {r["name"]: r for r in doc["agents"]}
    assert by_name[f"127.0.0.1:{a.port}"]["state"] == "up"
    assert by_name["127.0.0.1:1"]["state"] == "down"
    assert "refused" in by_name["127.0.0.1:1"]["reason"]
    assert doc["prometheus"] == prom.url
    text = subprocess.run(
        [sys.executable, "-m", "console.cli", "--prometheus", prom.url, "status"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    lines = text.stdout.splitlines()
    assert text.returncode == 1 and lines[0].split()[:2] == ["HOST", "STATE"], text.stdout + text.stderr
    assert any(line.startswith("prom-s ") and " up " in line for line in lines), text.stdout


async def test_tui_on_prometheus_drills_into_the_agent(agent_factory, prometheus) -> None:
    from console.app import WatchkeeperApp
    from console.fleet.host_screen import HostScreen
    from console.rollouts.client import RolloutsPoller

    a = agent_factory(name="prom-tui", simulate_gpus=1)
    prom = prometheus([f"127.0.0.1:{a.port}"])
    name = f"127.0.0.1:{a.port}"
    source = PrometheusSource(prom.url, agents=RolloutsPoller, token=a.token)
    app = WatchkeeperApp(source, refresh_s=0.5)
    # One set of PromQL queries per poll: not phased per agent like the agent poller it drills into.
    assert not app.phased
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + DEADLINE_S
        while not (app.fleet_status and app.fleet_status.all_up and app.fleet_status.agents):
            assert time.monotonic() < deadline, app.fleet_status
            await pilot.pause(0.1)
        app.open_host(name)
        while not (isinstance(app.screen, HostScreen) and app.screen.series.get("cpu_percent")):
            assert time.monotonic() < deadline, getattr(app.screen, "series_errors", None)
            await pilot.pause(0.1)
        host = app.screen
        assert isinstance(host, HostScreen) and "cpu_percent" not in host.series_errors
        await pilot.pause(0.3)
        assert len(host.query("GpuPanel")) == 1
        # While the host screen shows it, the row's figures come from the agent itself (per-core, disks).
        while not (app.fleet_status.get(name).snapshot.cpu.per_core and app.fleet_status.get(name).snapshot.disks):
            assert time.monotonic() < deadline, app.fleet_status.get(name).snapshot
            await pilot.pause(0.1)
        assert app.fleet_status.get(name).state is AgentState.UP
        assert len(host.query_one("#cpu").history) >= 1  # type: ignore[attr-defined]
        # Drill-down reaches the agent itself: its host info, through the agent poller.
        info = await source.client(name).host_info()
        assert info.agent_name == "prom-tui"


ALERTING = """
flush_interval = 0.2

[alerting]
interval = 0.5

[[alerting.rules]]
name = "errors"
kind = "error_rate"
threshold = 0.5
for = 0
severity = "critical"
"""


async def test_a_firing_alert_counted_by_prometheus_is_fetched_from_its_agent(agent_factory, prometheus) -> None:
    from console.rollouts.client import RolloutsPoller
    from tests.serving.test_serving_agent import endpoint, records, reference, register, wait_loaded

    a = agent_factory(name="prom-alerts", config=ALERTING)
    quiet = agent_factory(name="prom-quiet")
    with a.client() as c:
        register(c)
        endpoint(c, fallback=None, faults={"error_rate": 1.0}, breaker={"enabled": False})
        wait_loaded(c)
        rec = records(reference(1))
        codes = {c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).status_code for _ in range(15)}
        assert codes == {502}
    prom = prometheus([f"127.0.0.1:{a.port}", f"127.0.0.1:{quiet.port}"])
    specs = [AgentSpec("alerting", a.url, token=a.token), AgentSpec("quiet", quiet.url, token=quiet.token)]
    async with PrometheusSource(prom.url, specs, agents=RolloutsPoller) as source:

        def firing(s: FleetStatus) -> bool:
            feed = s.get("alerting").alerts if s.get("alerting") else None
            quiet = s.get("quiet")
            return (
                feed is not None
                and any(x.state == "firing" for x in feed.alerts)
                and quiet is not None
                and quiet.state is AgentState.UP  # scraped at least once (targets are scraped apart)
            )

        status = await poll_until(source, firing, "the firing alert, the quiet agent up")
        [alert] = [x for x in status.get("alerting").alerts.alerts if x.state == "firing"]
        assert alert.rule == "errors"
        quiet_feed = status.get("quiet").alerts
        assert quiet_feed is not None and quiet_feed.alerts == () and quiet_feed.state == "ok"
