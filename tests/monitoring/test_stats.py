"""The count-based statistics against scipy (the oracle), to 1e-9."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from agent.monitoring.stats import (
    chi2_2xk,
    js_distance,
    ks_exact_sf,
    ks_from_counts,
    psi,
    wasserstein_from_counts,
    wasserstein_from_grid,
    wasserstein_norm_from_counts,
    weighted_std,
)

RTOL = 1e-9


def support_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a union b (NaN excluded, as missing) and each sample's count at every value."""
    a = a[~np.isnan(a)]
    b = b[~np.isnan(b)]
    values = np.unique(np.concatenate([a, b]))
    a = np.sort(a)
    b = np.sort(b)

    def at(x):
        return np.searchsorted(x, values, "right") - np.searchsorted(x, values, "left")

    return values, at(a), at(b)


def close(got: float, want: float, atol: float = 1e-15) -> bool:
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=atol)


def samples(rng: np.random.Generator, kind: str, m: int, n: int, shift: float):
    if kind == "normal":
        return rng.normal(size=m), rng.normal(shift, 1.0, size=n)
    if kind == "ties":  # integer data: many ties within and across samples
        return rng.integers(0, 12, m).astype(float), (rng.integers(0, 12, n) + round(shift * 3)).astype(float)
    if kind == "nan":
        a, b = rng.normal(size=m), rng.normal(shift, 1.0, size=n)
        a[rng.random(m) < 0.1] = np.nan
        b[rng.random(n) < 0.2] = np.nan
        return a, b
    if kind == "constant":
        return np.full(m, 3.0), np.full(n, 3.0 + shift)
    raise AssertionError(kind)


CASES = [
    (kind, m, n, shift, seed)
    for seed, (m, n) in enumerate([(1, 1), (1, 7), (5, 5), (13, 40), (100, 100), (250, 173), (600, 2500), (999, 1001)])
    for kind in ("normal", "ties", "nan", "constant")
    for shift in (0.0, 0.4)
]


@pytest.mark.parametrize(("kind", "m", "n", "shift", "seed"), CASES)
def test_ks_matches_scipy_auto(kind, m, n, shift, seed):
    rng = np.random.default_rng(seed)
    a, b = samples(rng, kind, m, n, shift)
    values, r, c = support_counts(a, b)
    got = ks_from_counts(values, r, c)
    aa, bb = a[~np.isnan(a)], b[~np.isnan(b)]
    if aa.size == 0 or bb.size == 0:
        assert math.isnan(got.statistic) and math.isnan(got.pvalue)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback to 'asymp' inside scipy would hide a mismatch
        want = stats.ks_2samp(aa, bb)
    assert close(got.statistic, float(want.statistic)), (got, want)
    assert close(got.pvalue, float(want.pvalue)), (got, want)
    assert (got.n_ref, got.n_cur) == (aa.size, bb.size)


@pytest.mark.parametrize(("m", "n"), [(2000, 9000), (3000, 3500), (10000, 10000), (10000, 10001), (40000, 3000)])
def test_ks_exact_and_asymptotic_regimes(m, n):
    # 2000 x 9000 takes the row walk, 3000 x 3500 the diagonal walk, equal sizes the closed formula; past 10000
    # scipy's auto switches to the asymptotic distribution, and so do we.
    rng = np.random.default_rng(m + n)
    for shift in (0.0, 0.05, 0.3):
        a, b = rng.normal(size=m), rng.normal(shift, 1.0, size=n)
        values, r, c = support_counts(a, b)
        got = ks_from_counts(values, r, c)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            want = stats.ks_2samp(a, b)
        assert close(got.statistic, float(want.statistic))
        assert close(got.pvalue, float(want.pvalue), atol=1e-14), (m, n, shift, got.pvalue, want.pvalue)


def test_ks_forced_asymp_matches_scipy_asymp():
    rng = np.random.default_rng(7)
    for m, n in [(30, 70), (500, 400), (5000, 100)]:
        a, b = rng.integers(0, 30, m).astype(float), rng.integers(2, 31, n).astype(float)
        values, r, c = support_counts(a, b)
        got = ks_from_counts(values, r, c, method="asymp")
        want = stats.ks_2samp(a, b, method="asymp")
        assert close(got.statistic, float(want.statistic))
        assert close(got.pvalue, float(want.pvalue))


def test_ks_exact_small_p_values_keep_relative_precision():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=1500), rng.normal(0.6, 1.0, size=800)
    values, r, c = support_counts(a, b)
    got = ks_from_counts(values, r, c)
    want = stats.ks_2samp(a, b)
    assert want.pvalue < 1e-20
    assert math.isclose(got.pvalue, float(want.pvalue), rel_tol=1e-9)


def test_ks_exact_sf_degenerate():
    assert ks_exact_sf(5, 7, 0) == 1.0
    assert ks_exact_sf(4, 4, 16) == pytest.approx(2 / math.comb(8, 4))  # all of one sample first, either order
    assert ks_exact_sf(1, 1, 1) == 1.0


def test_ks_empty_and_bad_input():
    r = ks_from_counts([1.0, 2.0], [0, 0], [3, 4])
    assert math.isnan(r.statistic) and math.isnan(r.pvalue) and (r.n_ref, r.n_cur) == (0, 7)
    r = ks_from_counts([], [], [])
    assert math.isnan(r.statistic)
    with pytest.raises(ValueError, match="cur_counts"):
        ks_from_counts([1.0, 2.0], [1, 2], [1])
    with pytest.raises(ValueError, match="values"):
        ks_from_counts([2.0, 1.0], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="whole counts"):
        ks_from_counts([1.0, 2.0], [1.5, 2], [1, 1])
    with pytest.raises(ValueError, match="method"):
        ks_from_counts([1.0], [1], [1], method="nope")


@pytest.mark.parametrize(("kind", "m", "n", "shift", "seed"), CASES)
def test_wasserstein_matches_scipy(kind, m, n, shift, seed):
    rng = np.random.default_rng(100 + seed)
    a, b = samples(rng, kind, m, n, shift)
    values, r, c = support_counts(a, b)
    aa, bb = a[~np.isnan(a)], b[~np.isnan(b)]
    got = wasserstein_from_counts(values, r, c)
    if aa.size == 0 or bb.size == 0:
        assert math.isnan(got)
        return
    want = stats.wasserstein_distance(aa, bb)
    assert close(got, want), (got, want)
    # the same through the cell representation: point cells at the values, empty open cells between
    grid = np.concatenate([values[:1], np.repeat(values, 2)])
    cells_r = np.zeros(2 * values.size, dtype=np.int64)
    cells_c = np.zeros(2 * values.size, dtype=np.int64)
    cells_r[1::2], cells_c[1::2] = r, c
    assert close(wasserstein_from_grid(grid, cells_r, cells_c), want)
    # normalised by the reference's population std (ddof=0), as Evidently
    norm = wasserstein_norm_from_counts(values, r, c)
    sd = float(np.std(aa))
    if sd > 0:
        assert close(norm, want / sd)
        assert close(weighted_std(values, r), sd)
    else:
        assert close(norm, want / 1e-3)


def test_wasserstein_weighted_matches_scipy_weights():
    rng = np.random.default_rng(5)
    values = np.sort(rng.normal(size=50))
    r, c = rng.integers(0, 20, 50), rng.integers(0, 20, 50)
    assert close(wasserstein_from_counts(values, r, c), stats.wasserstein_distance(values, values, r, c))


def test_wasserstein_grid_error_bound_on_continuous_data():
    # Cells as a profile builds them: 1000 reference quantile cells inside [min, max], open cells outside.
    rng = np.random.default_rng(11)
    a = rng.normal(size=20000)
    inner = np.unique(np.concatenate([[a.min()], np.quantile(a, np.arange(1, 1000) / 1000), [a.max() + 1e-12]]))
    for b in (rng.normal(0.2, 1.3, size=15000), rng.normal(0.0, 1.0, size=15000), rng.normal(0.5, 1.0, size=5000)):
        grid = np.concatenate([[min(a.min(), b.min())], inner, [max(inner[-1], b.max())]])
        cr = np.bincount(np.searchsorted(inner, a, "right"), minlength=inner.size + 1)
        cc = np.bincount(np.searchsorted(inner, b, "right"), minlength=inner.size + 1)
        got = wasserstein_from_grid(grid, cr, cc)
        want = stats.wasserstein_distance(a, b)
        bound = float(np.sum((cr / cr.sum() + cc / cc.sum()) * np.diff(grid)))
        assert abs(got - want) <= bound
        assert abs(got - want) < 0.05 * want  # in practice far inside the bound


def chi2_table(r, c):
    t = np.array([r, c], dtype=float)
    return t[:, t.sum(axis=0) > 0]


@pytest.mark.parametrize("seed", range(12))
def test_chi2_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = [2, 2, 3, 5, 8, 20][seed % 6]
    p = rng.dirichlet(np.ones(k))
    r = rng.multinomial(int(rng.integers(5, 5000)), p)
    q = p if seed % 2 else rng.dirichlet(np.ones(k))
    c = rng.multinomial(int(rng.integers(5, 3000)), q)
    if seed % 3 == 0:  # a category empty on both sides is dropped, as scipy would refuse it
        r = np.append(r, 0)
        c = np.append(c, 0)
    got = chi2_2xk(r, c)
    want = stats.chi2_contingency(chi2_table(r, c))
    assert close(got.statistic, float(want.statistic), atol=1e-12)
    assert close(got.pvalue, float(want.pvalue), atol=1e-15)
    assert got.dof == want.dof


def test_chi2_two_by_two_uses_yates_like_scipy():
    r, c = [30, 10], [20, 25]
    got = chi2_2xk(r, c)
    want = stats.chi2_contingency(np.array([r, c]))
    assert got.dof == 1
    assert close(got.statistic, float(want.statistic)) and close(got.pvalue, float(want.pvalue))
    plain = stats.chi2_contingency(np.array([r, c]), correction=False)
    assert close(chi2_2xk(r, c, correction=False).statistic, float(plain.statistic))


def test_chi2_degenerate():
    assert chi2_2xk([10, 0], [4, 0]) == (0.0, 1.0, 0)  # single category: scipy's (0, 1) with dof 0
    want = stats.chi2_contingency(np.array([[10], [4]]))
    assert (want.statistic, want.pvalue) == (0.0, 1.0)
    empty = chi2_2xk([10, 3], [0, 0])
    assert math.isnan(empty.statistic) and math.isnan(empty.pvalue)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("base", [2.0, math.e])
def test_js_distance_matches_scipy(seed, base):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 30))
    r = rng.integers(0, 100, k)
    c = rng.integers(0, 100, k) if seed % 3 else r * 3
    r[0] += 1
    c[-1] += 1
    assert close(js_distance(r, c, base=base), float(jensenshannon(r, c, base=base)), atol=1e-12)


def test_js_distance_disjoint_and_empty():
    assert close(js_distance([5, 0], [0, 9]), 1.0)
    assert js_distance([1, 2, 3], [2, 4, 6]) == 0.0
    assert math.isnan(js_distance([0, 0], [1, 2]))


def direct_psi(r, c, eps):
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        p = ri / sum(r) or eps
        q = ci / sum(c) or eps
        total += (q - p) * math.log(q / p)
    return total


@pytest.mark.parametrize("seed", range(8))
def test_psi_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 50, 10)
    c = rng.integers(0, 50, 10)
    r[seed % 10] = 0  # empty bins take eps
    c[(seed + 3) % 10] = 0
    for eps in (1e-4, 1e-6):
        assert close(psi(r, c, eps=eps), direct_psi(r.tolist(), c.tolist(), eps))
    assert psi(r + 1, r + 1) == 0.0
    assert math.isnan(psi([0, 0], [1, 1])) and math.isnan(psi([1, 1], [0, 0]))


def test_everything_is_nan_on_empty_windows():
    v = [1.0, 2.0, 3.0]
    z = [0, 0, 0]
    full = [4, 5, 6]
    assert math.isnan(psi(full, z)) and math.isnan(js_distance(full, z))
    assert math.isnan(wasserstein_from_counts(v, full, z)) and math.isnan(wasserstein_norm_from_counts(v, full, z))
    assert math.isnan(wasserstein_from_grid([0.0, *v], full, z))
    assert math.isnan(ks_from_counts(v, z, full).pvalue) and math.isnan(chi2_2xk(z, full).pvalue)
