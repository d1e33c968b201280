"""`watchkeeper loadtest` against a small real HTTP server that behaves like the predict endpoint."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from console.cli import main
from console.serving.loadtest.drive import cpu_seconds, drive, percentile
from console.serving.loadtest.options import parse_rows
from console.serving.loadtest.payloads import Body, build_bodies, generated_rows, pool_size
from console.serving.loadtest.report import Report
from tests.console.wk_fakes import (
    FakeHttpAgent,
    FakePredictor,
    Reply,
    ThreadedFakeAgent,
    closed_url,
    fallback_reply,
)

PREDICT = "/api/v1/endpoints/flights/predict"


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    rc = main(["loadtest", *argv, "--json"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out)


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentiles_match_numpy_linear(n: int) -> None:
    rng = np.random.default_rng(n)
    values = sorted(rng.exponential(5.0, size=n).tolist())
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)
    assert percentile([], 50) is None


def test_cpu_seconds_from_prometheus_text() -> None:
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.34\n"
        "process_cpu_seconds_total_created 1.7e9\n"
    )
    assert cpu_seconds(text) == pytest.approx(12.34)
    assert cpu_seconds('process_cpu_seconds_total{pid="1"} 5e-1\n') == pytest.approx(0.5)
    assert cpu_seconds("node_cpu_seconds_total 3\n") is None


def test_rows_option() -> None:
    assert parse_rows("1") == (1, 1)
    assert parse_rows("5-50") == (5, 50)
    for bad in ("0", "5-1", "a", "1-", "1-100001"):
        with pytest.raises(Exception, match="rows"):
            parse_rows(bad)


def test_generated_payloads_are_valid_and_reproducible() -> None:
    fp = FakePredictor()
    features = fp.model_version.signature.features
    a = build_bodies(generated_rows(features), random.Random(3), rows=(1, 9), count=50)
    b = build_bodies(generated_rows(features), random.Random(3), rows=(1, 9), count=50)
    assert [x.content for x in a] == [x.content for x in b]  # --seed reproduces payloads
    assert {x.rows for x in a} <= set(range(1, 10)) and len({x.rows for x in a}) > 3
    rows = [r for body in a for r in json.loads(body.content)["records"]]
    assert sum(x.rows for x in a) == len(rows)
    for r in rows:
        assert 50 <= r["distance"] <= 5000 and isinstance(r["distance"], float)
        assert 0 <= r["dep_hour"] <= 23 and isinstance(r["dep_hour"], int)
        assert isinstance(r["weekend"], bool) and r["carrier"] in ("AA", "DL", "UA")
        assert 0 <= r["temp"] <= 100  # no range given: the default one
    missing = build_bodies(generated_rows(features), random.Random(1), rows=(20, 20), count=20, missing_rate=0.25)
    values = [v for body in missing for r in json.loads(body.content)["records"] for v in r.values()]
    assert 0.18 < sum(v is None for v in values) / len(values) < 0.32
    columnar = build_bodies(generated_rows(features), random.Random(1), rows=(4, 4), count=1, columnar=True)
    cols = json.loads(columnar[0].content)["columns"]
    assert set(cols) == {"distance", "dep_hour", "weekend", "carrier", "temp"} and len(cols["carrier"]) == 4
    assert pool_size(None, 1) == 256 and pool_size(10, 1) == 10 and pool_size(None, 100_000) == 20


async def test_drive_counts_and_percentiles_are_those_of_the_requests() -> None:
    # Concurrency 1 and scripted delays: 0, 20, 40, 60 ms repeating.
    fp = FakePredictor(script=lambda i: Reply(200, {"ok": True}, delay_s=(i % 4) * 0.02))
    async with FakeHttpAgent(fp.routes()) as server, httpx.AsyncClient(base_url=server.url) as client:
        tally, elapsed, aborted = await drive(
            client, PREDICT, [Body(b'{"records":[{}]}', 1)], concurrency=1, duration_s=30, requests=20, timeout_s=5
        )
    assert aborted is None and tally.requests == 20 and fp.predicts == 20
    assert elapsed >= 0.5  # 5 x (0 + 20 + 40 + 60) ms
    report = Report("t", "flights", None, None, {}, {}, tally, elapsed, None, None, None)
    lat = report.latency()
    values = sorted(tally.latencies_ms)
    for q in (50, 90, 99):
        assert lat[f"p{q}"] == pytest.approx(np.percentile(values, q), abs=1e-3)
    assert lat["max"] == pytest.approx(values[-1], abs=1e-3)
    # And they are the server's delays (plus client and loopback overhead: generous, the client and the fake
    # server share one process, so a GC pause or a busy CI host lands on one request).
    assert 20 <= lat["p50"] <= 40 + 60
    assert 60 <= lat["p99"] <= 60 + 150


# --------------------------------------------------------------------------- the command


def test_bounded_by_request_count(capsys) -> None:
    fp = FakePredictor()
    with ThreadedFakeAgent(fp.routes()) as agent:
        rc, doc = run_json(
            capsys, "flights", "--agent", agent.url, "--requests", "40", "--concurrency", "4", "--rows", "1-5"
        )
        connections = agent.connections
    assert rc == 0 and doc["ok"] is True
    assert doc["requests"] == 40 and fp.predicts == 40 and doc["status"] == {"200": 40}
    assert doc["bounds"]["duration_s"] == 3600  # only --requests: a time cap still applies
    assert doc["rows"] == doc["rows_sent"] == fp.rows and 40 <= fp.rows <= 200
    assert fp.bad_rows == []  # generated from the signature: all valid
    assert len(set(fp.request_ids)) == 40  # one X-Request-Id each
    assert connections <= 4 + 1  # keep-alive pool (+ the control connection), not one per request
    assert doc["latency_ms"]["count"] == 40 and doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"]


def test_bounded_by_time(capsys) -> None:
    fp = FakePredictor(delay_s=0.02)
    with ThreadedFakeAgent(fp.routes()) as agent:
        t0 = time.monotonic()
        rc, doc = run_json(capsys, "flights", "--agent", agent.url, "--duration", "0.6", "--concurrency", "2")
        took = time.monotonic() - t0
    assert rc == 0
    assert doc["requests"] is not None and doc["bounds"]["requests"] is None
    assert 0.6 <= doc["elapsed_s"] < 0.6 + 1.5  # stops at the duration, not after it (slack: a busy CI host)
    assert took < 8
    # ~2 workers x 0.6 s / 20 ms = 60 requests, give or take scheduling (a busy host gets fewer done).
    assert 5 <= doc["requests"] <= 70
    assert doc["req_per_s"] == pytest.approx(doc["requests"] / doc["elapsed_s"], rel=0.01)


def test_status_codes_fallbacks_and_exit_1(capsys) -> None:
    def script(i: int) -> Reply | None:
        if i % 5 == 4:
            return Reply(429, {"error": "shed"}, headers={"retry-after": "1"})
        if i % 3 == 0:
            return fallback_reply("breaker_open")
        if i == 7:
            return Reply(503, {"error": "breaker_open"})
        return None

    fp = FakePredictor(script=script)
    with ThreadedFakeAgent(fp.routes()) as agent:
        rc, doc = run_json(capsys, "flights", "--agent", agent.url, "--requests", "30", "--concurrency", "1")
    codes = Counter(
        429 if i % 5 == 4 else 200 if i % 3 == 0 else 503 if i == 7 else 200 for i in range(30)
    )  # what the script answers, request by request
    assert rc == 1 and doc["ok"] is False
    assert doc["status"] == {str(c): n for c, n in sorted(codes.items())}
    assert doc["errors"] == codes[429] + codes[503]
    expected_fallbacks = sum(1 for i in range(30) if i % 5 != 4 and i % 3 == 0)
    assert doc["fallbacks"] == {"total": expected_fallbacks, "by_reason": {"breaker_open": expected_fallbacks}}


def test_table_output_and_agent_cpu(capsys) -> None:
    fp = FakePredictor(cpu_per_scrape=0.25, token="tok")
    with ThreadedFakeAgent(fp.routes()) as agent:
        rc = main(["loadtest", "flights", "--agent", agent.url, "--requests", "25", "--columnar"])
    # No token: the first request is refused before the run.
    assert rc == 2
    assert "401 no token" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp, ThreadedFakeAgent(fp.routes()) as agent:
        mp.setenv("WATCHKEEPER_TOKEN", "tok")
        rc = main(["loadtest", "flights", "--agent", agent.url, "--requests", "25", "--seed", "5", "--rows", "2-3"])
        out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == f"loadtest flights (flights:3) on {agent.url}"
    assert "stops after 25 requests or 3600 s, whichever comes first; concurrency 8; 2-3 rows/request" in lines[1]
    assert "seed 5" in lines[1]
    table = {line.split()[0]: line for line in lines[2:]}
    assert table["requests"].startswith("requests    25 in ")
    assert "p50" in table["latency"] and "p99" in table["latency"] and "max" in table["latency"]
    assert table["status"].split()[1:] == ["200:", "25"]
    assert table["result"].endswith("OK")
    # 0.25 CPU-seconds between the scrapes that bracket a run of well under a second: > 25 %.
    cpu = float(table["agent"].split()[2].rstrip("%"))
    assert cpu > 25


def test_data_files_parquet_csv_jsonl(tmp_path: Path, capsys) -> None:
    frame = pl.DataFrame(
        {
            "distance": [100.0, 200.0, 300.0],
            "dep_hour": [1, 2, 3],
            "weekend": [True, False, True],
            "carrier": ["AA", "DL", "UA"],
            "temp": [10.5, None, 30.5],
            "label": ["late", "on_time", "late"],  # not a feature: not sent
        }
    )
    files = [tmp_path / "rows.parquet", tmp_path / "rows.csv", tmp_path / "rows.jsonl"]
    frame.write_parquet(files[0])
    frame.write_csv(files[1])
    frame.write_ndjson(files[2])
    for path in files:
        fp = FakePredictor()
        with ThreadedFakeAgent(fp.routes()) as agent:
            rc, doc = run_json(capsys, "flights", "--agent", agent.url, "--requests", "12", "--data", str(path))
            sent = [json.loads(r.body)["records"] for r in agent.full_requests if r.method == "POST"]
        assert rc == 0, path
        assert doc["payload"]["source"] == "file" and doc["payload"]["file_rows"] == 3
        rows = [r for records in sent for r in records]
        assert len(rows) == 12 and fp.bad_rows == []
        assert all(set(r) == {"distance", "dep_hour", "weekend", "carrier", "temp"} for r in rows)
        assert {r["distance"] for r in rows} <= {100.0, 200.0, 300.0}

    partial = tmp_path / "partial.csv"
    frame.drop("temp").write_csv(partial)
    with ThreadedFakeAgent(FakePredictor().routes()) as agent:
        rc, doc = run_json(capsys, "flights", "--agent", agent.url, "--requests", "2", "--data", str(partial))
    assert rc == 0 and doc["warnings"] == ["data file lacks feature(s) temp: they are sent as missing"]


def test_timeouts_are_counted_as_errors(capsys) -> None:
    fp = FakePredictor(script=lambda i: Reply(hang=True))
    with ThreadedFakeAgent(fp.routes()) as agent:
        rc, doc = run_json(
            capsys, "flights", "--agent", agent.url, "--requests", "3", "--concurrency", "3", "--timeout", "0.2"
        )
    assert rc == 1
    assert doc["transport_errors"] == {"timeout": 3} and doc["status"] == {} and doc["errors"] == 3
    assert doc["latency_ms"]["count"] == 0 and doc["latency_ms"]["p50"] is None


def test_usage_errors_exit_2(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WATCHKEEPER_FLEET", raising=False)
    with ThreadedFakeAgent(FakePredictor().routes()) as agent:
        assert main(["loadtest", "nope", "--agent", agent.url]) == 2
        assert f"no endpoint 'nope' on {agent.url}" in capsys.readouterr().err
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(f'[[agent]]\nname="a"\nurl="{agent.url}"\n[[agent]]\nname="b"\nurl="{closed_url()}"\n')
        assert main(["loadtest", "flights", "--fleet", str(fleet)]) == 2
        assert "the fleet has 2 agents: pick one with --agent NAME|URL" in capsys.readouterr().err
        # --agent NAME picks one from the fleet.
        assert main(["loadtest", "flights", "--fleet", str(fleet), "--agent", "a", "--requests", "3"]) == 0
        capsys.readouterr()
    assert main(["loadtest", "flights", "--agent", closed_url()]) == 2
    assert "connection refused" in capsys.readouterr().err
    assert main(["loadtest", "flights"]) == 2
    assert "no agents" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "flights", "--agent", "http://x:1", "--concurrency", "0"])
    assert exc.value.code == 2
    assert "--concurrency must be between 1 and 1024" in capsys.readouterr().err
    assert main(["loadtest", "flights", "--agent", "http://x:1", "--data", str(tmp_path / "missing.csv")]) == 2


def test_missing_metrics_leaves_cpu_unknown(capsys) -> None:
    fp = FakePredictor()
    routes = fp.routes()
    del routes["/metrics"]
    with ThreadedFakeAgent(routes) as agent:
        rc, doc = run_json(capsys, "flights", "--agent", agent.url, "--requests", "2")
    assert rc == 0
    assert doc["agent_cpu_percent"] is None and doc["agent_cpu_error"].startswith("/metrics: HTTP 404")


def test_missing_sniffio_is_not_searched_for_on_every_request() -> None:
    import importlib.util
    import sys

    from console.serving.loadtest.run import _skip_missing_sniffio

    if sys.modules.get("sniffio", None) is None:
        sys.modules.pop("sniffio", None)  # an earlier loadtest run in this process may have set it
    if "sniffio" in sys.modules or importlib.util.find_spec("sniffio") is not None:
        pytest.skip("sniffio is installed: nothing to skip")
    try:
        _skip_missing_sniffio()
        with pytest.raises(ImportError):
            import sniffio  # noqa: F401
    finally:
        sys.modules.pop("sniffio", None)
