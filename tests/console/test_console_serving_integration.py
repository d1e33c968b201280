"""The endpoints screen, the fallback switch and `loadtest` against a real agent serving the sample model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from console.app import WatchkeeperApp
from console.cli import main
from console.core.config import AgentSpec
from console.core.poller import FleetPoller, ServingState
from console.serving.endpoint_table import EndpointTable
from console.serving.endpoints_screen import EndpointsScreen
from console.serving.fallback import FallbackConfirm
from console.serving.rows import row_key

FLIGHTS = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
pytestmark = pytest.mark.skipif(not (FLIGHTS / "model.onnx").exists(), reason="sample model not built")
FAST = "flush_interval = 0.2\n"
FALLBACK = {"score": 0.2, "label": "on_time"}


def serve_flights(agent) -> httpx.Client:
    """Register the shipped ONNX model and put it behind endpoint `delays`; wait until it is loaded."""
    c = agent.client()
    meta = (FLIGHTS / "metadata.json").read_text()
    r = c.post(
        "/api/v1/models/flights/versions",
        files={"artifact": ("model.onnx", (FLIGHTS / "model.onnx").read_bytes()), "metadata": (None, meta)},
    )
    assert r.status_code == 201, r.text
    body = {"model": "flights", "version": 1, "fallback": FALLBACK, "missing_policy": "impute"}
    r = c.put("/api/v1/endpoints/delays", json=body)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while not c.get("/api/v1/endpoints/delays").json()["loaded"]:
        assert time.monotonic() < deadline, "model never loaded"
        time.sleep(0.05)
    return c


@pytest.fixture
def served(agent_factory):
    a = agent_factory("lt-srv", config=FAST)
    c = serve_flights(a)
    yield a, c
    c.close()


def loadtest(capsys, monkeypatch, agent, *argv: str) -> tuple[int, dict]:
    monkeypatch.setenv("WATCHKEEPER_TOKEN", agent.token)
    rc = main(["loadtest", "delays", "--agent", agent.url, "--json", *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_loadtest_generated_and_replayed_payloads(served, capsys, monkeypatch) -> None:
    a, c = served
    rc, doc = loadtest(capsys, monkeypatch, a, "--requests", "150", "--rows", "1-20", "--concurrency", "4")
    assert rc == 0, doc
    assert doc["status"] == {"200": 150} and doc["errors"] == 0  # generated rows are valid for the signature
    assert doc["model"] == "flights" and doc["version"] == 1 and doc["payload"]["features"] == 13
    assert doc["fallbacks"]["total"] == 0
    assert doc["agent_cpu_percent"] is not None and doc["agent_cpu_percent"] > 0
    stats = next(s for s in c.get("/api/v1/serving").json()["stats"] if s["endpoint"] == "delays")
    assert stats["requests"] >= 150 and stats["rows"] >= doc["rows"]

    replay = FLIGHTS / "serving_replay.parquet"
    rc, doc = loadtest(
        capsys, monkeypatch, a, "--requests", "60", "--rows", "5-50", "--data", str(replay), "--columnar"
    )
    assert rc == 0, doc
    assert doc["payload"]["source"] == "file" and doc["rows"] >= 60 * 5 and doc["warnings"] == []

    # Missing values: imputed by this endpoint, so still no errors.
    rc, doc = loadtest(capsys, monkeypatch, a, "--requests", "30", "--missing-rate", "0.2")
    assert rc == 0 and doc["status"] == {"200": 30}


def test_loadtest_counts_operator_fallbacks_and_exits_1_on_validation_errors(served, capsys, monkeypatch) -> None:
    a, c = served
    assert c.post("/api/v1/endpoints/delays/fallback", json={"enabled": True, "reason": "drill"}).status_code == 200
    rc, doc = loadtest(capsys, monkeypatch, a, "--duration", "0.5", "--concurrency", "2")
    assert rc == 0 and doc["requests"] > 0
    assert doc["fallbacks"] == {"total": doc["requests"], "by_reason": {"operator": doc["requests"]}}
    c.post("/api/v1/endpoints/delays/fallback", json={"enabled": False, "reason": "drill over"})
    # Values of the wrong type: every request is refused (422), so the run fails.
    bad = Path(a.data_dir).parent / "bad.csv"
    bad.write_text("sched_dep_hour,carrier\nsoon,AA\nlater,DL\n")
    rc, doc = loadtest(capsys, monkeypatch, a, "--requests", "5", "--data", str(bad))
    assert rc == 1 and doc["status"] == {"422": 5}
    assert doc["warnings"][0].startswith("data file lacks feature(s) day_of_week, distance")
    # Nothing usable in the file: refused before the run.
    (Path(a.data_dir).parent / "other.csv").write_text("colour,size\nred,1\n")
    monkeypatch.setenv("WATCHKEEPER_TOKEN", a.token)
    assert main(["loadtest", "delays", "--agent", a.url, "--data", str(Path(a.data_dir).parent / "other.csv")]) == 2
    assert "has none of the model's features" in capsys.readouterr().err


async def test_endpoints_screen_and_fallback_switch_on_a_real_agent(served) -> None:
    a, c = served
    for _ in range(20):  # some traffic for the rates
        c.post("/api/v1/endpoints/delays/predict", json={"columns": {"sched_dep_hour": [8], "carrier": ["AA"]}})
    poller = FleetPoller([AgentSpec("srv", a.url, token=a.token)])
    app = WatchkeeperApp(poller, refresh_s=0.5)
    key = row_key("srv", "delays", "flights", 1)
    async with app.run_test(size=(140, 40)) as pilot:

        async def until(predicate, timeout: float = 15.0) -> None:
            end = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < end, "condition not reached"
                await pilot.pause(0.05)

        await until(lambda: app.fleet_status is not None)
        await pilot.press("e")
        await until(lambda: isinstance(app.screen, EndpointsScreen) and app.screen.table.row_count > 0)
        status = app.fleet_status
        assert status is not None and status.agents[0].serving_state is ServingState.OK
        table = app.screen.query_one(EndpointTable)
        assert table.row_keys == [key]
        assert table.get_cell(key, "loaded").plain == "yes"
        assert table.get_cell(key, "breaker").plain == "closed"
        assert table.get_cell(key, "mode").plain == "auto"
        await until(lambda: table.get_cell(key, "rps").plain not in ("-", "0.0"))
        assert app.screen.query_one("#loaded-models").row_keys == ["flights:1"]  # type: ignore[attr-defined]

        await pilot.press("f")
        await until(lambda: isinstance(app.screen, FallbackConfirm))
        await pilot.press(*"console integration drill", "enter")
        await until(lambda: table.get_cell(key, "mode").plain == "FORCED")
        info = c.get("/api/v1/endpoints/delays").json()
        assert info["fallback_mode"] is True and info["fallback_reason"] == "console integration drill"
        r = c.post("/api/v1/endpoints/delays/predict", json={"records": [{"sched_dep_hour": 8}]})
        assert r.json()["fallback"] is True and r.headers["x-watchkeeper-fallback"] == "operator"
        audit = [e for e in c.get("/api/v1/audit").json() if e["action"] == "endpoint.fallback"]
        assert audit and json.dumps(audit[-1]).count("console integration drill") == 1

        await pilot.press("f")
        await until(lambda: isinstance(app.screen, FallbackConfirm))
        await pilot.press(*"drill over", "enter")
        await until(lambda: table.get_cell(key, "mode").plain == "auto")
        assert c.get("/api/v1/endpoints/delays").json()["fallback_mode"] is False
    await asyncio.sleep(0)
