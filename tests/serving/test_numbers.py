"""Numbers the model can't take or the API can't answer: values beyond the model input's float32, NaN and
Infinity in endpoint config and feedback, and a model that answers NaN. Each is a 4xx naming the field (or,
for the model, a documented model error), never a 200 with `score: null` beside a definite label."""

from __future__ import annotations

import json

import pytest

from agent.serving.encode import F32_MAX
from tests.serving.test_serving_agent import (
    FALLBACK,
    FAST,
    FEATURES,
    endpoint,
    records,
    reference,
    register,
    wait_loaded,
)

PREDICT = "/api/v1/endpoints/delays/predict"


@pytest.fixture
def served(agent_factory):
    a = agent_factory("num", config=FAST)
    c = a.client()
    register(c)
    endpoint(c, fallback=None)
    wait_loaded(c)
    yield a, c
    c.close()


def _raw(c, path: str, text: str, method: str = "POST"):
    return c.request(method, path, content=text.encode(), headers={"content-type": "application/json"})


def test_values_beyond_float32_are_refused_naming_the_feature(served):
    _, c = served
    rec = records(reference(1))[0]
    for value in (1e308, 3.5e38, -3.5e38, 1e39):
        r = c.post(PREDICT, json={"records": [{**rec, "temp": value}]})
        assert r.status_code == 422, (value, r.text)
        assert r.json()["field"] == "temp"
        assert "float32" in r.json()["detail"][0]["message"]
    # the columnar form, long enough for the vectorised path, says the same
    recs = records(reference(40))
    cols = {k: [x[k] for x in recs] for k in FEATURES}
    cols["temp"][33] = 3.5e38
    r = c.post(PREDICT, json={"columns": cols})
    assert r.status_code == 422 and r.json()["field"] == "temp" and r.json()["detail"][0]["row"] == 33
    # a number JSON can't hold as a double at all is not valid JSON
    r = _raw(c, PREDICT, json.dumps({"records": [rec]}).replace('"temp": ', '"temp": 1e999, "x": ', 1))
    assert r.status_code == 422 and r.json()["field"] == "body"
    # the largest float32 itself is a value the model can take
    r = c.post(PREDICT, json={"records": [{**rec, "temp": F32_MAX}]})
    assert r.status_code == 200 and r.json()["predictions"][0]["score"] is not None


def test_a_model_answering_nan_is_a_model_error_not_a_null_score(served):
    _, c = served
    rec = records(reference(1))[0]
    # both within float32, but the flights MLP overflows on them and answers NaN
    bad = {**rec, "precip": 3.3e38, "pressure": 3.3e38}
    r = c.post(PREDICT, json={"records": [bad]})
    assert r.status_code == 502 and r.json()["error"] == "model_error", r.text
    endpoint(c)  # with a fallback: the fallback, marked
    r = c.post(PREDICT, json={"records": [bad]})
    assert r.status_code == 200 and r.json()["fallback_reason"] == "model_error"
    assert r.json()["predictions"] == [FALLBACK]


def test_non_finite_numbers_in_endpoint_config_are_refused(served):
    _, c = served
    base = {"model": "flights", "version": 1, "missing_policy": "impute"}
    for fallback, field in [
        ('{"score": NaN, "label": "on_time"}', "fallback.score"),
        ('{"score": Infinity, "label": "on_time"}', "fallback.score"),
        ('{"score": 0.2, "scores": [0.1, -Infinity]}', "fallback.scores"),
    ]:
        text = json.dumps(base)[:-1] + f', "fallback": {fallback}}}'
        r = _raw(c, "/api/v1/endpoints/other", text, method="PUT")
        assert r.status_code == 422, (fallback, r.text)
        assert r.json()["field"] == field
    text = json.dumps(base)[:-1] + ', "timeout_ms": Infinity}'
    r = _raw(c, "/api/v1/endpoints/other", text, method="PUT")
    assert r.status_code == 422 and r.json()["field"] == "timeout_ms"
    assert c.get("/api/v1/endpoints/other").status_code == 404  # nothing was created
    assert c.put("/api/v1/endpoints/other", json={**base, "fallback": FALLBACK}).status_code == 200


def test_non_finite_feedback_values_are_refused(served):
    _, c = served
    for item, field in [
        ('{"request_id": "r1", "value": NaN}', "items.0.value"),
        ('{"request_id": "r1", "value": Infinity}', "items.0.value"),
        ('{"request_id": "r1", "label": "delayed", "ts": -Infinity}', "items.0.ts"),
    ]:
        r = _raw(c, "/api/v1/endpoints/delays/feedback", f'{{"items": [{item}]}}')
        assert r.status_code == 422, (item, r.text)
        assert r.json()["field"] == field
    r = c.post("/api/v1/endpoints/delays/feedback", json={"items": [{"request_id": "r1", "value": 12.5}]})
    assert r.status_code == 200
