"""The jobs (`j`) and quotas (`u`) screens driven by Textual's Pilot against real agents running real jobs."""

from __future__ import annotations

from textual.widgets import Input

from console.app import WatchkeeperApp
from console.core.config import AgentSpec
from console.core.screens.confirm import ConfirmScreen
from console.fleet.fleet_screen import FleetScreen
from console.fleet.fleet_table import FleetTable
from console.jobs.client import JobsPoller
from console.jobs.quotas_screen import QuotasScreen
from console.jobs.screen import JobConfirm, JobsScreen
from console.jobs.table import JobTable, QuotaTable
from tests.console.jobs.agents import submit, wait_job
from tests.console.wk_pilot import screen_text, select, until

WAIT = 30.0  # generous: the machine is shared


def app_on(*agents, readonly: bool = False) -> WatchkeeperApp:
    specs = [AgentSpec(a.name, a.url, token=a.token) for a in agents]
    return WatchkeeperApp(JobsPoller(specs), refresh_s=0.5, readonly=readonly)


def row_text(table, key: str) -> str:
    return " ".join(str(c) for c in table.get_row(key))


def key_of(agent, job_id: str) -> str:
    return f"{agent.name}\t{job_id}"


async def open_jobs(app, pilot, *keys: str) -> JobTable:
    await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.fleet_status is not None, WAIT)
    await pilot.press("j")
    await until(pilot, lambda: isinstance(app.screen, JobsScreen), WAIT)
    table = app.screen.query_one(JobTable)
    await until(pilot, lambda: all(k in table.row_keys for k in keys), WAIT)
    return table


async def test_running_and_failed_jobs_show_and_cancel_behind_confirmation_says_by_whom(jobs_agent) -> None:
    running = submit(jobs_agent, pipeline="training", command=["sh", "-c", "echo started; exec sleep 60"], cpu=0.5)
    failed = submit(jobs_agent, pipeline="batch", command=["sh", "-c", "echo bad >&2; exit 3"])
    wait_job(jobs_agent, running["id"], {"RUNNING"})
    wait_job(jobs_agent, failed["id"])
    app = app_on(jobs_agent)
    async with app.run_test(size=(200, 50)) as pilot:
        table = await open_jobs(app, pilot, key_of(jobs_agent, running["id"]), key_of(jobs_agent, failed["id"]))
        run_key, fail_key = key_of(jobs_agent, running["id"]), key_of(jobs_agent, failed["id"])
        await until(pilot, lambda: "RUNNING" in row_text(table, run_key), WAIT)
        assert "training" in row_text(table, run_key) and "/0.5" in row_text(table, run_key)  # cpu against request
        assert "FAILED" in row_text(table, fail_key) and "exit code 3" in row_text(table, fail_key)
        assert table.row_keys.index(run_key) < table.row_keys.index(fail_key)  # running first

        # The selected job's log tail beside the table.
        await select(pilot, table, run_key)
        log = app.screen.query_one("#job-log")
        await until(pilot, lambda: "started" in str(log.render()), WAIT)
        await select(pilot, table, fail_key)
        await pilot.press("o")  # its stderr
        await until(pilot, lambda: "bad" in str(log.render()), WAIT)

        # Cancel: a confirmation first; "n" leaves the job alone.
        await select(pilot, table, run_key)
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, JobConfirm))
        assert running["id"] in app.screen.heading and jobs_agent.name in app.screen.heading
        app.screen.query_one("#reason", Input).focus()
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        assert wait_job(jobs_agent, running["id"], {"RUNNING"})["state"] == "RUNNING"

        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, JobConfirm))
        await pilot.press(*"wrong data")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        done = wait_job(jobs_agent, running["id"])
        assert done["state"] == "CANCELLED" and done["cancelled_by"] == "admin"
        await until(pilot, lambda: "CANCELLED" in row_text(table, run_key), WAIT)
        assert "by admin" in row_text(table, run_key)


async def test_readonly_hides_and_refuses_cancel_and_requeue(jobs_agent) -> None:
    job = submit(jobs_agent, pipeline="batch", command=["sleep", "60"])
    wait_job(jobs_agent, job["id"], {"RUNNING"})
    app = app_on(jobs_agent, readonly=True)
    async with app.run_test(size=(200, 50)) as pilot:
        table = await open_jobs(app, pilot, key_of(jobs_agent, job["id"]))
        await select(pilot, table, key_of(jobs_agent, job["id"]))
        footer = screen_text(app).splitlines()[-1]
        assert "Cancel job" not in footer and "Requeue" not in footer and "Filter" in footer
        await pilot.press("ctrl+k")
        await pilot.press("Q")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.screen.check_action("cancel_job", ()) is False
        assert app.screen.check_action("requeue_job", ()) is False
    assert wait_job(jobs_agent, job["id"], {"RUNNING"})["state"] == "RUNNING"


async def test_requeue_of_an_ended_job_after_confirmation(jobs_agent) -> None:
    job = submit(jobs_agent, pipeline="batch", command=["sh", "-c", "exit 7"])
    wait_job(jobs_agent, job["id"])
    app = app_on(jobs_agent)
    async with app.run_test(size=(80, 24)) as pilot:
        key = key_of(jobs_agent, job["id"])
        table = await open_jobs(app, pilot, key)
        await until(pilot, lambda: "exit code 7" in row_text(table, key), WAIT)
        await select(pilot, table, key)
        await pilot.press("Q")
        await until(pilot, lambda: isinstance(app.screen, JobConfirm))
        app.screen.query_one("#yes").focus()
        await pilot.press("y")
        await until(pilot, lambda: "#2" in row_text(table, key), WAIT)  # the second attempt, same id


async def test_quotas_screen_bars_near_limit_first_and_unlimited(jobs_agent) -> None:
    # training: 1 core, 1 GiB, 2 jobs; fill its CPU to 95 %.
    hog = submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.95, mem="256M")
    other = submit(jobs_agent, pipeline="batch", command=["sleep", "60"], cpu=0.5, mem="128M")
    wait_job(jobs_agent, hog["id"], {"RUNNING"})
    wait_job(jobs_agent, other["id"], {"RUNNING"})
    app = app_on(jobs_agent)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.fleet_status is not None, WAIT)
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, QuotasScreen), WAIT)
        table = app.screen.query_one(QuotaTable)
        training, batch = key_of(jobs_agent, "training"), key_of(jobs_agent, "batch")
        await until(pilot, lambda: {training, batch} <= set(table.row_keys), WAIT)
        await until(pilot, lambda: "95%" in row_text(table, training), WAIT)
        assert table.row_keys.index(training) < table.row_keys.index(batch)  # near its limit: first
        assert "█" in row_text(table, training) and "25%" in row_text(table, training)  # 256 MiB of 1 GiB
        assert "unlimited" in row_text(table, batch) and "%" not in row_text(table, batch)
        text = screen_text(app)
        assert "NEAR LIMIT" in text or "near a limit" in text


async def test_fleet_table_counts_running_and_pending_jobs(jobs_agent, agent_factory) -> None:
    bare = agent_factory(name="no-jobs", config="[jobs]\nenabled = false\n")
    submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.5, mem="256M")
    submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.5, mem="256M")
    submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.5, mem="256M")  # over the 1-core quota
    app = app_on(jobs_agent, bare)
    async with app.run_test(size=(200, 50)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.fleet_status is not None, WAIT)
        table = app.screen.query_one(FleetTable)
        await until(pilot, lambda: "2/1" in row_text(table, jobs_agent.name), WAIT)
        # An agent without jobs says so with a dash, never 0/0.
        assert "0/0" not in row_text(table, bare.name)


async def test_an_unreachable_agents_jobs_stay_listed_as_stale(jobs_agent) -> None:
    job = submit(jobs_agent, pipeline="batch", command=["sleep", "60"])
    wait_job(jobs_agent, job["id"], {"RUNNING"})
    app = app_on(jobs_agent)
    async with app.run_test(size=(200, 50)) as pilot:
        key = key_of(jobs_agent, job["id"])
        table = await open_jobs(app, pilot, key)
        await until(pilot, lambda: "RUNNING" in row_text(table, key), WAIT)
        jobs_agent.stop()  # the job outlives its agent; the console no longer hears of it
        await until(pilot, lambda: "RUNNING?" in row_text(table, key), WAIT)
        assert "host not answering" in row_text(table, key)
        assert "stale" in str(app.screen.query_one("#jobs-status").render())


async def test_a_pending_job_says_why_it_waits_and_sorting_by_elapsed(jobs_agent) -> None:
    first = submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.75, mem="256M")
    wait_job(jobs_agent, first["id"], {"RUNNING"})
    waiting = submit(jobs_agent, pipeline="training", command=["sleep", "60"], cpu=0.75, mem="256M")
    app = app_on(jobs_agent)
    async with app.run_test(size=(200, 50)) as pilot:
        run_key, wait_key = key_of(jobs_agent, first["id"]), key_of(jobs_agent, waiting["id"])
        table = await open_jobs(app, pilot, run_key, wait_key)
        await until(pilot, lambda: "QuotaCpu" in row_text(table, wait_key), WAIT)
        assert "0.75" in row_text(table, wait_key)  # the request as asked, not rounded
        await select(pilot, table, wait_key)
        log = app.screen.query_one("#job-log")
        await until(pilot, lambda: "not started yet: QuotaCpu" in str(log.render()), WAIT)
        assert "CPU quota is in use" in str(app.screen.query_one("#job-detail").render())
        # `s` cycles the sort through the columns as shown; ELAPSED puts the shorter (the waiting one) first.
        while table.sort_column != "elapsed":
            await pilot.press("s")
        await until(pilot, lambda: table.row_keys.index(wait_key) < table.row_keys.index(run_key), WAIT)
        assert "sort ELAPSED/LIMIT↑" in str(app.screen.query_one("#jobs-status").render())
