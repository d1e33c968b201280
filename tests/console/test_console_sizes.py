"""Every screen at a small SSH terminal (80x24) and a large one (200x50): what is wrong stays on screen.

Snapshots of each screen at both sizes, and assertions on the facts that must stay visible at 80x24
(a narrow terminal cuts numbers, never the reason; the drift screen keeps its feature table; the
rollout guards are not wrapped into pairs; a read-only console says so).
"""

from __future__ import annotations

import pytest

from console.app import WatchkeeperApp
from console.fleet.host_screen import HostScreen
from console.jobs.quotas_screen import QuotasScreen
from console.jobs.screen import JobsScreen
from console.jobs.table import JobTable, QuotaTable
from tests.console.jobs.fakes import jobs_source
from tests.console.test_console_monitoring_snapshots import alerts_ready, drift_ready
from tests.console.test_console_rollouts import rollouts_ready
from tests.console.test_console_snapshots import endpoints_ready, make_app
from tests.console.test_console_timeline import timeline_ready
from tests.console.wk_fakes import FakeSource, alerts_fleet, rollouts_fleet, serving_fleet
from tests.console.wk_pilot import fleet_ready, screen_text, wait_for

SMALL, LARGE = (80, 24), (200, 50)


async def host_ready(pilot) -> None:
    await fleet_ready(pilot)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, HostScreen) and bool(pilot.app.screen.series))


async def help_ready(pilot) -> None:
    await fleet_ready(pilot)
    await pilot.press("question_mark")
    await pilot.pause()


async def jobs_ready(pilot) -> None:
    await fleet_ready(pilot)
    await pilot.press("j")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, JobsScreen)
                   and pilot.app.screen.query_one(JobTable).row_count > 0
                   and "loss" in str(pilot.app.screen.query_one("#job-log").render()))  # fmt: skip


async def quotas_ready(pilot) -> None:
    await fleet_ready(pilot)
    await pilot.press("u")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, QuotasScreen)
                   and pilot.app.screen.query_one(QuotaTable).row_count > 0)  # fmt: skip


def _jobs() -> WatchkeeperApp:
    return WatchkeeperApp(jobs_source(), refresh_s=3600)


def _serving() -> WatchkeeperApp:
    return WatchkeeperApp(FakeSource(serving_fleet()), refresh_s=3600)


SCREENS = {
    "fleet": (make_app, fleet_ready),
    "host": (make_app, host_ready),
    "help": (make_app, help_ready),
    "endpoints": (_serving, endpoints_ready),
    "drift": (_serving, drift_ready),
    "alerts": (lambda: WatchkeeperApp(FakeSource(alerts_fleet()), refresh_s=3600), alerts_ready),
    "rollouts": (lambda: WatchkeeperApp(FakeSource(rollouts_fleet()), refresh_s=3600), rollouts_ready),
    "jobs": (_jobs, jobs_ready),
    "quotas": (_jobs, quotas_ready),
    "timeline": (_serving, timeline_ready),
}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x50"])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_at_size(snap_compare, screen: str, size: tuple[int, int]) -> None:
    make, ready = SCREENS[screen]
    assert snap_compare(make(), terminal_size=size, run_before=ready)


async def _text_at_80x24(screen: str) -> str:
    make, ready = SCREENS[screen]
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        return screen_text(app)


async def test_fleet_at_80x24_shows_why_before_the_numbers() -> None:
    lines = (await _text_at_80x24("fleet")).splitlines()
    assert "WHY" in lines[1] and lines[1].index("WHY") < lines[1].index("CPU%")
    assert any("gpu-05" in line and "401 bad token (retry in 30s)" in line for line in lines)
    assert any("cpu-04" in line and "last sample 45s old" in line for line in lines)


async def test_readonly_header_at_80x24_says_read_only_in_full() -> None:
    # A busy fleet (alerts firing, rollouts awaiting approval) makes the longest header.
    app = WatchkeeperApp(FakeSource(rollouts_fleet()), refresh_s=3600, readonly=True)
    async with app.run_test(size=SMALL) as pilot:
        await fleet_ready(pilot)
        await pilot.pause(0.1)
        assert "awaiting approval" in app.sub_title
        assert "READ-ONLY" in screen_text(app).splitlines()[0]


async def test_drift_at_80x24_keeps_the_feature_table() -> None:
    text = await _text_at_80x24("drift")
    for feature in ("distance", "carrier", "dep_hour", "temp"):
        assert any(line.lstrip().startswith(feature) and ("psi" in line or "jensen" in line)
                   for line in text.splitlines()), feature  # fmt: skip


async def test_rollouts_at_80x24_guard_rows_are_not_wrapped_into_pairs() -> None:
    make, ready = SCREENS["rollouts"]
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        live = app.screen.query_one("#rollout-live")
        assert live.region.width >= 70  # full width under the detail, not a third of the screen
        text = str(live.render())
        guard_lines = [line for line in text.splitlines() if line.startswith(("error_rate", "p99_vs_stable"))]
        # Each guard on one line: name, stable, candidate, limit and its verdict together.
        assert len(guard_lines) == 2, text
        assert all(any(v in line for v in (" ok", "BREACHED", "n/a")) for line in guard_lines), text


async def test_endpoints_at_80x24_detail_is_not_squeezed_beside_the_pool() -> None:
    make, ready = SCREENS["endpoints"]
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        assert app.screen.query_one("#endpoint-detail").region.width >= 70


async def test_jobs_at_80x24_state_and_reason_stay_and_the_log_tail_is_below() -> None:
    text = await _text_at_80x24("jobs")
    lines = text.splitlines()
    assert lines[1].index("STATE") < lines[1].index("REASON") < 80
    assert any("j-0003" in line and "FAILED" in line and "exit code 3" in line for line in lines)
    assert any("j-0004" in line and "OUT_OF_MEMORY" in line for line in lines)
    assert any("j-0005" in line and "cancelled by bob" in line for line in lines)
    # The down agent's job is still listed, marked as last known, not as current.
    assert any("cpu-02" in line and "RUNNING?" in line and "host not answering" in line for line in lines)
    # The log pane is under the table, full width, and shows the end of the log (as `tail` does).
    app_lines = [line for line in lines if "loss" in line]
    assert app_lines and "epoch 1 step 39" in app_lines[-1]


async def test_quotas_at_80x24_near_limit_first_and_unlimited_said() -> None:
    lines = (await _text_at_80x24("quotas")).splitlines()
    rows = [line for line in lines if line.startswith((" gpu-01", " cpu-02"))]
    assert "training" in rows[0] and "95%" in rows[0]  # near its CPU limit: first
    assert "batch" in rows[1] and "unlimited" in rows[1] and "0%" not in rows[1].split("unlimited")[-1]
    assert "etl" in rows[2] and rows[2].count("unlimited") == 4 and "%" not in rows[2]


async def test_timeline_at_80x24_keeps_the_chart_the_markers_and_the_items() -> None:
    text = await _text_at_80x24("timeline")
    lines = text.splitlines()
    for label in ("req/s", "p99 ms", "errors", "drift", "cpu %", "gpu %", "events"):
        assert any(line.lstrip().startswith(label) for line in lines), label
    assert any("item(s)" in line for line in lines)  # the cursor's moment, below the chart
    assert max(len(line) for line in lines) <= 80


async def test_pipelines_at_80x24_keep_the_run_state_its_steps_and_the_metrics(agent_factory) -> None:
    # A real agent (the pipelines screen asks it on the poller's thread): two runs, the second with
    # another lr, so one step is a cache hit and the metric moved.
    from console.pipelines.table import PipelineTable
    from tests.console.pipelines.agents import TRAIN, register, start, wait_run
    from tests.console.pipelines.test_pipelines_screen import app_on, key_of, open_pipelines, pane
    from tests.console.wk_pilot import select, until

    agent = agent_factory(name="pipes-80")
    register(agent, TRAIN)
    first = start(agent, "train-demo", params={"lr": 0.1})
    wait_run(agent, first["id"])
    second = start(agent, "train-demo", params={"lr": 0.3})
    wait_run(agent, second["id"])
    app = app_on(agent)
    async with app.run_test(size=SMALL) as pilot:
        table: PipelineTable = await open_pipelines(app, pilot, key_of(agent, "train-demo"))
        await select(pilot, table, key_of(agent, "train-demo"))
        await until(pilot, lambda: "train.auc" in pane(app, "#pipe-metrics") and "└" in pane(app, "#pipe-run"), 30)
        await pilot.pause(0.2)
        lines = screen_text(app).splitlines()
    row = next(line for line in lines if "train-demo" in line and second["id"] in line)
    assert "COMPLETED" in row and "2/2 (1 cached)" in row  # state and progress not cut at 80 columns
    assert any("✓ prep" in line and f"cache hit (from {first['id']})" in line for line in lines)
    assert any("└ ✓ train" in line and "completed" in line for line in lines)
    assert any(line.split()[:4] == ["train.auc", "0.8", "0.6", "+0.2"] for line in lines)
    assert any("train: in-process" in line for line in lines)  # the log pane's title
    assert "^g Run" in lines[-1] and "^k Cancel run" in lines[-1]
