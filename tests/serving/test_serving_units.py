"""Encoder, breaker, micro-batcher and latency stats: the predict path's parts, without HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.schemas import BreakerConfig, FeatureSpec, OutputSpec, Signature
from agent.serving.batcher import MicroBatcher
from agent.serving.breaker import CircuitBreaker
from agent.serving.encode import VECTOR_MIN_ROWS, Encoder
from agent.serving.errors import ValidationFailed
from agent.serving.stats import BOUNDS_MS, VersionStats, quantile

SIG = Signature(
    features=[
        FeatureSpec(name="distance", dtype="float", min=0, max=5000, impute=1000.0),
        FeatureSpec(name="hour", dtype="int", min=0, max=23, impute=12),
        FeatureSpec(name="weekend", dtype="bool"),
        FeatureSpec(name="origin", dtype="category", categories=["EWR", "JFK", "LGA"], impute="JFK"),
    ],
    output=OutputSpec(kind="binary", labels=["on_time", "delayed"]),
)


def test_encoder_layout_and_one_hot():
    e = Encoder(SIG)
    assert e.width == 6
    enc = e.encode_records([{"distance": 1000.5, "hour": 7, "weekend": True, "origin": "LGA"}])
    assert enc.matrix.dtype == np.float32
    assert enc.matrix.tolist() == [[1000.5, 7.0, 1.0, 0.0, 0.0, 1.0]]
    assert enc.num == [1000.5, 7.0, 1.0] and enc.cat == ["LGA"] and (enc.num_width, enc.cat_width) == (3, 1)


def test_encoder_names_every_bad_field_and_row():
    e = Encoder(SIG)
    with pytest.raises(ValidationFailed) as err:
        e.encode_records(
            [
                {"distance": "far", "hour": 7, "weekend": False, "origin": "JFK"},
                {"distance": 1.0, "hour": 7.5, "weekend": 3, "origin": 5, "colour": "red"},
                {"hour": 1, "weekend": False, "origin": "JFK"},
            ]
        )
    got = {(x["row"], x["field"]) for x in err.value.errors}
    assert got == {(0, "distance"), (1, "hour"), (1, "weekend"), (1, "origin"), (1, "colour"), (2, "distance")}
    msgs = {(x["row"], x["field"]): x["message"] for x in err.value.errors}
    assert msgs[(1, "colour")] == "unknown field" and msgs[(2, "distance")] == "missing value"
    assert "string" in msgs[(0, "distance")]


def test_out_of_range_and_unseen_are_counted_not_rejected():
    e = Encoder(SIG)
    enc = e.encode_records([{"distance": 9000.0, "hour": 30, "weekend": False, "origin": "BOS"}])
    assert enc.quality.out_of_range == {"distance": 1, "hour": 1}
    assert enc.quality.unseen == {"origin": 1}
    assert enc.matrix[0, 3:].tolist() == [0.0, 0.0, 0.0]  # unseen category: all zeros


def test_impute_policy_fills_and_counts_missing():
    e = Encoder(SIG, missing_policy="impute")
    enc = e.encode_records([{"distance": None, "weekend": True, "origin": None, "hour": 3}])
    assert enc.matrix.tolist() == [[1000.0, 3.0, 1.0, 0.0, 1.0, 0.0]]
    assert enc.quality.missing == {"distance": 1, "origin": 1}
    assert enc.num == [None, 3.0, 1.0] and enc.cat == [None]  # the log keeps what was received
    with pytest.raises(ValidationFailed, match="validation"):
        e.encode_records([{"distance": 1.0, "hour": 1, "origin": "EWR"}])  # bool has no impute value


def test_columns_equal_records():
    e = Encoder(SIG)
    recs = [{"distance": float(i), "hour": i, "weekend": i % 2 == 0, "origin": "EWR"} for i in range(5)]
    cols = {k: [r[k] for r in recs] for k in recs[0]}
    assert np.array_equal(e.encode_records(recs).matrix, e.encode_columns(cols).matrix)
    with pytest.raises(ValidationFailed):
        e.encode_columns({"distance": [1.0], "hour": [1, 2]})


def _mixed_rows(n: int, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        recs.append({
            "distance": None if i % 17 == 0 else float(rng.uniform(-100, 6000)),  # missing, out of range
            "hour": int(rng.integers(0, 30)),  # 24..29 out of range
            "weekend": bool(i % 3 == 0),
            "origin": None if i % 11 == 0 else ["EWR", "JFK", "LGA", "BOS"][i % 4],  # missing, unseen BOS
        })  # fmt: skip
    return recs


@pytest.mark.parametrize("n", [VECTOR_MIN_ROWS - 1, VECTOR_MIN_ROWS, 500])
def test_columns_vectorised_equal_records_with_missing_unseen_and_out_of_range(n: int):
    e = Encoder(SIG, missing_policy="impute")
    recs = _mixed_rows(n)
    a = e.encode_records(recs)
    b = e.encode_columns({k: [r[k] for r in recs] for k in recs[0]})
    assert np.array_equal(a.matrix, b.matrix)
    assert a.quality == b.quality and a.quality.missing and a.quality.unseen and a.quality.out_of_range
    assert a.cat == b.cat and (a.num_width, a.cat_width) == (b.num_width, b.cat_width)
    same = [x == y or (x is None and y != y) for x, y in zip(a.num, b.num, strict=True)]  # NaN stands for None
    assert all(same)


def test_columns_with_bad_values_name_the_row_and_field_as_records_do():
    e = Encoder(SIG)  # reject policy: a missing value is an error
    recs = _mixed_rows(100)
    recs[40]["hour"] = "7"
    cols = {k: [r[k] for r in recs] for k in recs[0]}
    with pytest.raises(ValidationFailed) as by_cols:
        e.encode_columns(cols)
    with pytest.raises(ValidationFailed) as by_recs:
        e.encode_records(recs)
    assert by_cols.value.errors == by_recs.value.errors
    assert {"row": 40, "field": "hour", "message": "expected a number, got a string"} in by_cols.value.errors
    cols["extra"] = [1] * 100
    with pytest.raises(ValidationFailed) as unknown:
        Encoder(SIG, missing_policy="impute").encode_columns(cols)
    assert any(err["field"] == "extra" for err in unknown.value.errors)


# --------------------------------------------------------------------------- breaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_on_error_rate_then_half_open_probes_close_it():
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(min_requests=10, error_rate=0.5, open_s=5, half_open_probes=2), clock)
    for i in range(10):
        assert b.allow()
        b.record(ok=i % 2 == 0, latency_ms=1)  # 50 % failures
    assert b.state == "open" and not b.allow()
    clock.t = 4.9
    assert not b.allow()
    clock.t = 5.1
    assert b.allow() and b.state == "half_open"
    assert b.allow()
    assert not b.allow()  # only two probes at a time
    b.record(True, 1)
    b.record(True, 1)
    assert b.state == "closed" and b.allow()


def test_breaker_failed_probe_reopens_and_slow_calls_count():
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(min_requests=4, error_rate=0.5, open_s=1, slow_call_ms=100), clock)
    for _ in range(4):
        b.allow()
        b.record(True, 500)  # slow counts as failure
    assert b.state == "open"
    clock.t = 2
    assert b.allow()
    b.record(False, 1)
    assert b.state == "open" and b.opened_count == 2


def test_breaker_window_forgets_old_failures():
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(min_requests=4, error_rate=0.5, window_s=10), clock)
    for _ in range(3):
        b.record(False, 1)
    clock.t = 20
    for _ in range(4):
        b.record(True, 1)
    assert b.state == "closed"


# --------------------------------------------------------------------------- batcher


def test_batcher_groups_concurrent_rows_and_splits_answers():
    calls: list[int] = []
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            calls.append(len(x))
        time.sleep(0.01)
        return x[:, :1] * 2

    async def main():
        ex = ThreadPoolExecutor(2)
        b = MicroBatcher(run, ex, max_rows=16, max_wait_ms=20)
        xs = [np.full((i % 3 + 1, 2), float(i), dtype=np.float32) for i in range(12)]
        outs = await asyncio.gather(*(b.submit(x) for x in xs))
        ex.shutdown()
        return xs, outs

    xs, outs = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        assert out.shape == (len(x), 1) and np.all(out == x[0, 0] * 2)
    assert sum(calls) == sum(len(x) for x in xs)
    assert len(calls) < 12 and max(calls) <= 16 + 3  # batched, bounded by max_rows


def test_batcher_single_caller_waits_at_most_max_wait():
    async def main():
        ex = ThreadPoolExecutor(1)
        b = MicroBatcher(lambda x: x, ex, max_rows=64, max_wait_ms=30)
        t0 = time.perf_counter()
        await b.submit(np.zeros((1, 1), dtype=np.float32))
        ex.shutdown()
        return time.perf_counter() - t0

    assert 0.025 <= asyncio.run(main()) < 0.5


def test_batcher_propagates_model_errors_to_every_caller():
    def run(x):
        raise ValueError("bad weights")

    async def main():
        ex = ThreadPoolExecutor(1)
        b = MicroBatcher(run, ex, max_rows=4, max_wait_ms=5)
        res = await asyncio.gather(*(b.submit(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True)
        ex.shutdown()
        return res

    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))


# --------------------------------------------------------------------------- stats


def test_quantiles_within_bucket_error():
    rng = np.random.default_rng(0)
    lat = rng.lognormal(mean=0.0, sigma=1.0, size=20000)  # ms
    s = VersionStats("e", "m", 1)
    for v in lat:
        s.record(float(v), 1, 200, None, False)
    snap = s.snapshot()
    for q, got in ((0.5, snap.latency.p50_ms), (0.95, snap.latency.p95_ms), (0.99, snap.latency.p99_ms)):
        exact = float(np.quantile(lat, q))
        assert abs(got - exact) / exact < 0.1
    assert snap.requests == 20000 and snap.latency.count == 20000
    assert quantile([0] * (len(BOUNDS_MS) + 1), 0.5) is None


def test_stats_count_fallbacks_and_errors():
    s = VersionStats("e", "m", 1)
    s.record(1.0, 2, 200, None, False)
    s.record(1.0, 1, 200, "breaker_open", False)
    s.record(1.0, 1, 504, None, True)
    snap = s.snapshot()
    assert snap.rows == 4 and snap.fallbacks == 1 and snap.errors == 1
    assert snap.fallbacks_by_reason == {"breaker_open": 1}
    assert snap.window_fallback_rate == pytest.approx(1 / 3)
    assert snap.window_fallbacks == 1 and snap.window_errors == 1


def test_breaker_reports_since_and_reason():
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(min_requests=2, error_rate=0.5), clock)
    t0 = b.since
    b.record(False, 1)
    b.record(False, 1)
    assert b.state == "open" and b.since >= t0 and "2/2 calls failed" in b.last_reason
