"""The drift screen: rows and header text, the histogram, the client routes, and the screen in the app."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from rich.text import Text
from textual.widgets import Static

import console.monitoring.drift_screen as drift_screen
from agent.schemas import DriftPoint
from console.app import WatchkeeperApp
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.monitoring.client import MonitoringClient, MonitoringPoller
from console.monitoring.drift_rows import data_quality_line, drift_line, feature_rows, model_quality_line, window_text
from console.monitoring.drift_screen import DriftScreen
from console.monitoring.drift_table import VERDICT_STYLE, DriftTable
from console.monitoring.histogram import HistogramView, bar, histogram_text
from console.serving.endpoint_table import EndpointTable
from console.serving.endpoints_screen import EndpointsScreen
from console.serving.rows import row_key
from tests.console.wk_fakes import (
    FROZEN_NOW,
    FakeHttpAgent,
    FakeSource,
    MonitoredAgent,
    Reply,
    make_drift_history,
    make_drift_report,
    make_histogram,
    make_quality,
    serving_fleet,
)
from tests.console.wk_pilot import open_from_fleet, press_to, select, until

REF_ORDER = ["distance", "carrier", "__prediction__", "dep_hour", "temp"]
PREV_ORDER = ["dep_hour", "__prediction__", "distance", "carrier", "temp"]


def plain(widget) -> str:
    rendered = widget.render()
    return rendered.plain if isinstance(rendered, Text) else str(rendered)


async def open_drift(app: WatchkeeperApp, pilot, key: str) -> DriftTable:
    table = await open_from_fleet(app, pilot, "e", EndpointsScreen, EndpointTable)
    await select(pilot, table, key)
    await pilot.press("d")
    await until(pilot, lambda: isinstance(app.screen, DriftScreen) and app.screen.loads > 0)
    await pilot.pause()
    return app.screen.query_one(DriftTable)


# --------------------------------------------------------------------------- rows and text


def test_features_sorted_by_score_unscored_last_with_effect_beside_p_value() -> None:
    rows = feature_rows(make_drift_report(), make_drift_history())
    assert [r.key for r in rows] == REF_ORDER
    distance, carrier = rows[0], rows[1]
    assert [distance.text(c) for c in ("score", "method", "verdict", "range", "unseen", "pvalue", "effect")] == [
        "0.310", "psi", "drift", "3.4%", "-", "<0.0001", "D 0.217",
    ]  # fmt: skip
    assert [carrier.text(c) for c in ("missing", "range", "unseen", "effect")] == [
        "0.0% → 12.0%",
        "-",
        "4.1%",
        "JS 0.140",
    ]
    assert carrier.missing_grew and not distance.missing_grew
    assert rows[2].text("feature") == "(prediction)"
    assert rows[-1].text("score") == "-" and rows[-1].history == ()  # no data: no score, no sparkline
    assert distance.history[-1] == pytest.approx(0.31) and len(distance.history) == 12
    assert [r.key for r in feature_rows(make_drift_report(baseline="previous"))] == PREV_ORDER
    assert feature_rows(None) == []


def test_history_is_in_window_order_without_windows_lacking_a_score() -> None:
    history = make_drift_history()
    points = list(reversed(history.features["distance"]))
    points.insert(3, DriftPoint(window_end=FROZEN_NOW - 10_000, score=None, drifted=False, verdict="no data"))
    history = history.model_copy(update={"features": {**history.features, "distance": points}})
    (row,) = [r for r in feature_rows(make_drift_report(), history) if r.key == "distance"]
    assert list(row.history) == sorted(row.history) and len(row.history) == 12


def test_header_lines() -> None:
    report = make_drift_report()
    assert drift_line(report) == (
        "rows 1,200 vs reference 50,000  ·  drift share 67% (2/3 judged features; 1 not judged)  ·  DATASET DRIFT"
    )
    nothing = report.model_copy(update={"drift_share": 0.0, "features_judged": 0, "features_drifted": 0})
    assert "drift share not judged (0 of 4 features had enough rows)" in drift_line(nothing)
    assert window_text(report, FROZEN_NOW) == "window 2023-11-14 22:11:40 → 22:12:40 UTC (60s, closed 40s ago)"
    assert (
        data_quality_line(report)
        == "data quality: 1 feature with issues: carrier (missing rate 12.0% (reference 0.0%))"
    )
    assert model_quality_line(make_quality(), 3) == (
        "model quality (v3, last labelled window): accuracy 0.820 (ref 0.850) · auc 0.880 (ref 0.910) "
        "· f1 0.700 (ref 0.720) · 402/5,000 labelled"
    )
    assert (
        model_quality_line(None, 3, "HTTP 503: monitoring_unavailable")
        == "model quality: HTTP 503: monitoring_unavailable"
    )
    empty = make_quality().model_copy(update={"windows": []})
    assert model_quality_line(empty, 3) == "model quality: no labels yet"
    previous = make_drift_report(baseline="previous")
    assert "vs previous window 1,150" in drift_line(previous) and drift_line(previous).endswith("no dataset drift")


def test_histogram_bars_share_one_scale_and_fit_the_width() -> None:
    assert bar(0.5, 1.0, 8) == "████    "
    assert bar(1.0, 1.0, 4) == "████" and bar(0.0, 1.0, 4) == "    "
    assert bar(1 / 16, 1.0, 4) == "▎   "  # a quarter of a cell, in eighths
    text = histogram_text(make_histogram(feature="carrier"), 100)
    lines = text.plain.splitlines()
    assert lines[0].startswith("carrier  (categorical, share of rows per bin)")
    assert len(lines) == 2 + 5 and all(len(line) <= 100 for line in lines)
    aa, unseen = lines[2], lines[5]
    assert aa.startswith("AA ") and "40.0%" in aa and "30.0%" in aa and aa.endswith("-10.0pp")
    assert unseen.startswith("(unseen)") and unseen.endswith("+10.0pp")
    # Both series on one scale: AA's reference share (the largest) is a full bar, its current share 3/4 of it.
    ref_cells, cur_cells = (part.count("█") for part in aa.split("%")[:2])
    assert cur_cells == pytest.approx(0.75 * ref_cells, abs=1) and ref_cells > 10
    assert histogram_text(None, 80, "loading").plain == "loading"


# --------------------------------------------------------------------------- the client


async def test_client_routes_send_baseline_range_and_feature() -> None:
    agent = MonitoredAgent("gpu-01", endpoint="a b", token="tok")
    async with FakeHttpAgent(agent.routes()) as server:
        client = MonitoringClient(AgentSpec("gpu-01", server.url, token="tok"))
        report = await client.drift("a b", "previous", since=100.0, until=160.5)
        history = await client.drift_history("a b", since=50.0)
        histogram = await client.drift_histogram("a b", "carrier")
        quality = await client.quality("a b")
        with pytest.raises(AgentError) as missing:
            await client.drift("nope")
        await client.aclose()
    assert report.baseline == "previous" and history.baseline == "reference"
    assert histogram.kind == "categorical" and quality.kind == "binary"
    queries = {r.path: r.query for r in server.full_requests}
    assert queries["/api/v1/endpoints/a%20b/drift"] == {
        "baseline": ["previous"],
        "since": ["100.000"],
        "until": ["160.500"],
    }
    assert queries["/api/v1/endpoints/a%20b/drift/history"] == {"baseline": ["reference"], "since": ["50.000"]}
    assert queries["/api/v1/endpoints/a%20b/drift/histogram"] == {"feature": ["carrier"]}
    assert missing.value.kind is ErrorKind.HTTP_4XX and missing.value.status_code == 404


# --------------------------------------------------------------------------- the screen (scripted source)

K_FRAUD = row_key("gpu-01", "fraud", "fraud", 7)


async def test_d_opens_drift_of_the_selected_endpoint_with_header_table_and_histogram() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 44)) as pilot:
        table = await open_drift(app, pilot, K_FRAUD)
        assert source.drift_calls == [("gpu-01", "fraud", "reference")]
        assert table.row_keys == REF_ORDER
        assert table.get_cell("distance", "verdict").style == VERDICT_STYLE["drift"]
        assert table.get_cell("carrier", "verdict").style == VERDICT_STYLE["drift+quality"]
        assert table.get_cell("distance", "history").plain.strip().endswith("█")  # over threshold: full and red
        summary = plain(app.screen.query_one("#drift-summary", Static))
        for needle in (
            "fraud on gpu-01  ·  model flights:3  ·  baseline: reference profile",
            "window 2023-11-14 22:11:40 → 22:12:40 UTC",
            "DATASET DRIFT",
            "data quality: 1 feature with issues: carrier",
            "model quality (v3, last labelled window): accuracy 0.820 (ref 0.850)",
        ):
            assert needle in summary
        await until(pilot, lambda: app.screen.histogram is not None)
        assert source.histogram_calls == [("gpu-01", "fraud", "distance")]
        view = app.screen.query_one(HistogramView)
        assert view.histogram is not None and view.histogram.feature == "distance"
        detail = plain(app.screen.query_one("#feature-detail", Static))
        assert "psi 0.310 (threshold 0.200)" in detail and "out of range: 3.4%" in detail
        status = plain(app.screen.query_one("#drift-status", Static))
        assert "5/5 features" in status and "baseline reference" in status and "computed 35s ago" in status


async def test_selecting_a_feature_loads_its_histogram() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 44)) as pilot:
        table = await open_drift(app, pilot, K_FRAUD)
        await until(pilot, lambda: app.screen.histogram is not None)
        await pilot.press("down")
        view = app.screen.query_one(HistogramView)
        await until(pilot, lambda: view.histogram is not None and view.histogram.feature == "carrier")
        assert source.histogram_calls[-1] == ("gpu-01", "fraud", "carrier")
        assert "(unseen)" in plain(view) and "(missing)" in plain(view)
        detail = plain(app.screen.query_one("#feature-detail", Static))
        assert "unseen: 4.1% (top: ZZ, QQ)" in detail and "! missing rate 12.0%" in detail
        calls = len(source.histogram_calls)
        table.move_cursor(row=1)  # the same feature again: nothing to fetch
        await pilot.pause(0.1)
        assert len(source.histogram_calls) == calls


async def test_b_toggles_the_baseline_and_refetches() -> None:
    source = FakeSource(serving_fleet())
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 44)) as pilot:
        table = await open_drift(app, pilot, K_FRAUD)
        screen = app.screen
        assert isinstance(screen, DriftScreen)
        await pilot.press("b")
        await until(pilot, lambda: screen.loads == 2)
        assert source.drift_calls[-1] == ("gpu-01", "fraud", "previous")
        assert table.row_keys == PREV_ORDER
        summary = plain(screen.query_one("#drift-summary", Static))
        assert "baseline: previous window" in summary and "no dataset drift" in summary
        assert table.get_cell("dep_hour", "verdict").style == VERDICT_STYLE["drift"]
        await pilot.press("b")
        await until(pilot, lambda: screen.loads == 3)
        assert source.drift_calls[-1] == ("gpu-01", "fraud", "reference") and table.row_keys == REF_ORDER


async def test_drift_errors_show_in_the_header_and_go_to_the_sink_once() -> None:
    source = FakeSource(serving_fleet())
    source.drift_error = AgentError(ErrorKind.HTTP_4XX, "HTTP 404: not_found: no endpoint 'fraud'", status_code=404)
    source.quality_error = AgentError(ErrorKind.NOT_READY, "503 monitoring_unavailable", status_code=503)
    app = WatchkeeperApp(source, refresh_s=60)
    seen: list[tuple[str, str]] = []
    app.notify = lambda message, severity="information", **kw: seen.append((message, severity))  # type: ignore[method-assign]
    async with app.run_test(size=(140, 44)) as pilot:
        table = await open_drift(app, pilot, K_FRAUD)
        summary = plain(app.screen.query_one("#drift-summary", Static))
        assert "drift unavailable: HTTP 404: not_found: no endpoint 'fraud'" in summary
        assert "model quality: 503 monitoring_unavailable" in summary
        assert table.row_count == 0
        await until(pilot, lambda: bool(seen))
        assert seen == [("fraud on gpu-01: drift unavailable: HTTP 404: not_found: no endpoint 'fraud'", "warning")]
        # It recovers on the next refresh, and the quality error alone leaves the table alone.
        source.drift_error = None
        await pilot.press("r")
        await until(pilot, lambda: table.row_count == 5)
        assert "model quality: 503 monitoring_unavailable" in plain(app.screen.query_one("#drift-summary", Static))


async def test_a_report_without_data_shows_its_note() -> None:
    source = FakeSource(serving_fleet())
    empty = make_drift_report().model_copy(update={"features": [], "note": "no reference profile for this version"})

    async def drift(name, endpoint, baseline="reference", since=None):
        source.drift_calls.append((name, endpoint, baseline))
        return empty

    source.drift = drift  # type: ignore[method-assign]
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 44)) as pilot:
        await open_drift(app, pilot, K_FRAUD)
        assert "note: no reference profile for this version" in plain(app.screen.query_one("#drift-summary", Static))
        assert source.histogram_calls == []


async def test_refresh_is_rearmed_after_each_load_and_stops_when_leaving(monkeypatch) -> None:
    monkeypatch.setattr(drift_screen, "DRIFT_REFRESH_MIN_S", 0.1)
    source = FakeSource(serving_fleet())
    in_flight = {"now": 0, "max": 0}
    original = source.drift

    async def slow_drift(*args, **kwargs):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            await asyncio.sleep(0.05)
            return await original(*args, **kwargs)
        finally:
            in_flight["now"] -= 1

    source.drift = slow_drift  # type: ignore[method-assign]
    app = WatchkeeperApp(source, refresh_s=0.05)
    async with app.run_test(size=(140, 44)) as pilot:
        await open_drift(app, pilot, K_FRAUD)
        screen = app.screen
        assert isinstance(screen, DriftScreen) and screen.refresh_interval == pytest.approx(0.1)
        await until(pilot, lambda: screen.loads >= 4)
        await pilot.press("r", "r", "r")  # manual refreshes cancel the one in flight: never two at once
        await pilot.pause(0.3)
        assert in_flight["max"] == 1
        await press_to(pilot, EndpointsScreen, "escape")
        await pilot.pause(0.1)
        calls = len(source.drift_calls)
        await pilot.pause(0.4)
        assert len(source.drift_calls) == calls


async def test_a_down_agent_is_said_in_the_header() -> None:
    status = serving_fleet()
    source = FakeSource(status)
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(140, 44)) as pilot:
        await open_drift(app, pilot, K_FRAUD)
        from console.core.poller import AgentState

        gpu01 = replace(status.agents[0], state=AgentState.DOWN, reason="connection refused")
        source.status = replace(status, agents=(gpu01, *status.agents[1:]))
        app.request_poll()
        await until(pilot, lambda: "gpu-01 is down: last answer shown" in plain(app.screen.query_one("#drift-summary")))


# --------------------------------------------------------------------------- against a fake agent over HTTP


async def test_drift_screen_against_a_fake_agent() -> None:
    agent = MonitoredAgent("gpu-01", token="tok")
    async with FakeHttpAgent(agent.routes()) as server:
        app = WatchkeeperApp(MonitoringPoller([AgentSpec("gpu-01", server.url, token="tok")]), refresh_s=60)
        async with app.run_test(size=(140, 44)) as pilot:
            table = await open_drift(app, pilot, row_key("gpu-01", "flights", "flights", 3))
            assert table.row_keys == REF_ORDER
            await until(pilot, lambda: app.screen.histogram is not None)

            def queries(path: str) -> list[dict[str, list[str]]]:
                return [r.query for r in server.full_requests if r.path == f"/api/v1/endpoints/flights/{path}"]

            assert queries("drift") == [{"baseline": ["reference"]}]
            assert queries("drift/history") == [{"baseline": ["reference"]}]
            assert len(queries("quality")) == 1
            assert queries("drift/histogram") == [{"feature": ["distance"]}]
            await pilot.press("b")
            await until(pilot, lambda: table.row_keys == PREV_ORDER)
            assert queries("drift")[-1] == {"baseline": ["previous"]}
            assert queries("drift/history")[-1] == {"baseline": ["previous"]}
            table.move_cursor(row=1)
            view = app.screen.query_one(HistogramView)
            await until(pilot, lambda: view.histogram is not None and view.histogram.feature == "__prediction__")
            assert queries("drift/histogram")[-1] == {"feature": ["__prediction__"]}
            # The agent says 409 for a feature without a reference profile: the panel says why.
            server.routes["/api/v1/endpoints/flights/drift/histogram"] = Reply(
                409, {"error": "conflict", "detail": "no reference profile for this version"}
            )
            table.move_cursor(row=2)
            await until(pilot, lambda: "no reference profile" in plain(view))
            assert plain(view).startswith("no histogram for distance: HTTP 409")
