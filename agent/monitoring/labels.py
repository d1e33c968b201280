"""Labels and what they give: feedback joined to predictions on (request_id, row_idx), model quality per
version and window, label drift, and the alert signals of drift, data quality and model quality.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from agent.schemas import FeatureDriftOut, FeedbackAccepted, FeedbackItem, QualityReport

if TYPE_CHECKING:
    import duckdb
    import numpy as np

    from agent.monitoring.drift import compare
    from agent.monitoring.window import WindowHistogram


from agent.monitoring.common import MonitorError, _clean, _positive_label, _quality_windows, lazy_statistics

log = logging.getLogger("watchkeeper.monitor")


class LabelsAndSignals:
    """Labels, quality and alert signals; mixed into MonitorService (agent/monitoring/service.py)."""

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


lazy_statistics(globals())
