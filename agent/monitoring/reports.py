"""The monitor's answers: drift reports and history (merged stored histograms, never re-read rows), one
feature's histograms, the rejections beside them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent.schemas import DriftHistory, DriftPoint, DriftReportOut, FeatureDriftOut, HistogramOut, ModelVersion

if TYPE_CHECKING:
    from agent.monitoring.drift import DriftReport, compare
    from agent.monitoring.profile import ReferenceProfile
    from agent.monitoring.window import WindowHistogram


from agent.monitoring.common import (
    MonitorError,
    _clean,
    _finite,
    _is_categorical,
    _Latest,
    _load_statistics,
    _loads,
    _profile_names,
    _range_source,
    lazy_statistics,
)


class DriftReports:
    """Drift reads; mixed into MonitorService (agent/monitoring/service.py), whose state it uses."""

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


lazy_statistics(globals())
