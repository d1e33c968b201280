"""The monitor: cuts the prediction log into windows, histograms them, scores drift, joins labels.

Runs on its own thread, every `monitoring.interval` seconds:

1. For each endpoint, windows of `monitoring.window` seconds (aligned to the epoch) that have closed
   (and whose rows the store writer has had time to flush) and not been processed are read from the
   `predictions` table in record batches, per model version, into a `WindowHistogram` over that
   version's reference profile bins. Memory is bounded by the batch, not the window.
2. Each window is compared with the reference (serving skew) and with the previous window of the same
   version (drift); the histogram goes to `drift_windows` and the per-feature scores to `drift_scores`
   in one writer call. Drift over any time range merges stored histograms and never re-reads rows.
3. Labels (`feedback`) join to predictions on (request_id, row_idx) whenever quality is asked for or
   alert signals are gathered: model quality per version and window, and label drift.

The API's answers are in agent/monitoring/reports.py (drift) and labels.py (labels, quality, alert
signals). Everything they return is built from wire types in agent/schemas/. numpy and the statistics
modules load on the first window, so an agent that serves nothing stays small.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING

from agent.config import MonitoringConfig
from agent.monitoring.common import (
    MonitorError,
    _clean,
    _dumps,
    _finite,
    _frame,
    _Latest,
    _load_statistics,
    _loads,
    _range_source,
    lazy_statistics,
)
from agent.monitoring.labels import LabelsAndSignals
from agent.monitoring.reports import DriftReports
from agent.schemas import FeatureDriftOut, ModelVersion, QualityReport
from agent.store.writer import StoreWriter

if TYPE_CHECKING:
    import duckdb

    from agent.monitoring.drift import DriftThresholds, compare
    from agent.monitoring.profile import ReferenceProfile
    from agent.monitoring.window import WindowHistogram
    from agent.registry.store import Registry
    from agent.serving.service import ServingService


log = logging.getLogger("watchkeeper.monitor")

__all__ = ["MonitorError", "MonitorService", "_clean", "_load_statistics", "_range_source"]

BATCH_ROWS = 65_536
MAX_WINDOWS_PER_TICK = 240  # catching up after a restart is spread over ticks, never one long stall


class MonitorService(DriftReports, LabelsAndSignals):
    def __init__(
        self,
        cfg: MonitoringConfig,
        con: duckdb.DuckDBPyConnection,
        writer: StoreWriter,
        registry: Registry,
        serving: ServingService,
        grace_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self._con = con
        self._writer = writer
        self._registry = registry
        self._serving = serving
        # Rows of a window may still sit in the writer's buffer for up to a flush interval.
        self._grace = grace_s + writer.flush_interval
        self._profiles: dict[tuple[str, int], ReferenceProfile | None] = {}
        self._watermark: dict[str, float] = {}
        self._prev: dict[tuple[str, int], WindowHistogram] = {}
        self._latest: dict[str, _Latest] = {}
        self._label_cache: dict[str, tuple[float, FeatureDriftOut | None, QualityReport | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.windows_processed = 0
        self.last_tick_ms = 0.0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._load_watermarks()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.interval):
            try:
                self.tick()
            except Exception as e:  # a bad window must not end monitoring
                self.last_error = repr(e)
                log.exception("monitor tick failed")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self._con.cursor()

    def _load_watermarks(self) -> None:
        cur = self._cursor()
        try:
            for ep, end in cur.execute("SELECT endpoint, max(window_end) FROM drift_windows GROUP BY 1").fetchall():
                self._watermark[ep] = end
        finally:
            cur.close()

    # ------------------------------------------------------------------ profiles

    def profile(self, mv: ModelVersion) -> ReferenceProfile | None:
        """The version's reference profile (schema /2), parsed once; None when it has none usable."""
        key = (mv.name, mv.version)
        if key not in self._profiles:
            prof = None
            raw = self._registry.profile(mv.name, mv.version) if mv.has_profile else None
            if raw is not None and str(raw.get("schema", "")).endswith("/2"):
                try:
                    prof = ReferenceProfile.from_json(raw)
                except ValueError as e:
                    log.warning("%s:%d: unusable profile: %s", mv.name, mv.version, e)
            self._profiles[key] = prof
        return self._profiles[key]

    def _ranges(self, mv: ModelVersion, prof: ReferenceProfile) -> dict[str, tuple[float | None, float | None]]:
        """The bounds a numeric feature's values are checked against: the signature's min/max, and where it
        gives none, the reference profile's observed min/max (a bound stays open only where neither has one)."""
        out: dict[str, tuple[float | None, float | None]] = {}
        for f in mv.signature.features:
            col = prof.columns.get(f.name)
            if f.dtype == "category" or col is None or col.kind != "numeric":
                continue
            out[f.name] = (f.min if f.min is not None else col.min, f.max if f.max is not None else col.max)
        return out

    # ------------------------------------------------------------------ windows

    def tick(self, now: float | None = None) -> int:
        """Process every closed, unprocessed window of every endpoint; returns how many were stored."""
        t0 = time.perf_counter()
        if not self._serving.endpoints:
            return 0
        _load_statistics()
        now = time.time() if now is None else now
        w = self.cfg.window
        closed_upto = math.floor((now - self._grace) / w) * w
        done = 0
        for name in list(self._serving.endpoints):
            since = self._watermark.get(name, closed_upto - self.cfg.keep)
            if since >= closed_upto:
                continue
            done += self._endpoint_windows(name, since, closed_upto)
            if done >= MAX_WINDOWS_PER_TICK:
                break
        self.windows_processed += done
        self.last_tick_ms = (time.perf_counter() - t0) * 1000
        return done

    def _endpoint_windows(self, name: str, since: float, until: float) -> int:
        w = self.cfg.window
        cur = self._cursor()
        try:
            found = cur.execute(
                f"""SELECT DISTINCT floor(epoch(ts) / {w}) * {w} AS ws, model, version FROM predictions
                    WHERE endpoint = ? AND ts >= make_timestamp(CAST(? * 1e6 AS BIGINT))
                      AND ts < make_timestamp(CAST(? * 1e6 AS BIGINT)) AND version IS NOT NULL
                    ORDER BY ws, version""",
                [name, since, until],
            ).fetchall()
        finally:
            cur.close()
        done = 0
        for ws, model, version in found[:MAX_WINDOWS_PER_TICK]:
            try:
                mv = self._registry.resolve(model, int(version), None)
            except Exception:
                continue  # the version was deleted from the registry: nothing to compare with
            prof = self.profile(mv)
            if prof is None:
                continue
            hist = self._histogram_of(name, mv, prof, float(ws), float(ws) + w)
            self._store_window(name, mv, prof, float(ws), float(ws) + w, hist)
            done += 1
        # Everything before `until` is seen, windows without a usable profile included.
        last = found[MAX_WINDOWS_PER_TICK - 1][0] + w if len(found) > MAX_WINDOWS_PER_TICK else until
        self._watermark[name] = last
        return done

    def _histogram_of(self, name: str, mv: ModelVersion, prof: ReferenceProfile, start: float, end: float):
        """Stream a window's logged rows into a histogram over the profile's frozen bins."""
        hist = WindowHistogram.empty(prof, self._ranges(mv, prof))
        num_names = [f.name for f in mv.signature.features if f.dtype != "category"]
        cat_names = [f.name for f in mv.signature.features if f.dtype == "category"]
        cur = self._cursor()
        try:
            reader = cur.sql(
                """SELECT num, cat, CASE WHEN status = 'ok' THEN score END AS score FROM predictions
                   WHERE endpoint = ? AND version = ? AND ts >= make_timestamp(CAST(? * 1e6 AS BIGINT))
                     AND ts < make_timestamp(CAST(? * 1e6 AS BIGINT))""",
                params=[name, mv.version, start, end],
            ).to_arrow_reader(BATCH_ROWS)
            features = prof.features
            for batch in reader:
                frame = _frame(batch, num_names, cat_names, None)
                hist.update(frame, columns=features)
                if prof.prediction is not None:
                    # The model's output of the rows it answered: fallbacks and shadow rows are not predictions
                    # of this version, so they are neither counted nor missing.
                    import pyarrow.compute as pc

                    answered = batch.filter(pc.is_valid(batch.column(2)))
                    if answered.num_rows:
                        hist.update(_frame(answered, [], [], prof.prediction), columns=[prof.prediction])
        finally:
            cur.close()
        return hist

    def _store_window(
        self, name: str, mv: ModelVersion, prof: ReferenceProfile, start: float, end: float, hist: WindowHistogram
    ) -> None:
        thresholds = self._thresholds(name)
        reports = {"reference": compare(WindowHistogram.from_profile(prof), hist, thresholds)}
        prev = self._prev.get((name, mv.version)) or self._stored_previous(name, mv, prof, start)
        if prev is not None:
            reports["previous"] = compare(prev, hist, thresholds, baseline="previous")
        self._prev[(name, mv.version)] = hist
        body = _dumps(hist.to_json())
        rows = [
            (name, mv.name, mv.version, end, baseline, f.name, f.kind, f.method, _finite(f.score), bool(f.drifted),
             f.verdict, _finite(f.missing_rate_cur), _finite(f.out_of_range_share), _finite(f.unseen_share))
            for baseline, rep in reports.items()
            for f in rep.features
        ]  # fmt: skip

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "INSERT OR REPLACE INTO drift_windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                [name, mv.name, mv.version, start, end, hist.rows, body],
            )
            if rows:
                con.executemany("INSERT INTO drift_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

        self._writer.call(write)
        outs = {b: self._report_out(name, mv, b, start, end, r) for b, r in reports.items()}
        ep = self._serving.endpoints.get(name)
        serving = ep.version.version if ep is not None and ep.version is not None else None
        with self._lock:
            latest = self._latest.get(name)
            # The endpoint's latest window is its serving version's: during a canary the candidate's window
            # (a few rows, "no data") closing at the same time must not stand in for it, or the endpoint's
            # drift alerts go quiet for the whole rollout.
            ours = serving is None or mv.version == serving
            theirs = latest is not None and serving is not None and latest.version.version != serving
            if latest is None or theirs or (ours and end >= latest.end):
                self._latest[name] = _Latest(mv, start, end, outs)

    def _stored_previous(self, name: str, mv: ModelVersion, prof: ReferenceProfile, start: float):
        cur = self._cursor()
        try:
            row = cur.execute(
                """SELECT histogram FROM drift_windows WHERE endpoint = ? AND version = ? AND window_start < ?
                   ORDER BY window_start DESC LIMIT 1""",
                [name, mv.version, start],
            ).fetchone()
        finally:
            cur.close()
        return None if row is None else WindowHistogram.from_json(_loads(row[0]), prof)

    def _thresholds(self, name: str) -> DriftThresholds:
        ep = self._serving.endpoints.get(name)
        if ep is None or not ep.config.drift:
            return DriftThresholds()
        return DriftThresholds.from_dict(ep.config.drift)


lazy_statistics(globals())
