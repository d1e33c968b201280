"""Reference data uploaded to a real agent: a column that isn't numbers is a 422 naming it, and a signature
without min/max has its values checked against the reference's observed range (issue 9, items 13 and 15)."""

from __future__ import annotations

import io
import json
import time

import httpx
import polars as pl
import pytest

from tests.serving.test_serving_agent import FALLBACK, FEATURES, FLIGHTS

CONFIG = """flush_interval = 0.2
[monitoring]
window = 2
interval = 0.3
"""


def _meta(open_temp: bool = False) -> dict:
    meta = json.loads((FLIGHTS / "metadata.json").read_text())
    meta.pop("profile")  # fitted from the uploaded reference instead
    if open_temp:
        for f in meta["signature"]["features"]:
            if f["name"] == "temp":
                f.pop("min")
                f.pop("max")
    return meta


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def _register(c: httpx.Client, meta: dict, **data: bytes) -> httpx.Response:
    files = {
        "artifact": ("model.onnx", (FLIGHTS / "model.onnx").read_bytes()),
        "metadata": (None, json.dumps(meta)),
        **{k: (f"{k}.parquet", v) for k, v in data.items()},
    }
    return c.post("/api/v1/models/flights/versions", files=files)


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    return pl.read_parquet(FLIGHTS / "reference.parquet").head(5000)


def test_a_word_in_a_numeric_column_is_a_422_naming_it(agent_factory, reference):
    a = agent_factory("up", config=CONFIG)
    with a.client() as c:
        temps = reference["temp"].cast(pl.String).to_list()
        temps[17] = "warm"
        bad = _parquet(reference.with_columns(pl.Series("temp", temps, dtype=pl.String)))
        r = _register(c, _meta(), reference=bad)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "reference.temp" and "'temp'" in body["detail"] and "'warm'" in body["detail"]
        # the same in the validation data, beside a good reference
        r = _register(c, _meta(), reference=_parquet(reference), validation=bad)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "validation.temp"
        # a score column of words: named too
        words = reference.with_columns(pl.lit("high").alias("score"))
        r = _register(c, _meta(), reference=_parquet(words))
        assert r.status_code == 422 and r.json()["field"] == "reference.score", r.text
        # the agent is alive and nothing was registered; the good upload still works
        assert c.get("/api/v1/models/flights/versions").status_code == 404
        r = _register(c, _meta(), reference=_parquet(reference))
        assert r.status_code == 201, r.text


def test_values_beyond_the_reference_range_are_out_of_range_without_signature_bounds(agent_factory, reference):
    a = agent_factory("rng", config=CONFIG)
    with a.client() as c:
        r = _register(c, _meta(open_temp=True), reference=_parquet(reference))
        assert r.status_code == 201, r.text
        prof = c.get("/api/v1/models/flights/versions/1/profile").json()
        ref_max = next(col["max"] for col in prof["columns"] if col["name"] == "temp")
        assert ref_max == pytest.approx(reference["temp"].max())
        body = {"model": "flights", "version": 1, "fallback": FALLBACK, "missing_policy": "impute"}
        assert c.put("/api/v1/endpoints/delays", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while not c.get("/api/v1/endpoints/delays").json()["loaded"]:
            assert time.monotonic() < deadline, "model never loaded"
            time.sleep(0.05)
        t0 = time.time()
        recs = reference.head(300).with_columns(pl.lit(500.0).alias("temp")).select(FEATURES).to_dicts()
        for i in range(0, len(recs), 100):
            r = c.post("/api/v1/endpoints/delays/predict", json={"records": recs[i : i + 100]})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:
            rep = c.get("/api/v1/endpoints/delays/drift", params={"since": t0 - 5}).json()
            if rep["n_cur"] == len(recs):
                break
            assert time.monotonic() < deadline, rep
            time.sleep(0.2)
        temp = next(f for f in rep["features"] if f["name"] == "temp")
        assert temp["out_of_range_share"] == 1.0 and "out_of_range" in temp["quality_issues"]  # was 0.0
        assert temp["range_source"] == "reference" and temp["range_max"] == ref_max
        dist = next(f for f in rep["features"] if f["name"] == "distance")
        assert dist["range_source"] == "signature" and dist["range_max"] == 4983.0


def test_a_column_filled_since_training_raises_a_data_quality_alert(agent_factory, reference):
    # The reference has pressure on 5 rows of 5000 (99.9 % missing); serving sends it on every row.
    a = agent_factory("fill", config=CONFIG + "\n[alerting]\ninterval = 0.3\n")
    with a.client() as c:
        sparse = reference.with_columns(
            pl.when(pl.int_range(pl.len()) < 5).then(pl.col("pressure")).otherwise(None).alias("pressure")
        )
        assert _register(c, _meta(), reference=_parquet(sparse)).status_code == 201
        body = {"model": "flights", "version": 1, "fallback": FALLBACK, "missing_policy": "impute"}
        assert c.put("/api/v1/endpoints/delays", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while not c.get("/api/v1/endpoints/delays").json()["loaded"]:
            assert time.monotonic() < deadline, "model never loaded"
            time.sleep(0.05)
        t0 = time.time()
        recs = reference.head(300).select(FEATURES).to_dicts()
        for i in range(0, len(recs), 100):
            assert c.post("/api/v1/endpoints/delays/predict", json={"records": recs[i : i + 100]}).status_code == 200
        deadline = time.monotonic() + 30
        while (rep := c.get("/api/v1/endpoints/delays/drift", params={"since": t0 - 5}).json())["n_cur"] < len(recs):
            assert time.monotonic() < deadline, rep
            time.sleep(0.2)
        pressure = next(f for f in rep["features"] if f["name"] == "pressure")
        assert pressure["verdict"] == "quality", pressure  # was "no data"
        assert set(pressure["quality_issues"]) == {"missing_rate", "reference_too_small"}
        now_missing = reference.head(300)["pressure"].null_count() / 300  # the real data's own gaps (~7 %)
        assert pressure["missing_rate_ref"] == pytest.approx(0.999)
        assert pressure["missing_rate_cur"] == pytest.approx(now_missing)

        def alert():
            alerts = c.get("/api/v1/alerting").json()["alerts"]
            # One data-quality alert for the endpoint, naming every feature with issues (grouped).
            return next((x for x in alerts if x["kind"] == "data_quality"
                         and "pressure" in x["labels"].get("features", "").split(",")), None)  # fmt: skip

        deadline = time.monotonic() + 30
        while (found := alert()) is None:
            assert time.monotonic() < deadline, "no data_quality alert for pressure"
            time.sleep(0.2)
        assert f"missing rate fell 99.9% -> {100 * now_missing:.1f}%" in found["summary"], found
        assert "too few reference values: 5" in found["summary"]
