"""Drift and data-quality verdicts: one window (or a merge of windows) against the reference, per column.

Primary method per kind, as Evidently 0.7 chooses them (method "auto"):

- numeric: Wasserstein distance / std(reference) >= 0.1 when the reference holds more than 1000 values, else
  the two-sample KS test at p < 0.05 (Wasserstein's exactness: `window.wasserstein`). PSI and Jensen-Shannon
  (base 2) on the coarse bins (PSI threshold 0.2) and the KS statistic and p-value
  (asymptotic there, see `DriftThresholds.ks_method`) are reported beside it: with a million rows a KS p-value
  flags shifts nobody cares about, the effect size says how big the shift is.
- categorical: Jensen-Shannon distance (base 2) >= 0.1 over the reference's categories when the reference holds
  more than 1000 values, else the 2xk chi-square test of homogeneity at p < 0.05 (both samples treated as
  samples, unlike Evidently's goodness-of-fit test that takes the reference proportions as exact).

Distributions are compared over values present: missing values, and unseen categories, are data-quality issues,
checked beside the scores, because a distance does not see them (measured: Evidently's defaults miss a missing
rate going 0.5 % -> 5 % and a 2 % unseen category):

- "missing_rate": the missing rate moved either way: by more than 0.02 absolute, or by more than 5x (the lower
  rate taken as at least 0.001, with at least 10 missing values on the higher side, for a fall expected in the
  window at the reference's rate, so one missing value in a small window is not an issue);
- "unseen": more than 1 % of a categorical column's current values are categories the reference never had;
- "out_of_range": more than 1 % of a numeric column's current values lie outside the reference's [min, max] (or
  the signature's range, see `WindowHistogram.empty`; `range_min`/`range_max` report the bounds used);
- "reference_too_small": the reference has fewer than `min_rows` values of the column while the window has
  them: drift can't be judged, and that is a finding, not "no data".

A column with fewer than `min_rows` (100) current values is not judged for drift ("no data"), still for quality
when the window has `min_rows` rows (a column that went entirely missing is a quality issue, not "no data").
The dataset drifts when at least half of the feature columns judged drift (prediction and label are reported
but not counted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.monitoring.profile import NumericColumn
from agent.monitoring.stats import (
    chi2_2xk,
    js_distance,
    ks_from_counts,
    normalise_wasserstein,
    psi,
)
from agent.monitoring.window import CategoricalCounts, NumericCounts, WindowHistogram, wasserstein

Verdict = Literal["ok", "drift", "quality", "drift+quality", "no data"]

NUMERIC_METHODS = ("auto", "wasserstein", "ks", "psi")
CATEGORICAL_METHODS = ("auto", "jensenshannon", "chi2", "psi")
P_VALUE_METHODS = ("ks", "chi2")


@dataclass(frozen=True)
class DriftThresholds:
    """When a column drifts or has a data-quality issue. Every field can be overridden per endpoint."""

    numeric_method: str = "auto"  # auto | wasserstein | ks | psi
    categorical_method: str = "auto"  # auto | jensenshannon | chi2 | psi
    auto_reference_values: int = 1000  # "auto" uses distances when the reference holds more values than this
    wasserstein: float = 0.1  # Wasserstein / std(reference), drift when >=
    ks_pvalue: float = 0.05  # drift when p <
    psi: float = 0.2  # drift when >=
    jensenshannon: float = 0.1  # JS distance, base `js_base`, drift when >=
    chi2_pvalue: float = 0.05  # drift when p <
    # KS p-value. "auto": where KS decides the verdict, as scipy's ks_2samp(method="auto") (exact up to 10000
    # values a side); where it is only reported beside Wasserstein, asymptotic, because the exact lattice walk
    # costs ~0.1 s per column in numpy and a window-against-previous-window comparison would pay it for every
    # column. "scipy": always as ks_2samp's auto; "exact" / "asymp": always that.
    ks_method: str = "auto"
    js_base: float = 2.0
    psi_eps: float = 1e-4
    missing_rate_increase: float = 0.02  # absolute increase of the missing rate
    missing_rate_ratio: float = 5.0  # relative increase ...
    missing_rate_floor: float = 0.001  # ... over at least this reference rate
    missing_min_count: int = 10  # ... and with at least this many missing values
    unseen_share: float = 0.01
    out_of_range_share: float = 0.01
    drift_share: float = 0.5  # dataset drift when this share of judged features drifts
    min_rows: int = 100

    def __post_init__(self) -> None:
        if self.numeric_method not in NUMERIC_METHODS:
            raise ValueError(f"numeric_method: expected one of {NUMERIC_METHODS}, got {self.numeric_method!r}")
        if self.categorical_method not in CATEGORICAL_METHODS:
            raise ValueError(
                f"categorical_method: expected one of {CATEGORICAL_METHODS}, got {self.categorical_method!r}"
            )
        if self.ks_method not in ("auto", "scipy", "exact", "asymp"):
            raise ValueError(f"ks_method: expected 'auto', 'scipy', 'exact' or 'asymp', got {self.ks_method!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", "int") and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"{f.name}: expected a number, got {v!r}")
            if f.type == "int" and not isinstance(v, int):
                raise ValueError(f"{f.name}: expected an integer, got {v!r}")
            if f.type in ("float", "int") and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{f.name}: expected a finite number >= 0, got {v!r}")
        for name in ("ks_pvalue", "chi2_pvalue"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a p-value threshold in (0, 1)")
        if self.js_base <= 0 or self.js_base == 1:
            raise ValueError("js_base: expected a positive base other than 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: DriftThresholds | None = None) -> DriftThresholds:
        """Thresholds from a config mapping, over `base` (default: the defaults). ValueError names an unknown key
        or a bad value."""
        if not isinstance(d, Mapping):
            raise ValueError("thresholds: expected a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"{key}: unknown drift threshold (known: {', '.join(sorted(known))})")
        return dataclasses.replace(base or cls(), **dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FeatureDrift:
    """One column's comparison. Statistics that do not apply to the kind, or could not be computed (an empty
    side), are None. `score` is the primary method's value, compared against `threshold`: a distance (drift
    when >=) or a p-value (drift when <); `severity` puts both on one scale (>= 1 means drift)."""

    name: str
    kind: Literal["numeric", "categorical"]
    n_ref: int  # values present (not missing) in the reference
    n_cur: int  # values present in the current window (unseen categories included)
    psi: float | None
    ks_stat: float | None
    ks_pvalue: float | None
    wasserstein_norm: float | None
    js: float | None
    chi2_stat: float | None
    chi2_pvalue: float | None
    method: str
    score: float | None
    threshold: float
    drifted: bool
    missing_rate_ref: float | None
    missing_rate_cur: float | None
    out_of_range_share: float | None
    unseen_share: float | None
    unseen_top: list[str]  # the most frequent unseen categories, most frequent first (at most 20)
    quality_issues: list[str]
    verdict: Verdict
    role: Literal["feature", "prediction", "label"] = "feature"
    severity: float = 0.0
    # The bounds out-of-range values were counted against (numeric; None: open): the signature's where it
    # gives them, else the reference's observed min/max (see `WindowHistogram.empty`).
    range_min: float | None = None
    range_max: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DriftReport:
    """Every monitored column's comparison, most severe first, and the dataset verdict."""

    features: list[FeatureDrift]
    drift_share: float | None  # drifted / judged feature columns; None when none could be judged
    dataset_drift: bool
    n_ref: int  # rows
    n_cur: int
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    judged: int = 0  # feature columns with enough rows on both sides: the drift share's denominator
    drifted: int = 0  # ... of which drifted: the share's numerator

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [f.to_json() for f in self.features],
            "drift_share": self.drift_share,
            "judged": self.judged,
            "drifted": self.drifted,
            "dataset_drift": self.dataset_drift,
            "n_ref": self.n_ref,
            "n_cur": self.n_cur,
            "thresholds": self.thresholds.to_dict(),
        }

    def feature(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def compare(
    reference: WindowHistogram,
    current: WindowHistogram,
    thresholds: DriftThresholds | None = None,
    *,
    baseline: Literal["reference", "previous"] = "reference",
) -> DriftReport:
    """Compare `current` against `reference` (usually `WindowHistogram.from_profile(profile)`), column by column.

    Both must be counted against the same profile (ValueError otherwise). Wasserstein is normalised by the
    profile's reference std, whatever `reference` is, so scores mean the same across windows. `baseline`
    "previous" says `reference` is an earlier window: one with few values is then no finding of its own
    (traffic was low), unlike a reference profile too small to judge against ("reference_too_small").
    """
    t = thresholds or DriftThresholds()
    if current.profile is not reference.profile and current.profile.fingerprint != reference.profile.fingerprint:
        raise ValueError("profile: reference and current were counted against different profiles")
    features = []
    for name, col in reference.profile.columns.items():
        r = reference.columns[name]
        c = current.columns[name]
        if isinstance(col, NumericColumn):
            assert isinstance(r, NumericCounts) and isinstance(c, NumericCounts)
            features.append(_numeric(name, col, r, c, t, current.ranges.get(name, (col.min, col.max)), baseline))
        else:
            assert isinstance(r, CategoricalCounts) and isinstance(c, CategoricalCounts)
            features.append(_categorical(name, col.role, r, c, t, baseline))
    features.sort(key=lambda f: (-f.severity, f.name))
    judged = [f for f in features if f.role == "feature" and _judged(f, t)]
    drifted = sum(f.drifted for f in judged)
    share = drifted / len(judged) if judged else None
    return DriftReport(
        features=features,
        drift_share=share,
        dataset_drift=share is not None and share >= t.drift_share,
        n_ref=reference.rows,
        n_cur=current.rows,
        thresholds=t,
        judged=len(judged),
        drifted=drifted,
    )


def _judged(f: FeatureDrift, t: DriftThresholds) -> bool:
    return f.n_cur >= t.min_rows and f.n_ref >= t.min_rows


def _num(x: float) -> float | None:
    """NaN (not computable) as None, numpy scalars as floats."""
    x = float(x)
    return None if math.isnan(x) else x


def _severity(method: str, score: float | None, threshold: float) -> float:
    if score is None:
        return 0.0
    if method in P_VALUE_METHODS:
        # log p / log alpha: 1 at the threshold, growing as p shrinks; p = 0 (underflow) is capped.
        return math.log10(max(score, 1e-300)) / math.log10(threshold)
    return score / threshold if threshold > 0 else math.inf


def _missing_issue(r_missing: int, r_rows: int, c_missing: int, c_rows: int, t: DriftThresholds) -> bool:
    """The missing rate moved, either way: a fall (99.9 % -> 21 %: a pipeline now fills the column) is as much a
    change in the data as a rise. The rule is the same both ways: by more than `missing_rate_increase` absolute,
    or by `missing_rate_ratio`x over `missing_rate_floor` with at least `missing_min_count` missing values on the
    higher side (for a fall: expected in the window at the reference's rate, so a small window missing nothing
    is not an issue)."""
    ref_rate = r_missing / r_rows if r_rows else 0.0
    cur_rate = c_missing / c_rows
    if abs(cur_rate - ref_rate) > t.missing_rate_increase:
        return True
    if c_missing >= t.missing_min_count and cur_rate > t.missing_rate_ratio * max(ref_rate, t.missing_rate_floor):
        return True
    expected = ref_rate * c_rows
    return expected >= t.missing_min_count and ref_rate > t.missing_rate_ratio * max(cur_rate, t.missing_rate_floor)


def _verdict(judged: bool, drifted: bool, issues: list[str]) -> Verdict:
    if drifted:
        return "drift+quality" if issues else "drift"
    if issues:
        return "quality"
    return "ok" if judged else "no data"


def _numeric(
    name: str,
    col: NumericColumn,
    r: NumericCounts,
    c: NumericCounts,
    t: DriftThresholds,
    bounds: tuple,
    baseline: str,
) -> FeatureDrift:
    method = t.numeric_method
    if method == "auto":
        method = "wasserstein" if r.n > t.auto_reference_values else "ks"
    p = ks = ks_p = w_norm = js = None
    if r.n and c.n:
        r_coarse, c_coarse = col.coarse(r.cells), col.coarse(c.cells)
        p = _num(psi(r_coarse, c_coarse, eps=t.psi_eps))
        # On the same frozen coarse bins as PSI (the fine cells would make it a measure of cell noise).
        js = _num(js_distance(r_coarse, c_coarse, base=t.js_base))
        ks_method = {"auto": "auto" if method == "ks" else "asymp", "scipy": "auto"}.get(t.ks_method, t.ks_method)
        ks_res = ks_from_counts(col.fine.cell_ends(), r.cells, c.cells, method=ks_method)
        ks, ks_p = _num(ks_res.statistic), _num(ks_res.pvalue)
        w = wasserstein(col, r, c)
        w_norm = _num(normalise_wasserstein(w, col.std if col.std is not None else math.nan))
    score, threshold = {"wasserstein": (w_norm, t.wasserstein), "ks": (ks_p, t.ks_pvalue), "psi": (p, t.psi)}[method]
    oor_share = c.out_of_range / c.n if c.n else None
    return _feature(
        name, "numeric", col.role, r, c, t, method, score, threshold, ("out_of_range", oor_share, t.out_of_range_share),
        psi=p, ks_stat=ks, ks_pvalue=ks_p, wasserstein_norm=w_norm, js=js, out_of_range_share=oor_share,
        baseline=baseline, range_min=bounds[0], range_max=bounds[1],
    )  # fmt: skip


def _categorical(
    name: str, role, r: CategoricalCounts, c: CategoricalCounts, t: DriftThresholds, baseline: str
) -> FeatureDrift:
    method = t.categorical_method
    if method == "auto":
        method = "jensenshannon" if r.n > t.auto_reference_values else "chi2"
    # The distribution is compared over the reference's categories; unseen ones are a quality issue of their own
    # (counted in, a 2 % unseen category alone would push the JS distance to ~0.1).
    p = js = chi = chi_p = None
    if int(r.counts.sum()) and int(c.counts.sum()):
        p = _num(psi(r.counts, c.counts, eps=t.psi_eps))
        js = _num(js_distance(r.counts, c.counts, base=t.js_base))
        res = chi2_2xk(r.counts, c.counts)
        chi, chi_p = _num(res.statistic), _num(res.pvalue)
    score, threshold = {"jensenshannon": (js, t.jensenshannon), "chi2": (chi_p, t.chi2_pvalue), "psi": (p, t.psi)}[
        method
    ]
    unseen_share = c.unseen / c.n if c.n else None
    return _feature(
        name, "categorical", role, r, c, t, method, score, threshold, ("unseen", unseen_share, t.unseen_share),
        psi=p, js=js, chi2_stat=chi, chi2_pvalue=chi_p, unseen_share=unseen_share,
        unseen_top=[k for k, _ in sorted(c.unseen_top.items(), key=lambda kv: (-kv[1], kv[0]))], baseline=baseline,
    )  # fmt: skip


_STATS = ("psi", "ks_stat", "ks_pvalue", "wasserstein_norm", "js", "chi2_stat", "chi2_pvalue",
          "out_of_range_share", "unseen_share")  # fmt: skip


def _feature(
    name: str,
    kind: Literal["numeric", "categorical"],
    role,
    r: NumericCounts | CategoricalCounts,
    c: NumericCounts | CategoricalCounts,
    t: DriftThresholds,
    method: str,
    score: float | None,
    threshold: float,
    extra_issue: tuple[str, float | None, float],
    *,
    baseline: str,
    **stats: Any,
) -> FeatureDrift:
    """The verdict shared by both kinds: judged only with enough values, drift by the primary method (p-value
    methods drift below their threshold, distances at or above it), missing-rate and one kind-specific issue."""
    r_rows, c_rows = r.n + r.missing, c.n + c.missing
    judged = r.n >= t.min_rows and c.n >= t.min_rows
    below = method in P_VALUE_METHODS
    drifted = judged and score is not None and (score < threshold if below else score >= threshold)
    issues = []
    if c_rows >= t.min_rows:
        if _missing_issue(r.missing, r_rows, c.missing, c_rows, t):
            issues.append("missing_rate")
        issue, share, limit = extra_issue
        if share is not None and share > limit:
            issues.append(issue)
    if baseline == "reference" and r.n < t.min_rows and c.n >= t.min_rows:
        # The window has the values; the reference is what can't be judged against. Saying "no data" would
        # hide a column that is now populated (and possibly moved) behind a reference nobody can compare with.
        issues.append("reference_too_small")
    return FeatureDrift(
        name=name,
        kind=kind,
        n_ref=r.n,
        n_cur=c.n,
        **{k: stats.get(k) for k in _STATS},
        method=method,
        score=score,
        threshold=threshold,
        drifted=drifted,
        missing_rate_ref=r.missing / r_rows if r_rows else None,
        missing_rate_cur=c.missing / c_rows if c_rows else None,
        unseen_top=stats.get("unseen_top", []),
        quality_issues=issues,
        verdict=_verdict(judged, drifted, issues),
        role=role,
        severity=_severity(method, score, threshold) if judged else 0.0,
        range_min=stats.get("range_min"),
        range_max=stats.get("range_max"),
    )
