"""The shipped flights model served by a real agent process over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
FLIGHTS = ROOT / "sample_data" / "flights"
FEATURES = [f["name"] for f in json.loads((FLIGHTS / "metadata.json").read_text())["signature"]["features"]]
FALLBACK = {"score": 0.2, "label": "on_time"}
FAST = "flush_interval = 0.2\n"


def register(
    c: httpx.Client, name: str = "flights", fmt: str = "onnx", tags: dict | None = None, doc: bytes = b""
) -> dict:
    """Register the shipped model. `doc` appends an ONNX doc_string field (protobuf field 6): the same
    weights under a new digest, as a rebuild would give."""
    meta_file, art = {
        "onnx": ("metadata.json", "model.onnx"),
        "torchscript": ("metadata.torchscript.json", "model.torchscript.pt"),
    }[fmt]
    meta = json.loads((FLIGHTS / meta_file).read_text())
    if tags:
        meta["tags"] = {**meta.get("tags", {}), **tags}
    r = c.post(
        f"/api/v1/models/{name}/versions",
        files={
            "artifact": (art, (FLIGHTS / art).read_bytes() + (b"\x32" + bytes([len(doc)]) + doc if doc else b"")),
            "metadata": (None, json.dumps(meta)),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def endpoint(c: httpx.Client, name: str = "delays", **cfg) -> dict:
    body = {"model": "flights", "version": 1, "fallback": FALLBACK, "missing_policy": "impute", **cfg}
    r = c.put(f"/api/v1/endpoints/{name}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def reference(n: int) -> pl.DataFrame:
    return pl.read_parquet(FLIGHTS / "reference.parquet").head(n)


def records(df: pl.DataFrame) -> list[dict]:
    return df.select(FEATURES).to_dicts()


def wait_loaded(c: httpx.Client, name: str = "delays", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get(f"/api/v1/endpoints/{name}").json()["loaded"]:
            return
        time.sleep(0.05)
    raise AssertionError("model never loaded")


@contextlib.contextmanager
def serving_delays(agent_factory, name: str, config: str) -> Iterator[tuple[Any, httpx.Client]]:
    """A real agent serving the flights model as the loaded endpoint `delays`, and its client."""
    a = agent_factory(name, config=config)
    c = a.client()
    try:
        register(c)
        endpoint(c)
        wait_loaded(c)
        yield a, c
    finally:
        c.close()


@pytest.fixture
def served(agent_factory):
    with serving_delays(agent_factory, "srv", FAST) as served:
        yield served


def test_scores_match_the_reference_and_answer_shape(served):
    _, c = served
    df = reference(200)
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": records(df)}, headers={"X-Request-Id": "req-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "flights" and body["version"] == 1 and body["fallback"] is False
    assert r.headers["x-request-id"] == "req-1" and body["request_id"] == "req-1"
    assert r.headers["x-watchkeeper-model-version"] == "flights:1"
    got = np.array([p["score"] for p in body["predictions"]])
    assert np.allclose(got, df["score"].to_numpy(), atol=1e-5)
    thr = json.loads((FLIGHTS / "metadata.json").read_text())["signature"]["output"]["threshold"]
    assert [p["label"] for p in body["predictions"]] == ["delayed" if s >= thr else "on_time" for s in got]
    # the columnar form gives the same answer
    cols = {k: df[k].to_list() for k in FEATURES}
    r2 = c.post("/api/v1/endpoints/delays/predict", json={"columns": cols})
    assert np.allclose([p["score"] for p in r2.json()["predictions"]], got, atol=1e-7)


def test_validation_errors_name_each_field(served):
    a, c = served
    rec = records(reference(1))[0]
    bad = [{**rec, "distance": "far"}, {**rec, "colour": "red"}, {k: v for k, v in rec.items() if k != "carrier"}]
    # carrier has an impute value, so a missing carrier is fine; a wrong type and an unknown field are not
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": bad})
    assert r.status_code == 422
    errs = {(e["row"], e["field"]) for e in r.json()["detail"]}
    assert errs == {(0, "distance"), (1, "colour")}
    assert r.json()["field"] == "distance"
    checks = [
        (c.post("/api/v1/endpoints/nope/predict", json={"records": [rec]}), 404, "endpoint"),
        (c.post("/api/v1/endpoints/delays/predict", content=b"{nope", headers={"content-type": "application/json"}),
         422, "body"),
        (c.post("/api/v1/endpoints/delays/predict", json={"rows": [rec]}), 422, "rows"),
        (c.post("/api/v1/endpoints/delays/predict", json={"records": []}), 422, "records"),
        (c.post("/api/v1/endpoints/delays/predict", content=b"a=b",
                headers={"content-type": "application/x-www-form-urlencoded"}), 415, "content-type"),
    ]  # fmt: skip
    for resp, status, field in checks:
        assert resp.status_code == status, resp.text
        assert resp.json()["field"] == field
    r = httpx.post(f"{a.url}/api/v1/endpoints/delays/predict", json={"records": [rec]})
    assert r.status_code == 401
    # the agent is fine and still serving
    assert c.post("/api/v1/endpoints/delays/predict", json={"records": [rec]}).status_code == 200


def test_payload_and_row_limits(served):
    _, c = served
    endpoint(c, max_payload_bytes=4096, max_rows=5)
    rec = records(reference(1))[0]
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": [rec] * 6})
    assert r.status_code == 413 and r.json()["field"] == "records"
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": [rec] * 5, "pad": "x" * 5000})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_operator_fallback_is_audited_and_marked(served):
    _, c = served
    rec = records(reference(3))
    r = c.post("/api/v1/endpoints/delays/fallback", json={"enabled": True, "reason": "incident 42"})
    assert r.status_code == 200 and r.json()["fallback_mode"] is True
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": rec})
    assert r.status_code == 200 and r.headers["x-watchkeeper-fallback"] == "operator"
    body = r.json()
    assert body["fallback"] is True and body["fallback_reason"] == "operator"
    assert body["predictions"] == [FALLBACK] * 3
    c.post("/api/v1/endpoints/delays/fallback", json={"enabled": False, "reason": "resolved"})
    assert c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).json()["fallback"] is False
    audit = [e for e in c.get("/api/v1/audit").json() if e["action"] == "endpoint.fallback"]
    assert [e["detail"]["reason"] for e in audit] == ["incident 42", "resolved"]
    stats = c.get("/api/v1/endpoints/delays/stats").json()[0]
    assert stats["fallbacks_by_reason"] == {"operator": 1} and stats["requests"] >= 2


def test_breaker_opens_on_a_failing_model_then_closes(served):
    _, c = served
    fast_breaker = {"min_requests": 5, "error_rate": 0.5, "window_s": 30, "open_s": 1.0, "half_open_probes": 2}
    endpoint(c, faults={"error_rate": 1.0}, breaker=fast_breaker)
    rec = records(reference(1))
    reasons = [c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).json()["fallback_reason"]
               for _ in range(8)]  # fmt: skip
    assert reasons[:5] == ["model_error"] * 5 and reasons[5:] == ["breaker_open"] * 3
    assert c.get("/api/v1/endpoints/delays").json()["breaker_state"] == "open"
    # the model heals; after open_s the half-open probes close the breaker
    endpoint(c, breaker=fast_breaker)
    time.sleep(1.1)
    answers = [c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).json() for _ in range(3)]
    assert all(a["fallback"] is False for a in answers)
    assert c.get("/api/v1/endpoints/delays").json()["breaker_state"] == "closed"


def test_timeout_and_shedding_without_fallback_use_documented_codes(served):
    _, c = served
    rec = records(reference(1))
    endpoint(c, fallback=None, timeout_ms=50, faults={"delay_ms": 300}, breaker={"enabled": False})
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": rec})
    assert r.status_code == 504 and r.json()["error"] == "timeout"
    endpoint(c, fallback=None, max_concurrency=1, faults={"delay_ms": 300}, breaker={"enabled": False})

    async def burst():
        async with httpx.AsyncClient(base_url=str(c.base_url), headers=dict(c.headers), timeout=10) as ac:
            return await asyncio.gather(
                *(ac.post("/api/v1/endpoints/delays/predict", json={"records": rec}) for _ in range(4))
            )

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes[0] == 200 and 429 in codes
    shed = next(r for r in asyncio.run(burst()) if r.status_code == 429)
    assert shed.headers["retry-after"] == "1" and shed.json()["error"] == "shed"


def test_shedding_with_fallback_answers_marked_fallback(served):
    _, c = served
    rec = records(reference(1))
    endpoint(c, max_concurrency=1, faults={"delay_ms": 200}, breaker={"enabled": False})

    async def burst():
        async with httpx.AsyncClient(base_url=str(c.base_url), headers=dict(c.headers), timeout=10) as ac:
            return await asyncio.gather(
                *(ac.post("/api/v1/endpoints/delays/predict", json={"records": rec}) for _ in range(5))
            )

    res = asyncio.run(burst())
    assert all(r.status_code == 200 for r in res)
    assert sorted(r.json()["fallback_reason"] or "" for r in res).count("shed") >= 3


def test_micro_batching_merges_concurrent_requests(served):
    _, c = served
    endpoint(c, batching={"enabled": True, "max_rows": 64, "max_wait_ms": 20})
    df = reference(40)
    recs = records(df)

    async def burst():
        async with httpx.AsyncClient(base_url=str(c.base_url), headers=dict(c.headers), timeout=10) as ac:
            return await asyncio.gather(
                *(ac.post("/api/v1/endpoints/delays/predict", json={"records": [r]}) for r in recs)
            )

    res = asyncio.run(burst())
    scores = [r.json()["predictions"][0]["score"] for r in res]
    assert np.allclose(scores, df["score"].to_numpy(), atol=1e-5)  # each caller got its own row back
    st = c.get("/api/v1/endpoints/delays/stats").json()[0]
    assert st["batch_rows_mean"] is not None and st["batch_rows_mean"] > 1.5


def test_prediction_log_and_metrics(served):
    _, c = served
    df = reference(5)
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": records(df)}, headers={"X-Request-Id": "log-me"})
    assert r.status_code == 200
    rows = c.get("/api/v1/endpoints/delays/predictions", params={"request_id": "log-me"}).json()
    assert sorted(x["row_idx"] for x in rows) == [0, 1, 2, 3, 4]
    first = next(x for x in rows if x["row_idx"] == 0)
    assert first["features"]["carrier"] == df["carrier"][0] and first["status"] == "ok"
    assert abs(first["score"] - df["score"][0]) < 1e-5 and first["version"] == 1
    text = c.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ok = [s for s in fams["nv_inference_request_success"].samples if s.labels["endpoint"] == "delays"]
    assert ok and ok[0].value >= 1 and ok[0].labels["model"] == "flights"
    assert any(s.name.endswith("_bucket") for s in fams["bentoml_service_request_duration_seconds"].samples)
    serving = c.get("/api/v1/serving").json()
    assert serving["loaded_models"][0]["model"] == "flights" and serving["loaded_models"][0]["memory_bytes"] > 0
    assert serving["stats"][0]["latency"]["p50_ms"] > 0


def test_endpoints_survive_restart_and_bad_config_is_refused(served):
    a, c = served
    c.post("/api/v1/endpoints/delays/fallback", json={"enabled": True, "reason": "drill"})
    r = c.put("/api/v1/endpoints/other", json={"model": "flights", "version": 9})
    assert r.status_code == 404 and r.json()["field"] == "model"
    r = c.put("/api/v1/endpoints/other", json={"model": "flights", "version": 1, "alias": "champion"})
    assert r.status_code == 422
    r = c.put("/api/v1/endpoints/other", json={"model": "flights", "version": 1, "max_concurrency": 0})
    assert r.status_code == 422 and r.json()["field"] == "max_concurrency"
    a.stop()
    a.start()
    c2 = a.client()
    info = c2.get("/api/v1/endpoints/delays").json()
    assert info["fallback_mode"] is True and info["fallback_reason"] == "drill" and info["version"] == 1
    wait_loaded(c2)  # pre-warmed at start
    c2.close()


def test_alias_endpoint_follows_alias_moves(served):
    _, c = served
    register(c, tags={"build": "second"}, doc=b"rebuild 2")  # version 2, same weights
    assert c.put("/api/v1/models/flights/aliases/champion", json={"version": 1}).status_code == 200
    r = c.put("/api/v1/endpoints/champ", json={"model": "flights", "alias": "champion", "missing_policy": "impute"})
    assert r.status_code == 200 and r.json()["version"] == 1
    c.put("/api/v1/models/flights/aliases/champion", json={"version": 2, "reason": "promote"})
    deadline = time.monotonic() + 15
    while c.get("/api/v1/endpoints/champ").json()["version"] != 2:
        assert time.monotonic() < deadline, "endpoint did not follow the alias"
        time.sleep(0.05)
    rec = records(reference(1))
    assert c.post("/api/v1/endpoints/champ/predict", json={"records": rec}).json()["version"] == 2


def test_eviction_under_memory_budget(agent_factory):
    a = agent_factory("evict", config=FAST + "[serving]\npool_budget = 1\n")  # one byte: one model at a time
    c = a.client()
    register(c, "m1")
    register(c, "m2", tags={"copy": "2"})
    for name, model in (("e1", "m1"), ("e2", "m2")):
        cfg = {"model": model, "version": 1, "prewarm": False, "missing_policy": "impute"}
        assert c.put(f"/api/v1/endpoints/{name}", json=cfg).status_code == 200
    rec = records(reference(1))
    assert c.post("/api/v1/endpoints/e1/predict", json={"records": rec}).status_code == 200
    assert c.post("/api/v1/endpoints/e2/predict", json={"records": rec}).status_code == 200
    loaded = [m["model"] for m in c.get("/api/v1/serving").json()["loaded_models"]]
    assert loaded == ["m2"]  # m1 was evicted, least recently used
    assert c.post("/api/v1/endpoints/e1/predict", json={"records": rec}).status_code == 200  # reloads
    assert [m["model"] for m in c.get("/api/v1/serving").json()["loaded_models"]] == ["m1"]
    fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    assert fams["watchkeeper_model_evictions"].samples[0].value >= 2
    c.close()


def test_prediction_log_keeps_what_it_committed_across_kill9(agent_factory):
    a = agent_factory("crash", config=FAST)
    c = a.client()
    register(c)
    endpoint(c)
    wait_loaded(c)
    recs = records(reference(50))

    async def load():
        async with httpx.AsyncClient(base_url=a.url, headers=a.headers(), timeout=10) as ac:
            for _ in range(20):
                await asyncio.gather(*(ac.post("/api/v1/endpoints/delays/predict", json={"records": recs[:3]})
                                       for _j in range(20)))  # fmt: skip

    asyncio.run(load())
    deadline = time.monotonic() + 10
    while True:
        st = c.get("/api/v1/serving").json()
        if st["predlog_rows_written"] >= 1200:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    committed = st["predlog_rows_written"]
    assert st["predlog_rows_dropped"] == 0
    a.kill()
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"))  # replays the WAL
    n = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    con.close()
    assert n >= committed == 1200
    c.close()


def test_torchscript_model_served_end_to_end(agent_factory):
    pytest.importorskip("torch")
    a = agent_factory("torch", config=FAST)
    c = a.client()
    register(c, "flights", fmt="torchscript")
    endpoint(c)
    df = reference(50)
    r = c.post("/api/v1/endpoints/delays/predict", json={"records": records(df)})
    assert r.status_code == 200, r.text
    assert np.allclose([p["score"] for p in r.json()["predictions"]], df["score"].to_numpy(), atol=1e-5)
    c.close()
