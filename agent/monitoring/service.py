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

Everything the API returns is built from wire types in agent/api/schemas.py. numpy and the statistics
modules load on the first window, so an agent that serves nothing stays small.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config import MonitoringConfig
from agent.schemas import (
    DriftHistory,
    DriftPoint,
    DriftReportOut,
    FeatureDriftOut,
    FeedbackAccepted,
    FeedbackItem,
    HistogramOut,
    ModelVersion,
    QualityReport,
    QualityWindow,
)
from agent.store.writer import StoreWriter

if TYPE_CHECKING:
    import duckdb
    import numpy as np

    from agent.monitoring import quality as q
    from agent.monitoring.drift import DriftReport, DriftThresholds, compare
    from agent.monitoring.profile import ReferenceProfile
    from agent.monitoring.window import WindowHistogram
    from agent.registry.store import Registry
    from agent.serving.service import ServingService

log = logging.getLogger("watchkeeper.monitor")

BATCH_ROWS = 65_536
MAX_WINDOWS_PER_TICK = 240  # catching up after a restart is spread over ticks, never one long stall


def _load_statistics() -> None:
    """Import numpy and the statistics modules on first use (an agent serving nothing never does)."""
    global np, q, DriftThresholds, compare, ReferenceProfile, WindowHistogram
    import numpy as np

    from agent.monitoring import quality as q
    from agent.monitoring.drift import DriftThresholds, compare
    from agent.monitoring.profile import ReferenceProfile
    from agent.monitoring.window import WindowHistogram


class MonitorError(Exception):
    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


@dataclass
class _Latest:
    version: ModelVersion
    start: float
    end: float
    reports: dict[str, DriftReportOut]  # baseline -> report


class MonitorService:
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
        with self._lock:
            latest = self._latest.get(name)
            if latest is None or end >= latest.end:
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

    # ------------------------------------------------------------------ API

    def _endpoint_version(self, name: str) -> ModelVersion:
        _load_statistics()  # every API entry point passes here first
        ep = self._serving.endpoints.get(name)
        if ep is None:
            raise MonitorError(404, f"no endpoint {name!r}", "name")
        if ep.version is None:
            raise MonitorError(409, f"endpoint {name!r} has no resolvable model: {ep.resolve_error}", "name")
        return ep.version

    def report(
        self, name: str, baseline: str = "reference", since: float | None = None, until: float | None = None
    ) -> DriftReportOut:
        """The latest window against `baseline`, or (with since/until) the merged range against the reference."""
        mv = self._endpoint_version(name)
        prof = self.profile(mv)
        if prof is None:
            return self._empty(name, mv, baseline, "no reference profile for this version (register one)")
        if since is None and until is None:
            with self._lock:
                latest = self._latest.get(name)
            if latest is None or latest.version.version != mv.version:
                latest = self._latest_from_store(name, mv, prof)
            if latest is None:
                return self._empty(name, mv, baseline, "no closed window with traffic yet")
            rep = latest.reports.get(baseline)
            if rep is None:
                return self._empty(name, mv, baseline, "no previous window to compare with yet")
            return rep
        if baseline != "reference":
            raise MonitorError(422, "a time range is compared with the reference only", "baseline")
        hist, start, end = self._merged(name, mv, prof, since, until)
        if hist is None:
            return self._empty(name, mv, baseline, "no windows in that range")
        rep = compare(WindowHistogram.from_profile(prof), hist, self._thresholds(name))
        return self._report_out(name, mv, baseline, start, end, rep)

    def _latest_from_store(self, name: str, mv: ModelVersion, prof: ReferenceProfile) -> _Latest | None:
        cur = self._cursor()
        try:
            rows = cur.execute(
                """SELECT window_start, window_end, histogram FROM drift_windows WHERE endpoint = ? AND version = ?
                   ORDER BY window_start DESC LIMIT 2""",
                [name, mv.version],
            ).fetchall()
        finally:
            cur.close()
        if not rows:
            return None
        start, end, body = rows[0]
        hist = WindowHistogram.from_json(_loads(body), prof)
        th = self._thresholds(name)
        reports = {"reference": self._report_out(name, mv, "reference", start, end,
                                                 compare(WindowHistogram.from_profile(prof), hist, th))}  # fmt: skip
        if len(rows) > 1:
            prev = WindowHistogram.from_json(_loads(rows[1][2]), prof)
            reports["previous"] = self._report_out(
                name, mv, "previous", start, end, compare(prev, hist, th, baseline="previous")
            )
        latest = _Latest(mv, start, end, reports)
        with self._lock:
            self._latest.setdefault(name, latest)
        return latest

    def _merged(self, name: str, mv: ModelVersion, prof: ReferenceProfile, since: float | None, until: float | None):
        cur = self._cursor()
        try:
            rows = cur.execute(
                """SELECT window_start, window_end, histogram FROM drift_windows
                   WHERE endpoint = ? AND version = ? AND window_end > ? AND window_start < ? ORDER BY window_start""",
                [name, mv.version, since if since is not None else -1.0, until if until is not None else 1e18],
            ).fetchall()
        finally:
            cur.close()
        if not rows:
            return None, None, None
        hist = WindowHistogram.from_json(_loads(rows[0][2]), prof)
        first = rows[0][0]
        for start, _, body in rows[1:]:
            w = WindowHistogram.from_json(_loads(body), prof)
            if w.ranges != hist.ranges:
                # Windows stored by an older agent counted out-of-range against other bounds (it left bounds
                # the signature lacks open): their counts can't be added to these, so the range starts here.
                hist, first = w, start
                continue
            hist = hist.merge(w)
        return hist, first, rows[-1][1]

    def history(self, name: str, baseline: str = "reference", since: float | None = None) -> DriftHistory:
        """Per feature, its score per window (newest last), for sparklines."""
        mv = self._endpoint_version(name)
        since = since if since is not None else time.time() - 6 * 3600
        cur = self._cursor()
        try:
            rows = cur.execute(
                """SELECT feature, window_end, score, drifted, verdict FROM drift_scores
                   WHERE endpoint = ? AND version = ? AND baseline = ? AND window_end > ? ORDER BY window_end""",
                [name, mv.version, baseline, since],
            ).fetchall()
        finally:
            cur.close()
        feats: dict[str, list[DriftPoint]] = {}
        for feature, end, score, drifted, verdict in rows:
            feats.setdefault(feature, []).append(DriftPoint(window_end=end, score=score, drifted=drifted,
                                                            verdict=verdict))  # fmt: skip
        return DriftHistory(endpoint=name, baseline=baseline, features=feats)  # type: ignore[arg-type]

    def histogram(
        self, name: str, feature: str, since: float | None = None, until: float | None = None
    ) -> HistogramOut:
        """Reference vs current shares over the frozen coarse bins of one feature (latest window by default)."""
        mv = self._endpoint_version(name)
        prof = self.profile(mv)
        if prof is None:
            raise MonitorError(409, "no reference profile for this version", "name")
        if feature not in _profile_names(prof):
            raise MonitorError(404, f"no feature {feature!r} in the reference profile", "feature")
        if since is None and until is None:
            with self._lock:
                latest = self._latest.get(name)
            if latest is not None and latest.version.version == mv.version:
                since, until = latest.start, latest.end
        hist, start, end = self._merged(name, mv, prof, since, until)
        ref = WindowHistogram.from_profile(prof)
        bins, r = ref.shares(feature)
        cur = hist.shares(feature)[1] if hist is not None else [0.0] * len(bins)
        kind = "categorical" if feature in prof.categorical or _is_categorical(prof, feature) else "numeric"
        return HistogramOut(endpoint=name, feature=feature, kind=kind, bins=bins, reference=r, current=cur,
                            window_start=start, window_end=end)  # fmt: skip

    def _report_out(
        self, name: str, mv: ModelVersion, baseline: str, start: float | None, end: float | None, rep: DriftReport
    ) -> DriftReportOut:
        # Labels arrive late: the label column is judged by `label_drift`, not per window.
        sig = {f.name: f for f in mv.signature.features}
        feats = [
            FeatureDriftOut(**_clean(f), range_source=_range_source(sig.get(f.name), f))
            for f in rep.features
            if f.role != "label"
        ]
        return DriftReportOut(
            endpoint=name, model=mv.name, version=mv.version, baseline=baseline,  # type: ignore[arg-type]
            window_start=start, window_end=end, n_ref=rep.n_ref, n_cur=rep.n_cur,
            drift_share=_finite(rep.drift_share) or 0.0, dataset_drift=bool(rep.dataset_drift),
            features_judged=rep.judged, features_drifted=rep.drifted,
            features=self._with_rejections(name, start, end, feats), computed_at=time.time(),
        )  # fmt: skip

    def _with_rejections(
        self, name: str, start: float | None, end: float | None, feats: list[FeatureDriftOut]
    ) -> list[FeatureDriftOut]:
        """Add the window's refused requests per feature (type mismatches, corrupt values) as a quality issue.

        Only features of the signature can be refused; the prediction column keeps None."""
        if start is None or end is None:
            return feats
        counts = self._serving.rejections(name, start, end)
        out = []
        for f in feats:
            if f.name.startswith("__"):
                out.append(f)
                continue
            n = counts.get(f.name, 0)
            update: dict[str, Any] = {"rejected_requests": n}
            if n:
                update["quality_issues"] = [*f.quality_issues, "rejected_values"]
                update["verdict"] = "drift+quality" if f.drifted else "quality"
            out.append(f.model_copy(update=update))
        return out

    def _empty(self, name: str, mv: ModelVersion, baseline: str, note: str) -> DriftReportOut:
        return DriftReportOut(
            endpoint=name, model=mv.name, version=mv.version, baseline=baseline,  # type: ignore[arg-type]
            window_start=None, window_end=None, n_ref=0, n_cur=0, drift_share=0.0, dataset_drift=False,
            features=[], computed_at=time.time(), note=note,
        )  # fmt: skip

    # ------------------------------------------------------------------ labels

    def feedback(self, name: str, items: list[FeedbackItem], principal: str) -> FeedbackAccepted:
        """Store labels durably (the call returns after commit); count ids not (yet) in the log."""
        self._endpoint_version(name)
        now = time.time()
        ids = sorted({it.request_id for it in items})
        rows = [
            (it.ts if it.ts is not None else now, now, name, it.request_id, it.row_idx, it.label, it.value, principal)
            for it in items
        ]

        def write(con: duckdb.DuckDBPyConnection) -> int:
            import pyarrow as pa

            cols = list(zip(*rows, strict=True))
            tbl = pa.table({f"c{i}": pa.array(c) for i, c in enumerate(cols)})
            con.register("_wk_fb", tbl)
            try:
                con.execute(
                    "INSERT INTO feedback SELECT make_timestamp(CAST(round(c0 * 1e6) AS BIGINT)), c1, c2, c3, c4, "
                    "c5, c6, c7 FROM _wk_fb"
                )
            finally:
                con.unregister("_wk_fb")
            # fetchall, not fetchone: this is the writer's connection, and a result left unfinished
            # would make its next INSERT fail ("connection has an unfinished result").
            found = con.execute(
                "SELECT count(DISTINCT request_id) FROM predictions WHERE endpoint = ? AND request_id IN "
                "(SELECT unnest(?))",
                [name, ids],
            ).fetchall()
            return int(found[0][0]) if found else 0

        known = self._writer.call(write, timeout=30.0)
        return FeedbackAccepted(accepted=len(items), unknown_request_ids=len(ids) - known)

    def quality(self, name: str, window_s: float | None = None, since: float | None = None) -> QualityReport:
        """Quality per version and window over predictions whose labels have arrived."""
        mv = self._endpoint_version(name)
        w = window_s or max(self.cfg.window, 3600.0)
        since = since if since is not None else time.time() - 7 * 86400
        cur = self._cursor()
        try:
            tbl = cur.sql(
                f"""WITH fb AS (
                        SELECT request_id, row_idx, arg_max(label, received_at) AS label,
                               arg_max(value, received_at) AS value
                        FROM feedback WHERE endpoint = ? GROUP BY 1, 2)
                    SELECT p.model, p.version, floor(epoch(p.ts) / {w}) * {w} AS ws, p.score, p.label AS predicted,
                           fb.label AS truth, fb.value AS truth_value
                    FROM predictions p LEFT JOIN fb USING (request_id, row_idx)
                    WHERE p.endpoint = ? AND p.status = 'ok' AND p.version IS NOT NULL
                      AND p.ts >= make_timestamp(CAST(? * 1e6 AS BIGINT))""",
                params=[name, name, since],
            ).to_arrow_table()
        finally:
            cur.close()
        kind = mv.signature.output.kind
        windows = _quality_windows(tbl, w, kind, _positive_label(mv))
        ref_metrics = {k.removeprefix("val_"): float(v) for k, v in mv.metrics.items()
                       if k.removeprefix("val_") in ("accuracy", "auc", "f1", "mae", "rmse")}  # fmt: skip
        return QualityReport(endpoint=name, kind=kind, windows=windows, reference_metrics=ref_metrics)

    def label_drift(self, name: str, since: float | None = None) -> FeatureDriftOut | None:
        """The arrived labels' distribution against the reference's, over predictions since `since`."""
        mv = self._endpoint_version(name)
        prof = self.profile(mv)
        if prof is None or prof.label is None:
            return None
        since = since if since is not None else time.time() - 86400
        cur = self._cursor()
        try:
            labels = [
                r[0]
                for r in cur.execute(
                    """SELECT arg_max(f.label, f.received_at)
                       FROM feedback f JOIN predictions p USING (request_id, row_idx)
                       WHERE p.endpoint = ? AND p.version = ? AND f.endpoint = ?
                         AND p.ts >= make_timestamp(CAST(? * 1e6 AS BIGINT))
                       GROUP BY f.request_id, f.row_idx""",
                    [name, mv.version, name, since],
                ).fetchall()
            ]
        finally:
            cur.close()
        hist = WindowHistogram.empty(prof, self._ranges(mv, prof))
        hist.update({prof.label: np.array(labels, dtype=object)})
        rep = compare(WindowHistogram.from_profile(prof), hist, self._thresholds(name))
        f = next((f for f in rep.features if f.name == prof.label), None)
        return None if f is None else FeatureDriftOut(**_clean(f))

    # ------------------------------------------------------------------ alert signals

    def signals(self) -> list[Any]:
        """Alert signals from the latest windows (drift, data quality), label drift and model quality.

        Label drift and quality join the prediction log with feedback: they are recomputed at most once a
        window (`monitoring.window`), not at every rule evaluation.
        """
        from agent.alerting.signals import drift_signals, quality_signals

        out: list[Any] = []
        with self._lock:
            latest = dict(self._latest)
        for name, lt in latest.items():
            if name not in self._serving.endpoints:
                continue
            rep = lt.reports.get("reference")
            lab, quality = self._labels_cached(name)
            if rep is not None:
                if lab is not None:
                    rep = rep.model_copy(update={"features": [*rep.features, lab]})
                out.extend(drift_signals(rep, "reference"))
            if quality is not None:
                out.extend(quality_signals(quality))
        return out

    def _labels_cached(self, name: str) -> tuple[FeatureDriftOut | None, QualityReport | None]:
        now = time.monotonic()
        hit = self._label_cache.get(name)
        if hit is not None and now - hit[0] < max(self.cfg.window, 30.0):
            return hit[1], hit[2]
        lab = quality = None
        try:
            lab = self.label_drift(name)
            quality = self.quality(name)
        except MonitorError:
            pass
        except Exception:  # a failing query must not stop the other endpoints' signals
            log.exception("labels of %s", name)
        self._label_cache[name] = (now, lab, quality)
        return lab, quality


# ---------------------------------------------------------------------- helpers


def _range_source(spec: Any, f: Any) -> str | None:
    """Where a numeric feature's out-of-range bounds came from: the signature, the reference profile, or both
    (one bound each). None for categorical columns, the prediction, and bounds open on both sides."""
    if f.kind != "numeric" or (f.range_min is None and f.range_max is None):
        return None
    from_sig = [spec is not None and getattr(spec, k) is not None for k in ("min", "max")]
    if all(from_sig):
        return "signature"
    return "signature+reference" if any(from_sig) else "reference"


def _profile_names(prof: ReferenceProfile) -> set[str]:
    return set(prof.numeric) | set(prof.categorical)


def _is_categorical(prof: ReferenceProfile, name: str) -> bool:
    return name in prof.categorical


def _frame(batch: Any, num_names: list[str], cat_names: list[str], prediction: str | None) -> dict[str, np.ndarray]:
    """Columns of a record batch of (num DOUBLE[], cat VARCHAR[], score) as one array per feature."""
    import pyarrow.compute as pc

    n = batch.num_rows
    frame: dict[str, np.ndarray] = {}
    if num_names:
        col = batch.column(0)
        vals = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
        if vals.size == n * len(num_names):
            mat = vals.reshape(n, len(num_names))
            for i, f in enumerate(num_names):
                frame[f] = mat[:, i]
    if cat_names:
        col = batch.column(1)
        vals = np.asarray(pc.list_flatten(col).to_pylist(), dtype=object)
        if vals.size == n * len(cat_names):
            mat = vals.reshape(n, len(cat_names))
            for i, f in enumerate(cat_names):
                frame[f] = mat[:, i]
    if prediction is not None:
        frame[prediction] = batch.column(2).to_numpy(zero_copy_only=False).astype(np.float64)
    return frame


def _quality_windows(tbl: Any, w: float, kind: str, positive: str | None) -> list[QualityWindow]:
    if tbl.num_rows == 0:
        return []
    d = {c: tbl.column(c).to_numpy(zero_copy_only=False) for c in tbl.column_names}
    keys = sorted({(m, int(v), float(ws)) for m, v, ws in zip(d["model"], d["version"], d["ws"], strict=True)})
    out = []
    for model, version, ws in keys:
        sel = (d["model"] == model) & (d["version"] == version) & (d["ws"] == ws)
        truth = d["truth"][sel]
        tv = d["truth_value"][sel].astype(np.float64)
        labelled = (truth != None) | ~np.isnan(tv)  # noqa: E711 (elementwise over an object array)
        qw = QualityWindow(model=model, version=version, window_start=ws, window_end=ws + w,
                           labelled=int(labelled.sum()), predictions=int(sel.sum()))  # fmt: skip
        if labelled.any():
            if kind == "regression":
                t = np.where(np.isnan(tv), np.array([_to_float(x) for x in truth]), tv)
                m = q.regression(d["score"][sel].astype(np.float64)[labelled], t[labelled])
            else:
                m = q.classification(
                    d["score"][sel].astype(np.float64)[labelled] if kind == "binary" else None,
                    d["predicted"][sel][labelled], truth[labelled], positive,
                )  # fmt: skip
            qw = qw.model_copy(update={k: v for k, v in m.items() if v is not None})
        out.append(qw)
    return out


def _positive_label(mv: ModelVersion) -> str | None:
    spec = mv.signature.output
    if spec.kind != "binary":
        return None
    return (spec.labels or ["0", "1"])[1]


def _to_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(f: Any) -> dict[str, Any]:
    """A FeatureDrift as wire fields: NaN/inf become None (JSON has no NaN)."""
    d = f.__dict__ if hasattr(f, "__dict__") else dict(f)
    out = {}
    for k in FeatureDriftOut.model_fields:
        if k not in d:
            continue
        v = d[k]
        if isinstance(v, float | np.floating):
            v = _finite(v)
        elif isinstance(v, np.integer | np.bool_):
            v = v.item()
        elif isinstance(v, Iterable) and not isinstance(v, str):
            v = list(v)
        out[k] = v
    return out


def _dumps(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _loads(s: str) -> Any:
    import orjson

    return orjson.loads(s)
