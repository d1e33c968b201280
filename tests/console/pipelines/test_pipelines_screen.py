"""The pipelines screen (`P`) driven by Textual's Pilot against a real agent running real pipelines."""

from __future__ import annotations

from console.app import WatchkeeperApp
from console.core.config import AgentSpec
from console.core.screens.confirm import ConfirmScreen
from console.fleet.fleet_screen import FleetScreen
from console.pipelines.client import PipelinesPoller
from console.pipelines.screen import PipelineConfirm, PipelinesScreen
from console.pipelines.table import PipelineTable
from tests.console.pipelines.agents import SLOW, TRAIN, WAIT, register, start, wait_run, wait_step
from tests.console.wk_pilot import screen_text, select, until


def app_on(*agents, readonly: bool = False) -> WatchkeeperApp:
    specs = [AgentSpec(a.name, a.url, token=a.token) for a in agents]
    return WatchkeeperApp(PipelinesPoller(specs), refresh_s=0.5, readonly=readonly)


def key_of(agent, pipeline: str) -> str:
    return f"{agent.name}\t{pipeline}"


def row_text(table, key: str) -> str:
    return " ".join(str(c) for c in table.get_row(key))


def pane(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def open_pipelines(app, pilot, *keys: str) -> PipelineTable:
    await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.fleet_status is not None, WAIT)
    await pilot.press("P")
    await until(pilot, lambda: isinstance(app.screen, PipelinesScreen), WAIT)
    table = app.screen.query_one(PipelineTable)
    await until(pilot, lambda: all(k in table.row_keys for k in keys), WAIT)
    return table


def runs_of(agent, name: str) -> list[dict]:
    with agent.client() as c:
        return c.get("/api/v1/pipelines/runs", params={"pipeline": name}).json()["runs"]


async def test_tree_shows_states_cache_hits_and_metrics_beside_the_previous_run(agent_factory) -> None:
    agent = agent_factory(name="pipes-s")
    register(agent, TRAIN)
    first = start(agent, "train-demo", params={"lr": 0.2})
    wait_run(agent, first["id"])
    second = start(agent, "train-demo", params={"lr": 0.2})
    wait_run(agent, second["id"])
    app = app_on(agent)
    async with app.run_test(size=(200, 50)) as pilot:
        key = key_of(agent, "train-demo")
        table = await open_pipelines(app, pilot, key)
        assert second["id"] in row_text(table, key) and "COMPLETED" in row_text(table, key)
        assert "2/2 (2 cached)" in row_text(table, key)
        await select(pilot, table, key)
        await until(pilot, lambda: "train" in pane(app, "#pipe-run") and "cache hit" in pane(app, "#pipe-run"), WAIT)
        tree = pane(app, "#pipe-run").splitlines()
        prep = next(ln for ln in tree if "✓ prep" in ln)
        train = next(ln for ln in tree if "✓ train" in ln)
        assert "completed" in prep and f"cache hit (from {first['id']})" in prep
        assert train.lstrip().startswith("└") and "cache hit" in train
        metrics = pane(app, "#pipe-metrics")
        assert first["id"] in metrics  # the previous run's column
        auc = next(ln for ln in metrics.splitlines() if ln.startswith("train.auc"))
        assert auc.split()[1:3] == ["0.7", "0.7"]
        # The log pane: the last step, in-process (nothing printed by train).
        assert "train: in-process" in pane(app, "#pipe-log-title")

        # Ctrl+g runs the pipeline after a confirmation naming it; Escape first leaves it alone.
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, PipelineConfirm))
        assert "train-demo" in app.screen.heading and agent.name in app.screen.heading
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, PipelinesScreen))
        assert len(runs_of(agent, "train-demo")) == 2
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, PipelineConfirm))
        await pilot.press("enter")
        await until(pilot, lambda: len(runs_of(agent, "train-demo")) == 3, WAIT)
        third = runs_of(agent, "train-demo")[0]
        await until(pilot, lambda: third["id"] in row_text(table, key), WAIT)


async def test_running_job_step_its_log_and_cancel_behind_confirmation(agent_factory) -> None:
    agent = agent_factory(name="pipes-t")
    register(agent, SLOW)
    run = start(agent, "slow")
    wait_step(agent, run["id"], "wait", "RUNNING")
    app = app_on(agent)
    async with app.run_test(size=(80, 24)) as pilot:
        key = key_of(agent, "slow")
        table = await open_pipelines(app, pilot, key)
        await until(pilot, lambda: "RUNNING" in row_text(table, key), WAIT)
        await select(pilot, table, key)
        await until(pilot, lambda: "▶ wait" in pane(app, "#pipe-run"), WAIT)
        line = next(ln for ln in pane(app, "#pipe-run").splitlines() if "▶ wait" in ln)
        assert "running" in line and "job " in line  # a job step, its time so far
        await until(pilot, lambda: "waiting" in pane(app, "#pipe-log"), WAIT)  # its job's log
        text = screen_text(app)
        assert "slow" in text and "RUNNING" in text and "▶ wait" in text  # all there at 80x24

        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, PipelineConfirm))
        assert run["id"] in app.screen.heading
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, PipelinesScreen))
        assert wait_run(agent, run["id"], ("RUNNING",))["state"] == "RUNNING"
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, PipelineConfirm))
        await pilot.press("enter")
        assert wait_run(agent, run["id"])["state"] == "CANCELLED"
        await until(pilot, lambda: "CANCELLED" in row_text(table, key), WAIT)


async def test_readonly_hides_and_refuses_run_and_cancel(agent_factory) -> None:
    agent = agent_factory(name="pipes-r")
    register(agent, SLOW)
    run = start(agent, "slow")
    wait_step(agent, run["id"], "wait", "RUNNING")
    app = app_on(agent, readonly=True)
    async with app.run_test(size=(200, 50)) as pilot:
        key = key_of(agent, "slow")
        table = await open_pipelines(app, pilot, key)
        await select(pilot, table, key)
        footer = screen_text(app).splitlines()[-1]
        assert "Cancel run" not in footer and "Run" not in footer.replace("Runn", "") and "Filter" in footer
        await pilot.press("ctrl+g")
        await pilot.press("ctrl+k")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.screen.check_action("run_pipeline", ()) is False
        assert app.screen.check_action("cancel_run", ()) is False
    assert wait_run(agent, run["id"], ("RUNNING",))["state"] == "RUNNING"
    assert len(runs_of(agent, "slow")) == 1
    with agent.client() as c:
        c.post(f"/api/v1/pipelines/runs/{run['id']}/cancel", json={"reason": "test over"})
