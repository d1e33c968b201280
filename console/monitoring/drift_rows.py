"""The drift screen's rows and header as plain values and text. No Textual here.

One row per feature of a drift report (and `__prediction__` / `__label__`), sorted by drift score,
highest first (no score last). A feature's history is its score per window from `drift/history`,
oldest first: the sparkline. Effect sizes sit beside p-values because at a million rows every
p-value is tiny and says nothing about how much a distribution moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.schemas import DriftHistory, DriftReportOut, FeatureDriftOut, QualityReport, QualityWindow
from console.core.rows import MISSING, Column, fmt_age

SPECIAL_NAMES = {"__prediction__": "(prediction)", "__label__": "(label)"}
# A p-value below this is shown as "<1e-4": the digits after it are noise at these sample sizes.
P_FLOOR = 1e-4
QUALITY_METRICS = {
    "binary": ("accuracy", "auc", "f1"),
    "multiclass": ("accuracy", "f1"),
    "regression": ("mae", "rmse"),
}

COLUMNS: tuple[Column, ...] = (
    Column("feature", "FEATURE"),
    Column("score", "SCORE", numeric=True),
    Column("method", "METHOD"),
    Column("verdict", "VERDICT"),
    Column("missing", "MISSING ref→cur", numeric=True),
    Column("range", "OUT-RANGE", numeric=True),
    Column("unseen", "UNSEEN", numeric=True),
    Column("pvalue", "P-VALUE", numeric=True),
    Column("effect", "EFFECT", numeric=True),
    Column("history", "HISTORY"),
)
HISTORY_WIDTH = 16


def fmt_share(value: float | None) -> str:
    """A 0..1 share as a percentage, '-' when unknown."""
    return MISSING if value is None else f"{value * 100:.1f}%"


def fmt_score(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.3g}"


def fmt_pvalue(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"<{P_FLOOR:g}" if value < P_FLOOR else f"{value:.4f}"


def fmt_utc(ts: float | None) -> str:
    """Wall-clock time in UTC (agents and operators sit in different zones; UTC is unambiguous)."""
    return MISSING if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def feature_label(name: str) -> str:
    return SPECIAL_NAMES.get(name, name)


def significance(f: FeatureDriftOut) -> tuple[str, float | None, str, float | None] | None:
    """(test, p-value, effect name, effect size) shown for a feature: KS and its D for numeric
    features, chi-squared with Jensen-Shannon (else PSI) for categorical ones."""
    if f.kind == "numeric":
        if f.ks_pvalue is None and f.ks_stat is None:
            return None
        return ("KS", f.ks_pvalue, "D", f.ks_stat)
    if f.chi2_pvalue is None and f.js is None and f.psi is None:
        return None
    if f.js is not None:
        return ("chi2", f.chi2_pvalue, "JS", f.js)
    return ("chi2", f.chi2_pvalue, "PSI", f.psi)


@dataclass(frozen=True)
class FeatureRow:
    """One feature of a drift report, with its score history."""

    key: str  # the feature's name
    feature: FeatureDriftOut
    history: tuple[float, ...] = ()  # scores per window, oldest first (windows without a score dropped)

    @property
    def score(self) -> float | None:
        return self.feature.score

    @property
    def missing_grew(self) -> bool:
        """More values missing now than in the baseline (by more than a percentage point)."""
        f = self.feature
        return f.missing_rate_cur is not None and f.missing_rate_cur - (f.missing_rate_ref or 0.0) > 0.01

    def text(self, column: str) -> str:
        """The display text of one column (the history column is drawn by the table)."""
        f = self.feature
        match column:
            case "feature":
                return feature_label(f.name)
            case "score":
                return fmt_score(f.score)
            case "method":
                return f.method
            case "verdict":
                return f.verdict
            case "missing":
                if f.missing_rate_ref is None and f.missing_rate_cur is None:
                    return MISSING
                return f"{fmt_share(f.missing_rate_ref)} → {fmt_share(f.missing_rate_cur)}"
            case "range":
                return fmt_share(f.out_of_range_share) if f.kind == "numeric" else MISSING
            case "unseen":
                return fmt_share(f.unseen_share) if f.kind == "categorical" else MISSING
            case "pvalue":
                test = significance(f)
                return MISSING if test is None or test[1] is None else fmt_pvalue(test[1])
            case "effect":
                test = significance(f)
                return MISSING if test is None or test[3] is None else f"{test[2]} {fmt_score(test[3])}"
            case "history":
                return ""
        raise KeyError(column)

    def matches_text(self) -> str:
        """What the `/` filter searches: name, kind, method, verdict and quality issues."""
        f = self.feature
        return " ".join((f.name, feature_label(f.name), f.kind, f.method, f.verdict, *f.quality_issues))


def feature_rows(report: DriftReportOut | None, history: DriftHistory | None = None) -> list[FeatureRow]:
    """Rows of a report, highest score first; ties and unscored features by name."""
    if report is None:
        return []
    points = history.features if history is not None else {}
    rows = [
        FeatureRow(
            key=f.name,
            feature=f,
            history=tuple(
                p.score for p in sorted(points.get(f.name, ()), key=lambda p: p.window_end) if p.score is not None
            ),
        )
        for f in report.features
    ]
    return sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.key))


# --------------------------------------------------------------------------- header


def window_text(report: DriftReportOut, now: float) -> str:
    """The report's window in UTC, its length and how long ago it closed."""
    start, end = report.window_start, report.window_end
    if start is None or end is None:
        return "window -"
    a, b = fmt_utc(start), fmt_utc(end)
    if a[:10] == b[:10]:
        b = b[11:]
    return f"window {a} → {b} UTC ({fmt_age(end - start)}, closed {fmt_age(max(0.0, now - end))} ago)"


def drift_line(report: DriftReportOut) -> str:
    """Rows against the baseline's, the share of drifted features and the dataset verdict."""
    base = "reference" if report.baseline == "reference" else "previous window"
    verdict = "DATASET DRIFT" if report.dataset_drift else "no dataset drift"
    return f"rows {report.n_cur:,} vs {base} {report.n_ref:,}  ·  {drift_share_text(report)}  ·  {verdict}"


def drift_share_text(report: DriftReportOut) -> str:
    """The drift share said once, over the features the agent judged (the ones with enough rows)."""
    features = [f for f in report.features if f.name not in SPECIAL_NAMES]
    judged, drifted = report.features_judged, report.features_drifted
    if judged is None or drifted is None:  # an older agent: judged = had a score
        scored = [f for f in features if f.score is not None]
        judged, drifted = len(scored), sum(1 for f in scored if f.drifted)
    if judged == 0:
        return f"drift share not judged (0 of {len(features)} features had enough rows)"
    rest = len(features) - judged
    tail = f"; {rest} not judged" if rest > 0 else ""
    return f"drift share {drifted / judged * 100:.0f}% ({drifted}/{judged} judged features{tail})"


def data_quality_line(report: DriftReportOut) -> str:
    """'data quality: 2 features with issues: carrier (missing 12.0%), ...' or 'data quality: ok'."""
    issues = [f for f in report.features if f.quality_issues]
    if not issues:
        return "data quality: no issues"
    shown = ", ".join(f"{feature_label(f.name)} ({'; '.join(f.quality_issues)})" for f in issues[:3])
    more = f", +{len(issues) - 3} more" if len(issues) > 3 else ""
    return f"data quality: {len(issues)} feature{'s' if len(issues) != 1 else ''} with issues: {shown}{more}"


def latest_quality(report: QualityReport, version: int | None) -> QualityWindow | None:
    """The newest window of `version` (else of any version) that has labels."""
    windows = [w for w in report.windows if w.labelled > 0]
    mine = [w for w in windows if version is None or w.version == version]
    pool = mine or windows
    return max(pool, key=lambda w: w.window_end) if pool else None


def model_quality_line(report: QualityReport | None, version: int | None, error: str | None = None) -> str:
    """The newest labelled window's metrics beside the reference's, and how much is labelled."""
    if report is None:
        return f"model quality: {error}" if error else "model quality: loading…"
    w = latest_quality(report, version)
    if w is None:
        return "model quality: no labels yet"
    parts = []
    for name in QUALITY_METRICS.get(report.kind, ()):
        value = getattr(w, name)
        if value is None:
            continue
        ref = report.reference_metrics.get(name)
        parts.append(f"{name} {value:.3f}" + (f" (ref {ref:.3f})" if ref is not None else ""))
    labelled = f"{w.labelled:,}/{w.predictions:,} labelled"
    return f"model quality (v{w.version}, last labelled window): {' · '.join(parts) or 'no metric'} · {labelled}"


def feature_detail(f: FeatureDriftOut) -> str:
    """Every statistic of one feature, one per line (the panel beside the histogram)."""
    lines = [f"{feature_label(f.name)}  ({f.kind})  {f.verdict}"]
    thr = f" (threshold {fmt_score(f.threshold)})" if f.threshold is not None else ""
    lines.append(f"{f.method} {fmt_score(f.score)}{thr}")
    lines.append(f"rows: current {f.n_cur:,}  baseline {f.n_ref:,}")
    stats: list[str] = []
    for label, value in (("PSI", f.psi), ("Wasserstein (norm)", f.wasserstein_norm), ("Jensen-Shannon", f.js)):
        if value is not None:
            stats.append(f"{label} {fmt_score(value)}")
    if f.ks_stat is not None or f.ks_pvalue is not None:
        stats.append(f"KS D {fmt_score(f.ks_stat)}  p {fmt_pvalue(f.ks_pvalue)}")
    if f.chi2_stat is not None or f.chi2_pvalue is not None:
        stats.append(f"chi2 {fmt_score(f.chi2_stat)}  p {fmt_pvalue(f.chi2_pvalue)}")
    lines.extend(stats)
    lines.append(f"missing: {fmt_share(f.missing_rate_ref)} → {fmt_share(f.missing_rate_cur)}")
    if f.kind == "numeric":
        lines.append(f"out of range: {fmt_share(f.out_of_range_share)}")
    else:
        unseen = f"unseen: {fmt_share(f.unseen_share)}"
        if f.unseen_top:
            unseen += f" (top: {', '.join(f.unseen_top[:5])})"
        lines.append(unseen)
    lines.extend(f"! {issue}" for issue in f.quality_issues)
    return "\n".join(lines)


def history_ceiling(row: FeatureRow) -> float | None:
    """The sparkline's full height: the threshold sits at 90 % so a bar at or over it is red."""
    thr = row.feature.threshold
    return thr / 0.9 if thr else None
