"""Webhook payloads and delivery against a real local HTTP server: retries, backoff, hangs, filters."""

from __future__ import annotations

import re
import time

import pytest

from agent.alerting.webhooks import Notifier, alertmanager_payload, redact_url, rfc3339, slack_payload
from agent.config import WebhookConfig
from agent.schemas import AlertOut
from tests.alerting.receiver import Receiver

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z


def alert(**kw) -> AlertOut:
    base = dict(
        fingerprint="0123456789abcdef", rule="error_rate", kind="error_rate", severity="critical", state="firing",
        endpoint="delays", summary="error rate 12.0% (12 of 100 requests in the last 60 s) (threshold 0.05)",
        value=0.12, threshold=0.05, labels={"model": "flights", "version": "1"}, started_at=T0, firing_at=T0 + 60,
        updated_at=T0 + 60, host="gpu-01",
    )  # fmt: skip
    return AlertOut(**{**base, **kw})


def hook(url: str, **kw) -> WebhookConfig:
    return WebhookConfig.model_validate({"name": "am", "url": url, "timeout": 2, "max_attempts": 4, **kw})


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(*a, **kw) -> Receiver:
        r = Receiver(*a, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_rfc3339():
    assert rfc3339(T0) == "2024-05-01T12:00:00.250Z"


def test_alertmanager_payload_shape():
    p = alertmanager_payload(alert(), "firing", "am", "http://gpu-01:7070/")
    assert p["version"] == "4" and p["status"] == "firing" and p["receiver"] == "am"
    assert p["externalURL"] == "http://gpu-01:7070"
    assert p["groupLabels"] == {"alertname": "error_rate", "endpoint": "delays"}
    assert p["groupKey"] == '{}:{alertname="error_rate", endpoint="delays"}'
    [a] = p["alerts"]
    assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert a["labels"] == {"alertname": "error_rate", "kind": "error_rate", "severity": "critical", "host": "gpu-01",
                           "endpoint": "delays", "model": "flights", "version": "1"}  # fmt: skip
    assert a["annotations"]["summary"].startswith("error rate 12.0%") and a["annotations"]["value"] == "0.12"
    assert a["startsAt"] == "2024-05-01T12:01:00.250Z" and RFC3339.match(a["startsAt"])
    assert a["endsAt"] == "0001-01-01T00:00:00Z"  # firing: no end yet
    assert a["fingerprint"] == "0123456789abcdef"
    assert a["generatorURL"].startswith("http://gpu-01:7070/api/v1/alerting?fingerprint=0123456789abcdef")
    assert p["commonLabels"] == a["labels"] and p["commonAnnotations"] == a["annotations"]
    r = alertmanager_payload(alert(state="resolved", resolved_at=T0 + 300, subject="distance"), "resolved", "am")
    [ra] = r["alerts"]
    assert ra["status"] == "resolved" and ra["endsAt"] == "2024-05-01T12:05:00.250Z" and RFC3339.match(ra["endsAt"])
    assert ra["labels"]["subject"] == "distance" and ra["generatorURL"] == ""


def test_slack_payload_shape():
    p = slack_payload(alert(subject="distance"), "firing")
    assert p["text"].startswith("[FIRING CRITICAL] error_rate on delays (distance) @ gpu-01: error rate 12.0%")
    text = str(p["blocks"])
    for needed in ("*Severity*\\ncritical", "*Endpoint*\\ndelays", "0.12 / 0.05", "*Host*\\ngpu-01", "distance"):
        assert needed in text
    assert all(b["type"] in ("section", "context") for b in p["blocks"])
    assert slack_payload(alert(state="resolved", resolved_at=T0 + 9), "resolved")["text"].startswith("[RESOLVED]")


def test_redacted_urls():
    assert (
        redact_url("https://user:pw@am.example:9093/api/v2/alerts?token=x#f") == "https://am.example:9093/api/v2/alerts"
    )
    assert redact_url("https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX") == (
        "https://hooks.slack.com/services/T0000/B0000/***"
    )


def test_retries_with_backoff_until_delivered(receivers):
    rx = receivers([500, 503, 200])
    n = Notifier([hook(rx.url)], external_url="http://agent:7070", backoff_base=0.1)
    n.start()
    try:
        n.notify(alert(), "firing")
        got = rx.wait_for(3)
        deadline = time.monotonic() + 5
        while n.statuses()[0].sent < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = n.statuses()[0]
        assert st.sent == 1 and st.failed == 0 and st.queued == 0 and st.last_sent_at is not None
        assert st.last_error == "attempt 2/4: HTTP 503"
        assert all(g == got[0] for g in got) and got[0]["alerts"][0]["fingerprint"] == "0123456789abcdef"
        gaps = [b - a for a, b in zip(rx.times, rx.times[1:], strict=False)]
        # full jitter over 0.1 s then 0.2 s: each wait is half to all of its step
        assert 0.045 <= gaps[0] <= 1.5 and 0.095 <= gaps[1] <= 1.5  # (the upper bounds: slack for a busy host)
        assert len(rx.requests) == 3
    finally:
        n.stop()


def test_gives_up_after_max_attempts_and_not_on_client_errors(receivers):
    down = receivers([500])
    bad = receivers([400])
    n = Notifier([hook(down.url, name="down", max_attempts=3), hook(bad.url, name="bad")], backoff_base=0.01)
    n.start()
    try:
        n.notify(alert(), "firing")
        down.wait_for(3)
        bad.wait_for(1)
        deadline = time.monotonic() + 5
        while sum(s.failed for s in n.statuses()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = {s.name: s for s in n.statuses()}
        assert st["down"].failed == 1 and st["down"].sent == 0 and st["down"].last_error == "attempt 3/3: HTTP 500"
        assert st["bad"].failed == 1 and st["bad"].last_error == "attempt 1/4: HTTP 400"
        time.sleep(0.1)
        assert len(down.requests) == 3 and len(bad.requests) == 1  # a 400 is final
    finally:
        n.stop()


def test_a_hanging_webhook_never_blocks_notify_and_its_queue_is_bounded(receivers):
    hang = receivers(hang=True)
    ok = receivers([200])
    n = Notifier([hook(hang.url, name="hang", timeout=0.5, max_attempts=2), hook(ok.url, name="ok", format="slack")],
                 max_queue=50, backoff_base=0.01)  # fmt: skip
    n.start()
    try:
        alerts = [alert(fingerprint=f"{i:016x}") for i in range(500)]
        t0 = time.perf_counter()
        for a in alerts:
            n.notify(a, "firing")
        took = time.perf_counter() - t0
        assert took < 1.5, took  # queued, not sent, by the caller (each hang is 0.5 s: 500 sent would be minutes)
        hang.wait_for(1)
        st = {s.name: s for s in n.statuses()}
        assert st["hang"].queued <= 50
        counters = {c[0]: c for c in n.counters()}
        assert counters["hang"][4] >= 500 - 50 - 1  # the oldest were dropped and counted
        # the other webhook is not held up by the hanging one
        ok.wait_for(50)
        assert "text" in ok.requests[0] and "blocks" in ok.requests[0]
        # each attempt is bounded by the timeout: the hanging receiver sees a retry within ~1 s
        hang.wait_for(2, timeout=3)
    finally:
        t1 = time.perf_counter()
        n.stop(timeout=2)
        assert time.perf_counter() - t1 < 2.5


def test_min_severity_filter(receivers):
    rx = receivers([200])
    n = Notifier([hook(rx.url, min_severity="critical")])
    n.start()
    try:
        n.notify(alert(severity="warning"), "firing")
        n.notify(alert(severity="info"), "firing")
        n.notify(alert(severity="critical"), "resolved")
        [got] = rx.wait_for(1)
        time.sleep(0.2)
        assert len(rx.requests) == 1 and got["status"] == "resolved"
    finally:
        n.stop()
