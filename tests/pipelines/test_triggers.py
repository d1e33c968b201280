"""Triggers start one run per episode: a repeated event, an event while a run is active, or one inside
the min interval starts nothing; cron fires on its schedule (croniter), an alert on firing."""

from __future__ import annotations

import time

from agent.pipelines.triggers import TriggerLoop
from agent.schemas.alerts import AlertOut
from tests.pipelines.conftest import Harness

SLOW = """
name = "ct"
{extra}
[steps.work]
command = ["/bin/sh", "-c", "sleep {{params.s}}; echo x > $WK_OUTPUT_O"]
params = ["s"]
outputs = ["o"]
cache = false
[params]
s = 1
"""


def test_duplicate_events_and_events_during_a_run_start_one_run(harness: Harness) -> None:
    harness.register(SLOW.format(extra=""))
    a = harness.svc.trigger("ct", "alert", "ev-1", "alert x firing")
    assert a.started and a.run_id
    again = harness.svc.trigger("ct", "alert", "ev-1", "alert x firing")
    assert not again.started and again.run_id == a.run_id and "already started" in again.reason
    other = harness.svc.trigger("ct", "dataset", "ev-2", "dataset d v2")
    assert not other.started and other.run_id == a.run_id and "is active" in other.reason
    done = harness.wait(a.run_id or "")
    assert done.state == "COMPLETED" and done.trigger == "alert" and done.trigger_detail == "alert x firing"
    assert not harness.svc.trigger("ct", "alert", "ev-2", "late duplicate").started  # folded into that run
    assert harness.svc.list_runs("ct", None, 10).total == 1


def test_min_interval_between_triggered_runs(harness: Harness) -> None:
    harness.register(SLOW.format(extra='min_interval = "1h"').replace("s = 1", "s = 0"))
    first = harness.svc.trigger("ct", "cron", "c-1", "cron")
    harness.wait(first.run_id or "")
    second = harness.svc.trigger("ct", "cron", "c-2", "cron")
    assert not second.started and "min interval 3600 s" in second.reason
    assert harness.run("ct").state == "COMPLETED"  # by hand is not held back
    assert harness.svc.list_runs("ct", None, 10).total == 2


class _Alerts:
    """The alert engine's read side as the trigger loop uses it: `list(state=...)`."""

    def __init__(self) -> None:
        self.alerts: list[AlertOut] = []

    def list(self, state: str | None = None) -> list[AlertOut]:
        return [a for a in self.alerts if state is None or a.state == state]


def _alert(endpoint: str, firing_at: float) -> AlertOut:
    return AlertOut(fingerprint=f"fp-{endpoint}", rule="delays-drift", kind="feature_drift", severity="warning",
                    state="firing", endpoint=endpoint, summary="drift on temp", started_at=firing_at - 60,
                    firing_at=firing_at, updated_at=firing_at)  # fmt: skip


def test_an_alert_firing_starts_one_run_per_episode(harness: Harness) -> None:
    harness.register(SLOW.format(extra='[[triggers]]\nkind = "alert"\nalert = "delays-drift"\nendpoint = "delays"')
                     .replace("s = 1", "s = 0"))  # fmt: skip
    alerts = _Alerts()
    loop = TriggerLoop(harness.svc, lambda: alerts)
    assert loop.tick(time.time()) == []
    alerts.alerts = [_alert("other", 1000.0)]
    assert loop.tick(time.time()) == []  # another endpoint's alert
    alerts.alerts = [_alert("delays", 1000.0)]
    started = loop.tick(time.time())
    assert len(started) == 1
    harness.wait(started[0])
    for _ in range(5):  # the same episode, seen on every tick while it fires
        assert loop.tick(time.time()) == []
    alerts.alerts = [_alert("delays", 2000.0)]  # resolved and fired again: a new episode
    assert len(loop.tick(time.time())) == 1
    run = harness.svc.get_run(started[0])
    assert run.trigger == "alert" and "delays-drift" in run.trigger_detail and run.created_by == "watchkeeper-agent"


def test_cron_fires_on_schedule_and_not_for_the_past(harness: Harness) -> None:
    harness.register(SLOW.format(extra='[[triggers]]\nkind = "cron"\ncron = "*/5 * * * *"').replace("s = 1", "s = 0"))
    loop = TriggerLoop(harness.svc)
    t0 = 1_800_000_000.0 - 1  # one second before a 5-minute boundary
    assert loop.tick(t0) == []  # arms the schedule: nothing missed is made up
    assert loop.tick(t0 + 0.5) == []
    started = loop.tick(t0 + 2)
    assert len(started) == 1 and "cron */5 * * * *" in harness.svc.get_run(started[0]).trigger_detail
    harness.wait(started[0])
    assert loop.tick(t0 + 3) == []  # the same minute again
    assert len(loop.tick(t0 + 301)) == 1


def test_a_new_dataset_version_triggers_a_run_that_reads_it_by_digest(harness: Harness) -> None:
    import polars as pl

    from agent.registry.datasets import DatasetStore

    ds = DatasetStore(harness.writer, harness.writer._con, harness.root / "datasets")  # type: ignore[attr-defined]
    harness.svc.datasets = ds

    def put(n: int) -> None:
        src = harness.root / f"v{n}.parquet"
        pl.DataFrame({"x": list(range(n))}).write_parquet(src)
        ds.register("fresh", src, "t")

    put(3)
    harness.register("""
name = "dsp"
[[triggers]]
kind = "dataset"
dataset = "fresh"
[steps.count]
command = ["/bin/sh", "-c", "wc -c < $WK_INPUT_DATA > $WK_OUTPUT_N"]
inputs = { data = "dataset:fresh" }
outputs = ["n"]
""")
    loop = TriggerLoop(harness.svc)
    assert loop.tick(time.time()) == []  # version 1 was there before: not news
    put(5)
    started = loop.tick(time.time())
    assert len(started) == 1 and loop.tick(time.time()) == []
    run = harness.wait(started[0])
    inp = run.steps[0].inputs["data"]
    assert run.state == "COMPLETED" and run.trigger == "dataset" and "version 2" in run.trigger_detail
    assert inp.source == "dataset fresh:2" and inp.digest.removeprefix("sha256:") == ds.get(
        "fresh"
    ).digest.removeprefix("sha256:")
