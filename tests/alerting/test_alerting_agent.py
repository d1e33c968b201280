"""A real agent: a failing endpoint raises an error_rate alert that reaches a webhook receiver in
Alertmanager's format, is listed, acked (audited) and resolves when the model heals."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.alerting.receiver import Receiver
from tests.serving.test_serving_agent import endpoint, records, reference, register, wait_loaded

CONFIG = """
flush_interval = 0.2

[alerting]
interval = 0.5

[[alerting.rules]]
name = "errors"
kind = "error_rate"
threshold = 0.5
for = 0
severity = "critical"

[[alerting.webhooks]]
name = "am"
url = "{url}"
format = "alertmanager"
timeout = 2
max_attempts = 3
"""


def wait_until(fn, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def metric(c, name: str, **labels) -> float | None:
    for fam in text_string_to_metric_families(c.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_error_rate_alert_end_to_end(agent_factory):
    rx = Receiver([200])
    try:
        a = agent_factory("alerts", config=CONFIG.format(url=rx.url))
        c = a.client()
        register(c)
        endpoint(c, fallback=None, faults={"error_rate": 1.0}, breaker={"enabled": False})
        wait_loaded(c)
        rec = records(reference(1))
        codes = {c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).status_code for _ in range(15)}
        assert codes == {502}

        # firing, delivered to the receiver as an Alertmanager webhook
        firing = wait_until(lambda: [r for r in rx.requests if r.get("status") == "firing"])[0]
        assert firing["version"] == "4" and firing["receiver"] == "am"
        [al] = firing["alerts"]
        assert al["labels"]["alertname"] == "errors" and al["labels"]["severity"] == "critical"
        assert al["labels"]["endpoint"] == "delays" and al["labels"]["host"] == "alerts"
        assert al["endsAt"] == "0001-01-01T00:00:00Z" and al["startsAt"].endswith("Z")
        assert firing["externalURL"] == a.url and "error rate 100.0%" in al["annotations"]["summary"]
        fp = al["fingerprint"]

        # listed with the rules and the webhook's health
        body = c.get("/api/v1/alerting", params={"state": "firing"}).json()
        [listed] = body["alerts"]
        assert listed["fingerprint"] == fp and listed["rule"] == "errors" and listed["value"] == 1.0
        assert [r["name"] for r in body["rules"]] == ["errors"]
        assert body["webhooks"][0]["name"] == "am" and body["webhooks"][0]["url"] == rx.url
        assert wait_until(lambda: c.get("/api/v1/alerting").json()["webhooks"][0]["sent"] >= 1)
        assert c.get("/api/v1/alerting", params={"state": "bogus"}).json()["field"] == "state"
        assert metric(c, "watchkeeper_alerts_firing", severity="critical") == 1

        # ack: operator role, audited; unknown fingerprints and bad bodies are refused
        viewer = c.post("/api/v1/tokens", json={"name": "watcher", "role": "viewer"}).json()["token"]
        with a.client(token=viewer) as v:
            assert v.get("/api/v1/alerting").status_code == 200
            assert v.post(f"/api/v1/alerts/{fp}/ack", json={}).status_code == 403
        r = c.post("/api/v1/alerts/ffffffffffffffff/ack", json={"comment": "x"})
        assert r.status_code == 404 and r.json()["field"] == "fingerprint"
        r = c.post(f"/api/v1/alerts/{fp}/silence", json={"duration_s": 0})
        assert r.status_code == 422 and r.json()["field"] == "duration_s"
        r = c.post(f"/api/v1/alerts/{fp}/ack", json={"comment": "on it"})
        assert r.status_code == 200, r.text
        assert r.json()["acked_by"] == "admin" and r.json()["acked_at"] is not None
        audit = [e for e in c.get("/api/v1/audit").json() if e["action"] == "alert.ack"]
        assert len(audit) == 1 and audit[0]["target"] == f"alert:{fp}" and audit[0]["detail"]["comment"] == "on it"
        assert audit[0]["principal"] == "admin"
        assert c.get("/api/v1/audit/verify").json()["ok"] is True

        # the model heals: the error rate falls under the threshold and the alert resolves
        endpoint(c, fallback=None, breaker={"enabled": False})
        for _ in range(30):
            assert c.post("/api/v1/endpoints/delays/predict", json={"records": rec}).status_code == 200
        resolved = wait_until(lambda: [r for r in rx.requests if r.get("status") == "resolved"])[0]
        assert resolved["alerts"][0]["fingerprint"] == fp and resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
        [done] = c.get("/api/v1/alerting", params={"state": "resolved"}).json()["alerts"]
        assert done["fingerprint"] == fp and done["resolved_at"] is not None and done["acked_by"] == "admin"
        assert metric(c, "watchkeeper_alerts_firing", severity="critical") == 0
        assert wait_until(lambda: metric(c, "watchkeeper_webhook_sent_total", webhook="am") == 2)
        assert len([r for r in rx.requests if r.get("status") == "firing"]) == 1  # notified once
        c.close()
        assert "alert evaluation failed" not in a.log()
    finally:
        rx.close()
