"""Rollouts driven over real HTTP against real agent processes serving the shipped flights model.

Version 1 is the shipped model; version 2 the same weights under a new digest (a rebuild). Where a test
needs a candidate that answers differently, version 2 is the shipped model with the last layer's bias
raised by 1.5 (built with `onnx`), a real model whose scores drift and whose labels disagree.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time

import httpx
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from agent.rollouts.abtest import two_proportion
from tests.serving.test_serving_agent import FEATURES, FLIGHTS, endpoint, records, reference, register, wait_loaded

FAST = "flush_interval = 0.2\n"
LENIENT = {"window_s": 2, "min_requests": 10, "max_p99_ratio_vs_stable": None}
PREDICT = "/api/v1/endpoints/delays/predict"


# --------------------------------------------------------------------------- helpers


def tokens(c: httpx.Client, **roles: str) -> dict[str, str]:
    """Tokens by name, e.g. tokens(c, alice="approver"): {"alice": "wk_..."}."""
    out = {}
    for name, role in roles.items():
        r = c.post("/api/v1/tokens", json={"name": name, "role": role})
        assert r.status_code == 201, r.text
        out[name] = r.json()["token"]
    return out


def start(c: httpx.Client, expect: int = 201, **body) -> dict:
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, **body})
    assert r.status_code == expect, r.text
    return r.json()


def get(c: httpx.Client, rid: str) -> dict:
    r = c.get(f"/api/v1/rollouts/{rid}")
    assert r.status_code == 200, r.text
    return r.json()


def act(c: httpx.Client, rid: str, action: str, **body) -> httpx.Response:
    return c.post(f"/api/v1/rollouts/{rid}/{action}", json=body)


def wait_for(fn, timeout: float = 15.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


def versions(a, n: int, rec: list[dict], connections: int = 8) -> list[int]:
    """Send n predictions over `connections` keep-alive connections; the model version that answered each.

    A bare HTTP/1.1 client (httpx costs ~4 ms of CPU a request, which on a small machine would make 10,000
    requests take a minute); every answer must be a 200 with the version header."""
    body = json.dumps({"records": rec}).encode()
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {a.token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()

    async def conn(count: int, out: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        try:
            for _ in range(count):
                writer.write(head + body)
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                assert lines[0].split()[1] == "200", lines[0]
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
                await reader.readexactly(int(headers["content-length"]))
                out.append(int(headers["x-watchkeeper-model-version"].rsplit(":", 1)[1]))
        finally:
            writer.close()

    async def run() -> list[int]:
        out: list[int] = []
        per = [n // connections + (i < n % connections) for i in range(connections)]
        await asyncio.gather(*(conn(k, out) for k in per if k))
        return out

    return asyncio.run(run())


def register_shifted(c: httpx.Client, shift: float = 1.5) -> dict:
    """The flights model with its output bias raised: a real candidate that answers differently."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    m = onnx.load(str(FLIGHTS / "model.onnx"))
    for init in m.graph.initializer:
        if init.name == "net.4.bias":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), init.name))
    meta = json.loads((FLIGHTS / "metadata.json").read_text())
    meta["lineage"] = {**meta["lineage"], "build_id": "shifted-bias", "parent_version": 1}
    r = c.post(
        "/api/v1/models/flights/versions",
        files={"artifact": ("model.onnx", m.SerializeToString()), "metadata": (None, json.dumps(meta))},
    )
    assert r.status_code == 201, r.text
    return r.json()


def loaded_at(c: httpx.Client, version: int) -> float | None:
    for m in c.get("/api/v1/serving").json()["loaded_models"]:
        if m["model"] == "flights" and m["version"] == version:
            return m["loaded_at"]
    return None


def metric(c: httpx.Client, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(c.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def two_versions(agent_factory):
    """An agent serving `delays` from flights:1, with flights:2 (same weights, new digest) registered."""
    a = agent_factory("ro", config=FAST)
    c = a.client()
    register(c)
    register(c, tags={"build": "second"}, doc=b"rebuild 2")
    endpoint(c)
    wait_loaded(c)
    yield a, c
    c.close()


# --------------------------------------------------------------------------- tests


def test_canary_split_is_measured_and_promotion_survives_restart(two_versions):
    a, c = two_versions
    t = tokens(c, alice="approver")
    ro = start(c, strategy="canary", guards=LENIENT,
               steps=[{"set_weight": 25}, {"approval": True}, {"set_weight": 100}])  # fmt: skip
    assert ro["state"] == "awaiting_approval" and ro["weight"] == 25 and ro["awaiting_approval_for"] == 1
    assert ro["candidate_loaded"] is True and ro["candidate_lineage"]["build_id"] == "sample-flights-a68dcd7a7324"
    # 10,000 requests at 25 %: binomial sd is 0.43 points; +-1.5 points is 3.5 sd.
    got = versions(a, 10_000, records(reference(1)))
    share = got.count(2) / len(got)
    assert set(got) == {1, 2} and abs(share - 0.25) <= 0.015, share
    assert metric(c, "watchkeeper_rollout_candidate_weight", rollout=ro["id"]) == 25
    with a.client(t["alice"]) as alice:
        r = act(alice, ro["id"], "approve", step_index=1, reason="canary looks fine")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "promoted" and r.json()["weight"] == 100
    assert c.get("/api/v1/endpoints/delays").json()["version"] == 2
    assert set(versions(a, 200, records(reference(1)))) == {2}
    a.stop()
    a.start()
    with a.client() as c2:
        assert c2.get("/api/v1/endpoints/delays").json()["version"] == 2
        assert get(c2, ro["id"])["state"] == "promoted"
        wait_loaded(c2)
    assert set(versions(a, 50, records(reference(1)))) == {2}


def test_two_person_rule_and_stale_approvals_over_the_api(two_versions):
    a, c = two_versions  # c is the admin: an operator and an approver
    t = tokens(c, vera="viewer", olga="operator", alice="approver", bob="approver")
    ro = start(c, strategy="canary", guards=LENIENT, reason="ship v2",
               steps=[{"set_weight": 10}, {"approval": True}, {"set_weight": 50}, {"approval": True},
                      {"set_weight": 100}])  # fmt: skip
    rid = ro["id"]
    clients = {name: a.client(tok) for name, tok in t.items()}
    try:
        r = act(c, rid, "approve", step_index=1)  # the author, although an admin
        assert r.status_code == 403 and r.json()["error"] == "two_person_rule", r.text
        assert act(c, rid, "promote").status_code == 403
        for who in ("vera", "olga"):  # neither may approve
            r = act(clients[who], rid, "approve", step_index=1)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        r = act(clients["alice"], rid, "approve", step_index=3)  # not the step that waits
        assert r.status_code == 409 and r.json()["error"] == "stale" and r.json()["field"] == "step_index"
        r = act(clients["alice"], rid, "approve")
        assert r.status_code == 422 and r.json()["field"] == "step_index"
        r = act(clients["alice"], rid, "approve", step_index=1, reason="looks good")
        assert r.status_code == 200 and r.json()["awaiting_approval_for"] == 3 and r.json()["weight"] == 50
        r = act(clients["bob"], rid, "approve", step_index=1)  # that step has moved on
        assert r.status_code == 409 and r.json()["error"] == "stale"
        assert act(clients["alice"], rid, "pause").status_code == 403  # approvers don't operate
        assert act(clients["olga"], rid, "pause").json()["state"] == "paused"
        r = act(clients["bob"], rid, "approve", step_index=3)  # paused: nothing awaits approval
        assert r.status_code == 409 and r.json()["error"] == "stale"
        assert act(clients["olga"], rid, "resume").json()["state"] == "awaiting_approval"
        r = act(clients["bob"], rid, "approve", step_index=3)
        assert r.status_code == 200 and r.json()["state"] == "promoted"
        assert [(x["principal"], x["step_index"]) for x in r.json()["approvals"]] == [("alice", 1), ("bob", 3)]
        assert act(clients["olga"], rid, "abort").status_code == 409  # it has ended
        audit = [e for e in c.get("/api/v1/audit", params={"limit": 1000}).json() if e["action"].startswith("rollout.")]
        assert [(e["action"], e["principal"]) for e in audit] == [
            ("rollout.start", "admin"), ("rollout.approve", "alice"), ("rollout.pause", "olga"),
            ("rollout.resume", "olga"), ("rollout.approve", "bob"),
        ]  # fmt: skip
        first = audit[1]
        assert first["detail"]["approved_step"] == 1 and first["detail"]["reason"] == "looks good"
        assert first["client"].startswith("127.0.0.1:") and first["detail"]["host"] == "ro"
        assert c.get("/api/v1/audit/verify").json()["ok"] is True
        # Without the two-person rule the author may approve its own steps.
        ro2 = start(c, candidate_version=1, strategy="canary", guards=LENIENT, two_person_rule=False,
                    steps=[{"set_weight": 10}, {"approval": True}])  # fmt: skip
        assert act(c, ro2["id"], "approve", step_index=1).json()["state"] == "promoted"
    finally:
        for cl in clients.values():
            cl.close()


@pytest.mark.parametrize("fault", ["errors", "slow", "drift"])
def test_a_bad_candidate_is_rolled_back_within_its_guard_window(agent_factory, fault):
    a = agent_factory("bad", config=FAST)
    c = a.client()
    register(c)
    guards = {"window_s": 2, "min_requests": 10, "max_p99_ratio_vs_stable": None, "max_prediction_drift": None}
    if fault == "drift":
        register_shifted(c)
        guards["max_prediction_drift"] = 0.2
        endpoint(c)
    else:
        register(c, doc=b"v2")
        faults = {"version": 2, "error_rate": 1.0} if fault == "errors" else {"version": 2, "delay_ms": 40}
        if fault == "slow":
            guards["p99_slo_ms"] = 20
        endpoint(c, faults=faults)
    wait_loaded(c)
    ro = start(c, strategy="canary", guards=guards, steps=[{"set_weight": 50}, {"approval": True}, {"set_weight": 100}])
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        rec = records(reference(3))
        with a.client() as cl:
            while not stop.is_set():
                statuses.append(cl.post(PREDICT, json={"records": rec}).status_code)

    t0 = time.time()
    th = threading.Thread(target=traffic)
    th.start()
    try:
        done = wait_for(lambda: (r := get(c, ro["id"]))["state"] == "aborted" and r, timeout=20)
    finally:
        stop.set()
        th.join()
    guard = {"errors": "error_rate", "slow": "p99_ms", "drift": "prediction_drift"}[fault]
    assert done["end_reason"].startswith(f"guard {guard} breached"), done["end_reason"]
    assert done["weight"] == 0 and done["ended_at"] - t0 < 2 + 3.0  # window 2 s, plus the first requests
    assert set(statuses) == {200}  # callers never saw the sick candidate fail
    assert set(versions(a, 100, records(reference(1)))) == {1}
    alerts = c.get("/api/v1/alerting").json()["alerts"]
    mine = [x for x in alerts if x["kind"] == "rollout_guard"]
    assert mine and mine[0]["state"] == "firing" and mine[0]["severity"] == "critical"
    assert mine[0]["endpoint"] == "delays" and ro["id"] in mine[0]["summary"]
    aborts = [e for e in c.get("/api/v1/audit").json() if e["action"] == "rollout.abort"]
    assert len(aborts) == 1 and aborts[0]["principal"] == "watchkeeper-agent"
    assert aborts[0]["detail"]["automatic"] is True and aborts[0]["detail"]["guard"]["name"] == guard
    assert metric(c, "watchkeeper_rollout_state", rollout=ro["id"], state="aborted") == 1
    c.close()


def test_ab_assignment_is_sticky_and_the_lift_is_tested(two_versions):
    a, c = two_versions
    ro = start(c, strategy="ab", ab_min_samples=50, guards=LENIENT)
    assert ro["weight"] == 50 and ro["awaiting_approval_for"] == 1
    rec = records(reference(1))
    seen: dict[str, set[int]] = {}
    answered: list[tuple[str, int]] = []
    with a.client() as cl:
        for k in range(200):
            for j in range(3):
                rid = f"ab-{k}-{j}"
                r = cl.post(PREDICT, json={"records": rec}, headers={"X-Caller-Key": f"user-{k}", "X-Request-Id": rid})
                seen.setdefault(f"user-{k}", set()).add(r.json()["version"])
                answered.append((rid, r.json()["version"]))
    assert all(len(v) == 1 for v in seen.values())  # every caller kept its version
    on_candidate = sum(v == {2} for v in seen.values()) / len(seen)
    assert 0.35 <= on_candidate <= 0.65, on_candidate  # 200 callers, sd 3.5 points
    assert wait_for(lambda: get(c, ro["id"])["ab"])["status"] == "not_enough_data"
    # Outcomes posted back: the candidate's callers are delayed more often.
    rng = random.Random(7)
    items, x = [], {1: [0, 0], 2: [0, 0]}
    for rid, v in answered:
        hit = rng.random() < (0.45 if v == 2 else 0.25)
        x[v][0] += hit
        x[v][1] += 1
        items.append({"request_id": rid, "row_idx": 0, "label": "delayed" if hit else "on_time"})
    assert c.post("/api/v1/endpoints/delays/feedback", json={"items": items}).status_code == 200
    ab = wait_for(lambda: (r := get(c, ro["id"])["ab"]) and r["candidate_n"] + r["stable_n"] == len(items) and r)
    assert (ab["stable_n"], ab["candidate_n"]) == (x[1][1], x[2][1]) and ab["test"] == "two-proportion z"
    _, lo, hi, p = two_proportion(x[1][0], x[1][1], x[2][0], x[2][1])
    assert ab["lift"] == pytest.approx(x[2][0] / x[2][1] - x[1][0] / x[1][1], abs=1e-12)
    assert (ab["ci_low"], ab["ci_high"], ab["p_value"]) == pytest.approx((lo, hi, p), abs=1e-12)
    table = [[x[1][0], x[1][1] - x[1][0]], [x[2][0], x[2][1] - x[2][0]]]
    assert ab["p_value"] == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, abs=1e-9)
    assert ab["status"] == "candidate_better" and ab["p_value"] < 0.05 and lo > 0


def test_shadow_traffic_never_changes_a_response(agent_factory):
    a = agent_factory("shadow", config=FAST)
    c = a.client()
    register(c)
    register_shifted(c)  # answers differently: a leak would show
    endpoint(c)
    wait_loaded(c)
    batches = [records(reference(200).slice(5 * i, 5)) for i in range(40)]
    before = [c.post(PREDICT, json={"records": b}).json() for b in batches]
    guards = {**LENIENT, "max_shadow_disagreement": 1.0, "max_prediction_drift": None}  # measured, never breached
    ro = start(c, strategy="shadow", guards=guards, steps=[{"shadow": 1.0}, {"approval": True}])
    assert ro["shadow"] == 1.0 and ro["weight"] == 0
    during = [c.post(PREDICT, json={"records": b}, headers={"X-Request-Id": f"sh-{i}"}) for i, b in enumerate(batches)]
    for b0, r in zip(before, during, strict=True):
        assert r.headers["x-watchkeeper-model-version"] == "flights:1"
        assert r.json()["predictions"] == b0["predictions"] and r.json()["version"] == 1

    # ...and the candidate did answer every mirrored request, differently: the shadow saw it, callers did not.
    def shadow_rows() -> list[dict] | None:  # mirrored after the answers, in batches: wait for the last
        logged = c.get("/api/v1/endpoints/delays/predictions", params={"limit": 1000}).json()
        return logged if sum(p["status"] == "shadow" for p in logged) >= 200 else None

    logged = wait_for(shadow_rows, every=0.1)
    shadow = {(p["request_id"], p["row_idx"]): p for p in logged if p["status"] == "shadow"}
    served = {(p["request_id"], p["row_idx"]): p for p in logged if p["request_id"].startswith("sh-")
              and p["status"] == "ok"}  # fmt: skip
    assert len(shadow) == len(served) == 200 and {p["version"] for p in shadow.values()} == {2}
    assert all(shadow[k]["score"] > served[k]["score"] for k in served)
    dis = wait_for(lambda: next((g for g in get(c, ro["id"])["guards"] if g["name"] == "shadow_disagreement"
                                 and g["candidate"] is not None), None))  # fmt: skip
    flipped = sum(shadow[k]["label"] != served[k]["label"] for k in served) / len(served)
    assert dis["candidate"] == pytest.approx(flipped) and flipped > 0
    c.close()


def test_kill9_mid_rollout_restores_weight_and_pending_approval(two_versions):
    a, c = two_versions
    t = tokens(c, alice="approver")
    plan = [{"set_weight": 25}, {"approval": True}, {"set_weight": 100}]
    ro = start(c, strategy="canary", guards=LENIENT, steps=plan)
    versions(a, 200, records(reference(1)))
    a.kill()
    a.start()
    with a.client() as c2:
        # Traffic right away: the candidate takes its share only once it has loaded again; nothing fails.
        assert set(versions(a, 100, records(reference(1)))) <= {1, 2}
        back = get(c2, ro["id"])
        assert back["state"] == "awaiting_approval" and back["weight"] == 25 and back["awaiting_approval_for"] == 1
        assert back["approvals"] == [] and back["step_index"] == 1
        wait_for(lambda: get(c2, ro["id"])["candidate_loaded"])
        got = versions(a, 2000, records(reference(1)))
        assert abs(got.count(2) / len(got) - 0.25) <= 0.04  # 2,000 requests: sd ~1 point
        with a.client(t["alice"]) as alice:
            r = act(alice, ro["id"], "approve", step_index=1)
        assert r.status_code == 200 and r.json()["state"] == "promoted"


def test_rollback_is_instant_and_never_reloads_stable(two_versions):
    a, c = two_versions
    t = tokens(c, olga="operator", alice="approver")
    v1_loaded = loaded_at(c, 1)
    with a.client(t["olga"]) as olga, a.client(t["alice"]) as alice:
        ro = start(olga, strategy="canary", guards=LENIENT,
                   steps=[{"set_weight": 25}, {"approval": True}, {"set_weight": 100}])  # fmt: skip
        versions(a, 100, records(reference(1)))
        t0 = time.perf_counter()
        r = act(olga, ro["id"], "rollback", reason="pager")  # no approval needed
        assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
        assert time.perf_counter() - t0 < 3.0  # no reload: a commit's wait at most (a slow CI disk)
        assert set(versions(a, 200, records(reference(1)))) == {1}
        assert loaded_at(c, 1) == v1_loaded  # stable served throughout: never reloaded
        # Blue/green: one switch on approval, the old version kept warm, then an instant rollback.
        bg = start(olga, strategy="bluegreen", guards=LENIENT, keep_stable_warm_s=60,
                   steps=[{"approval": True}, {"set_weight": 100}])  # fmt: skip
        assert bg["weight"] == 0 and bg["candidate_loaded"] is True
        assert act(alice, bg["id"], "approve", step_index=0).json()["state"] == "promoted"
        assert set(versions(a, 50, records(reference(1)))) == {2}
        assert loaded_at(c, 1) == v1_loaded  # kept warm
        t0 = time.perf_counter()
        r = act(olga, bg["id"], "rollback", reason="revenue dip")
        assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
        assert time.perf_counter() - t0 < 3.0  # no reload: a commit's wait at most (a slow CI disk)
        assert c.get("/api/v1/endpoints/delays").json()["version"] == 1
        assert set(versions(a, 50, records(reference(1)))) == {1}
        assert loaded_at(c, 1) == v1_loaded
        assert act(olga, bg["id"], "rollback").status_code == 409  # nothing left to roll back


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def test_gate_refuses_a_candidate_that_is_not_better_and_plans_are_checked(two_versions):
    _, c = two_versions
    data = reference(2000).select([*FEATURES, pl.col("delayed").alias("label")])
    r = c.post("/api/v1/datasets/flights-val/versions", files={"data": ("val.parquet", _parquet(data))})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["version"] == 1 and ds["rows"] == 2000 and "label" in ds["columns"]
    r = c.post("/api/v1/datasets/flights-val/versions", files={"data": ("val.parquet", _parquet(data))})
    assert r.status_code == 409 and r.json()["error"] == "duplicate_dataset"
    r = c.post("/api/v1/datasets/flights-val/versions", files={"data": ("x.parquet", b"not parquet")})
    assert r.status_code == 422 and r.json()["field"] == "data"
    assert [d["name"] for d in c.get("/api/v1/datasets").json()] == ["flights-val"]
    # Plans and gates that can't run are refused up front, naming the part.
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, "strategy": "canary",
               "steps": [{"set_weight": 5}, {"set_weight": 10, "approval": True}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "steps[1]"
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, "strategy": "bluegreen",
               "steps": [{"set_weight": 30}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "steps[0]"
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, "strategy": "canary",
               "gate": [{"metric": "auc", "threshold": 0.6}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "validation_dataset"
    assert c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 9, "strategy": "canary"}
                  ).json()["field"] == "candidate_version"  # fmt: skip
    # The identical rebuild is not 1 % better on AUC: refused, recorded as rejected, audited.
    gate = [{"metric": "accuracy", "threshold": 0.5}, {"metric": "auc", "min_relative_change": 0.01},
            {"metric": "log_loss", "threshold": 5.0}]  # fmt: skip
    r = c.post(
        "/api/v1/endpoints/delays/rollouts",
        json={"candidate_version": 2, "strategy": "canary", "gate": gate, "validation_dataset": "flights-val"},
    )
    assert r.status_code == 422 and r.json()["error"] == "gate_failed" and r.json()["field"] == "gate", r.text
    res = r.json()["detail"]
    assert res["passed"] is False and res["dataset"] == "flights-val:1" and res["dataset_digest"] == ds["digest"]
    by = {m["metric"]: m for m in res["metrics"]}
    assert by["accuracy"]["passed"] and by["log_loss"]["passed"] and not by["auc"]["passed"]
    assert by["auc"]["stable"] == by["auc"]["candidate"] > 0.6
    (rejected,) = c.get("/api/v1/rollouts").json()
    assert rejected["state"] == "rejected" and rejected["gate"]["passed"] is False
    assert any(e["action"] == "rollout.rejected" for e in c.get("/api/v1/audit").json())
    # With thresholds it meets, it starts; a second rollout on the endpoint is a conflict.
    ok = start(c, strategy="canary", gate=gate[:1], validation_dataset="flights-val", guards=LENIENT)
    assert ok["gate"]["passed"] is True and ok["gate"]["rows"] == 2000 and ok["weight"] == 5
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, "strategy": "canary"})
    assert r.status_code == 409 and ok["id"] in r.json()["detail"]
    assert [x["id"] for x in c.get("/api/v1/rollouts", params={"active": "true"}).json()] == [ok["id"]]
