"""A/B statistics on posted outcomes: the candidate's lift over stable, its 95 % confidence interval, a p-value.

Outcomes are the `feedback` rows (`POST /endpoints/{name}/feedback`) joined to the prediction log on
(request_id, row_idx): the version that answered is the log's `version`, only rows answered by a model
(status "ok", so neither fallbacks nor shadow calls) since the rollout started count, and a row with
several feedback items counts its latest.

- Labels (a classifier's outcome): the outcome is 1 when the label is the positive class (the output's
  second label, or "1"/"true"), else 0. Lift = p_candidate - p_stable; the test is the two-sided
  two-proportion z-test with the pooled standard error, the interval uses the unpooled one
  (Wald): lift +- z_0.975 * sqrt(p_s (1 - p_s) / n_s + p_c (1 - p_c) / n_c).
- Values (a regressor's, or any numeric outcome): lift = mean_candidate - mean_stable; Welch's t-test
  (unequal variances, Welch-Satterthwaite degrees of freedom), the interval
  lift +- t_0.975,df * sqrt(v_s / n_s + v_c / n_c) with sample variances (ddof 1).

Fewer than `min_samples` outcomes in either arm: "not_enough_data" (no lift, no p-value). Otherwise
"candidate_better" / "candidate_worse" when p < 0.05 (higher outcome is better), else "no_difference".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from agent.schemas import ABResult
from agent.store.sqltime import ts_from_unix

ALPHA = 0.05
Z_975 = 1.959963984540054  # the normal distribution's 0.975 quantile
TRUE_LABELS = frozenset({"1", "true"})


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion(x_s: int, n_s: int, x_c: int, n_c: int) -> tuple[float, float, float, float]:
    """(lift, ci_low, ci_high, p_value) of the candidate's success rate over stable's; see the module docstring."""
    p_s, p_c = x_s / n_s, x_c / n_c
    lift = p_c - p_s
    pooled = (x_s + x_c) / (n_s + n_c)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_c))
    # Both arms all successes or all failures: no evidence of a difference.
    p = 1.0 if se0 == 0 else min(1.0, 2 * _norm_sf(abs(lift) / se0))
    se = math.sqrt(p_s * (1 - p_s) / n_s + p_c * (1 - p_c) / n_c)
    return lift, lift - Z_975 * se, lift + Z_975 * se, p


def welch(stable: Sequence[float], candidate: Sequence[float]) -> tuple[float, float, float, float]:
    """(lift, ci_low, ci_high, p_value) of the candidate's mean over stable's, Welch's t; module docstring."""
    import numpy as np
    from scipy import special

    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(stable, dtype=np.float64)
    na, nb = a.size, b.size
    lift = float(a.mean() - b.mean())
    va, vb = float(a.var(ddof=1)) / na, float(b.var(ddof=1)) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return lift, lift, lift, 1.0 if lift == 0 else 0.0
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = lift / se
    p = float(min(1.0, 2 * special.stdtr(df, -abs(t))))
    q = float(special.stdtrit(df, 1 - ALPHA / 2))
    return lift, lift - q * se, lift + q * se, p


def _status(n_s: int, n_c: int, min_samples: int, lift: float | None, p: float | None) -> str:
    if n_s < min_samples or n_c < min_samples or lift is None or p is None:
        return "not_enough_data"
    if p < ALPHA:
        return "candidate_better" if lift > 0 else "candidate_worse"
    return "no_difference"


def ab_result(kind: str, stable: Sequence[float], candidate: Sequence[float], min_samples: int) -> ABResult:
    """The A/B verdict on the outcomes of each arm: 0/1 for `kind` "labels", numbers for "values"."""
    n_s, n_c = len(stable), len(candidate)
    mean_s = float(sum(stable) / n_s) if n_s else None
    mean_c = float(sum(candidate) / n_c) if n_c else None
    outcome, test = ("positive_rate", "two-proportion z") if kind == "labels" else ("mean_value", "welch t")
    lift = lo = hi = p = None
    if n_s >= min_samples and n_c >= min_samples:
        if kind == "labels":
            lift, lo, hi, p = two_proportion(int(sum(stable)), n_s, int(sum(candidate)), n_c)
        else:
            lift, lo, hi, p = welch(stable, candidate)
    return ABResult(
        outcome=outcome, stable_n=n_s, candidate_n=n_c, stable_mean=mean_s, candidate_mean=mean_c, lift=lift,
        ci_low=lo, ci_high=hi, p_value=p, test=test, status=_status(n_s, n_c, min_samples, lift, p),  # type: ignore[arg-type]
    )  # fmt: skip


def positive(label: str | None, positive_label: str | None) -> bool:
    if label is None:
        return False
    return label == positive_label or label.strip().lower() in TRUE_LABELS


def outcomes(
    con: Any, endpoint: str, stable_version: int, candidate_version: int, since: float, positive_label: str | None
) -> tuple[str, list[float], list[float]]:
    """("labels" | "values", stable outcomes, candidate outcomes) from feedback joined to the prediction log.

    `con` is a read cursor (closed by the caller). Labels win when any arrived; else values.
    """
    rows = con.execute(
        f"""WITH fb AS (
                SELECT request_id, row_idx, arg_max(label, received_at) AS label, arg_max(value, received_at) AS value
                FROM feedback WHERE endpoint = ? GROUP BY request_id, row_idx)
            SELECT p.version, fb.label, fb.value
            FROM predictions p JOIN fb USING (request_id, row_idx)
            WHERE p.endpoint = ? AND p.status = 'ok' AND p.version IN (?, ?) AND p.ts >= {ts_from_unix("?")}""",
        [endpoint, endpoint, stable_version, candidate_version, since],
    ).fetchall()
    has_labels = any(label is not None for _, label, _ in rows)
    s: list[float] = []
    c: list[float] = []
    for version, label, value in rows:
        if has_labels:
            if label is None:
                continue
            x = 1.0 if positive(label, positive_label) else 0.0
        else:
            if value is None or not math.isfinite(value):
                continue
            x = float(value)
        (c if version == candidate_version else s).append(x)
    return ("labels" if has_labels else "values"), s, c
