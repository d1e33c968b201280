"""The timeline's queries on a real DuckDB file with the agent's migrations: series against numpy on the same
rows, the raw/rollup hand-over, jobs lighting up once a `jobs` table exists, XID errors, the agent's own events."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from agent.store.db import open_store
from agent.store.events import record_event
from agent.timeline.series import pick_step
from agent.timeline.service import TimelineError, TimelineService

T0 = 1_800_000_000.0  # a bucket boundary for every step used here


def _ts(x: float) -> str:
    return f"make_timestamp(CAST(CAST({x} AS DOUBLE) * 1000000 AS BIGINT))"


@pytest.fixture
def store(tmp_path):
    con = open_store(tmp_path / "watchkeeper.duckdb").con
    con.execute(
        "INSERT INTO endpoint_events VALUES (1, ?, 'delays', 'config', ?, 'olga')",
        [T0 - 10, json.dumps({"model": "flights", "version": 1})],
    )
    yield con
    con.close()


def test_series_match_numpy_on_the_same_rows(store) -> None:
    rng = np.random.default_rng(5)
    n = 5000
    ts = T0 + np.sort(rng.uniform(0, 3600, n))
    lat = rng.gamma(2.0, 5.0, n)
    fb = rng.random(n) < 0.1
    for t, lat_ms, f in zip(ts, lat, fb, strict=True):
        store.execute(
            f"INSERT INTO predictions VALUES ({_ts(t)}, 'r', 'delays', 'flights', 1, 0, [], [], 0.5, 'x', ?, ?, ?, "
            "'realtime')",
            [float(lat_ms), "fallback" if f else "ok", "model_error" if f else None],
        )
    # Mirrored shadow rows and rows after the first of a request are not what callers waited for.
    for rid, row_idx, status in (("s", 0, "shadow"), ("r", 1, "ok")):
        values = f"({_ts(T0 + 5)}, ?, 'delays', 'flights', 2, ?, [], [], 0.5, 'x', 999, ?, NULL, 'realtime')"
        store.execute(f"INSERT INTO predictions VALUES {values}", [rid, row_idx, status])
    tl = TimelineService(store, "h").timeline("delays", T0, T0 + 3600)
    assert tl.step_s == pick_step(3600) == 10 and tl.buckets[0] == T0 and len(tl.buckets) == 360
    s = {x.name: x.values for x in tl.series}
    idx = ((ts - T0) // 10).astype(int)
    for b in (0, 17, 200, 359):
        m = idx == b
        if not m.any():
            continue
        assert s["requests_per_s"][b] == pytest.approx(m.sum() / 10)
        assert s["p50_ms"][b] == pytest.approx(np.quantile(lat[m], 0.5))
        assert s["p99_ms"][b] == pytest.approx(np.quantile(lat[m], 0.99))
        assert s["error_share"][b] == pytest.approx(fb[m].mean()) and s["fallback_share"][b] == s["error_share"][b]
    assert s["host_cpu_percent"] == [None] * 360  # nothing measured is None, not 0


def test_host_series_use_raw_samples_and_the_rollup_before_them(store) -> None:
    # Rollup for the first 12 h (raw samples there were deleted by retention), raw for the last 12 h.
    store.execute(
        f"INSERT INTO host_rollup_1m (bucket, samples, cpu_percent, memory_percent) "
        f"SELECT {_ts(f'{T0} + i * 60')}, 60, 10, 20 FROM range(1440) t(i)"
    )
    store.execute(
        f"INSERT INTO host_samples (ts, cpu_percent, memory_percent) "
        f"SELECT {_ts(f'{T0} + 43200 + i')}, 70, 80 FROM range(43200) t(i)"
    )
    tl = TimelineService(store, "h").timeline("delays", T0, T0 + 86400)
    cpu = next(x.values for x in tl.series if x.name == "host_cpu_percent")
    half = len(cpu) // 2
    assert set(cpu[:half]) == {10.0} and set(cpu[half:]) == {70.0}  # raw wins where both exist


def test_jobs_on_the_host_and_xids_show(store) -> None:
    svc = TimelineService(store, "h")
    # The jobs table is migration 5's (agent/store/migrations.py); a job that ran on this host.
    store.execute(
        "INSERT INTO jobs VALUES ('j-1', 1, 'train', 'COMPLETED', 'exit code 0', 0, ?, ?, ?, ?, ?, '{}', NULL)",
        [T0 + 50, T0 + 60, T0 + 900, T0 + 900, json.dumps({"submitted_by": "tina"})],
    )

    class Buf:
        rows: list = []

        def append(self, table, columns, rows):
            self.rows += rows

    buf = Buf()
    record_event(buf, "gpu.xid", "GPU 0: 2 XID error(s)", None, {"count": 2}, ts=T0 + 125)
    record_event(buf, "breaker.open", "breaker opened: 20/20 failed", "delays", {}, ts=T0 + 130)
    record_event(buf, "breaker.open", "breaker opened elsewhere", "other", {}, ts=T0 + 131)
    for r in buf.rows:
        store.execute(f"INSERT INTO agent_events VALUES ({_ts(r[0])}, ?, ?, ?, ?)", list(r[1:]))
    tl = svc.timeline("delays", T0, T0 + 3600)
    kinds = [(x.kind, x.actor, x.summary) for x in tl.items]
    assert ("job.start", "tina", "job j-1 started (pipeline train)") in kinds
    assert ("job.end", "tina", "job j-1 ended: COMPLETED (exit code 0)") in kinds
    assert ("breaker.open", "watchkeeper-agent", "breaker opened: 20/20 failed") in kinds
    assert not any("elsewhere" in k[2] for k in kinds)  # another endpoint's breaker
    xid = next(x.values for x in tl.series if x.name == "xid_errors")
    assert xid[12] == 2 and sum(v or 0 for v in xid) == 2
    assert not any("jobs" in n for n in tl.notes)


def test_bad_ranges_are_refused_naming_the_field(store) -> None:
    svc = TimelineService(store, "h")
    with pytest.raises(TimelineError) as e:
        svc.timeline("delays", T0 + 10, T0)
    assert e.value.field == "until"
    with pytest.raises(TimelineError) as e:
        svc.timeline("delays", T0, T0 + 40 * 86400)
    assert e.value.field == "since"
    with pytest.raises(TimelineError) as e:
        svc.timeline("nope", T0, T0 + 60)
    assert e.value.status == 404 and e.value.field == "name"
    assert abs(svc.timeline("delays").until - time.time()) < 5  # default: the last hour, up to now
