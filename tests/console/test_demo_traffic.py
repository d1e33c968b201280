"""Demo traffic against a real agent: the sample model is registered, endpoints serve, fallbacks show."""

from __future__ import annotations

import time

import httpx

from console.demo_traffic import DemoTraffic


def test_demo_traffic_serves_and_exercises_fallbacks(agent_factory) -> None:
    a = agent_factory("demo-traffic", config="flush_interval = 0.2\n")
    t = DemoTraffic(a.url, a.token, rate_per_s=60)
    assert t.available()
    t.setup()
    t.setup()  # idempotent: a second demo run on the same data dir
    t.start()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            st = httpx.get(f"{a.url}/api/v1/serving", headers=a.headers()).json()
            by = {s["endpoint"]: s for s in st["stats"]}
            if by.get("delays", {}).get("requests", 0) >= 20 and by.get("delays-flaky", {}).get("fallbacks", 0) >= 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not enough traffic: {by}")
    finally:
        t.stop()
    assert t.sent > 0 and t.errors == 0  # fallbacks answer 200: callers never see the faults
    models = httpx.get(f"{a.url}/api/v1/models", headers=a.headers()).json()
    assert [m["name"] for m in models] == ["flights"] and models[0]["versions"] == 1
