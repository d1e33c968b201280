"""What a window histogram counts per column, and the exact arithmetic on it: the open outer cells of a numeric
column (`OpenCell`), counting a column of a batch, adding counts, and Wasserstein over fine and open cells.

agent/monitoring/window.py puts these together per column into a mergeable `WindowHistogram`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl

from agent.monitoring.profile import CategoricalColumn, NumericColumn, float_values, string_values
from agent.monitoring.stats import wasserstein_from_grid

# Unseen categories are counted in full; their names are kept for the 20 most frequent. With more than 20
# distinct unseen names a merge keeps the top 20 of each side's top 20, so the names (not the counts) are then
# approximate and merge order can matter.
UNSEEN_TOP = 20


# Distinct values kept per open outer cell (a sentinel such as 999 or -1 is one value). Beyond this only the
# cell's count and exact sum are kept; see `wasserstein` for what that still makes exact.
OPEN_VALUES = 64


@dataclass
class OpenCell:
    """Values in one open outer cell of a numeric column (outside the reference's range), beyond its count.

    `values`: distinct value -> count while there are at most OPEN_VALUES of them, else None. `total`: the exact
    sum of the values (a Fraction, so merges in any order give the same sum); None only in windows stored before
    it was kept (then the cell's values are taken to lie halfway between its edge and the window's extreme).
    """

    values: dict[float, int] | None = field(default_factory=dict)
    total: Fraction | None = field(default_factory=Fraction)

    @classmethod
    def of(cls, xs: np.ndarray) -> OpenCell:
        """The cell holding the ascending finite values `xs`."""
        if xs.size == 0:
            return cls()
        starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        values = None
        if starts.size <= OPEN_VALUES:
            counts = np.diff(np.r_[starts, xs.size])
            # + 0.0 folds -0.0 into 0.0, so the key doesn't depend on which of the two a window saw first
            values = {float(v) + 0.0: int(n) for v, n in zip(xs[starts].tolist(), counts.tolist(), strict=True)}
        return cls(values, exact_sum(xs))

    def add(self, other: OpenCell) -> None:
        if self.values is not None and other.values is not None:
            merged = dict(self.values)
            for v, n in other.values.items():
                merged[v] = merged.get(v, 0) + n
            self.values = merged if len(merged) <= OPEN_VALUES else None
        else:
            self.values = None
        self.total = None if self.total is None or other.total is None else self.total + other.total

    def to_json(self) -> dict[str, Any]:
        values = None if self.values is None else [[v, n] for v, n in sorted(self.values.items())]
        return {"values": values, "sum": None if self.total is None else str(self.total)}


def exact_sum(xs: np.ndarray) -> Fraction:
    """The exact sum of finite float64 values, vectorised: each value is an integer mantissa (< 2**53) times a
    power of two. Mantissas are split into halves of < 2**27 and summed per exponent with bincount; its float64
    partial sums stay below 2**53, so exact, for chunks of up to 2**25 values. Exponents are combined as ints."""
    total = Fraction(0)
    for k in range(0, xs.size, 1 << 25):
        m, e = np.frexp(xs[k : k + (1 << 25)])
        mant = np.ldexp(m, 53).astype(np.int64)  # exact
        base = int(e.min())
        idx = e - base
        hi = np.bincount(idx, weights=(mant >> 26).astype(np.float64))
        lo = np.bincount(idx, weights=(mant & ((1 << 26) - 1)).astype(np.float64))
        for off in np.flatnonzero((hi != 0) | (lo != 0)).tolist():
            n = (int(hi[off]) << 26) + int(lo[off])
            shift = base + off - 53
            total += n * (1 << shift) if shift >= 0 else Fraction(n, 1 << -shift)
    return total


@dataclass
class NumericCounts:
    """One numeric column in one window."""

    cells: np.ndarray  # int64 counts per fine cell of the profile
    missing: int = 0  # null, NaN, +-inf, or the column absent from an update
    out_of_range: int = 0
    min: float | None = None  # of the finite values counted
    max: float | None = None
    below: OpenCell = field(default_factory=OpenCell)  # values in the open cell under the reference's range
    above: OpenCell = field(default_factory=OpenCell)  # ... and over it

    @property
    def n(self) -> int:
        return int(self.cells.sum())


@dataclass
class CategoricalCounts:
    """One categorical column in one window."""

    counts: np.ndarray  # int64 counts per reference category, profile order
    missing: int = 0
    unseen: int = 0
    unseen_top: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Non-missing values, unseen ones included."""
        return int(self.counts.sum()) + self.unseen


# ---- Wasserstein over the fine cells and the open cells ---------------------------------------------------------


def wasserstein(col: NumericColumn, a: NumericCounts, b: NumericCounts) -> float:
    """Wasserstein distance between two windows (or a window and the reference) of one numeric column.

    Inside the reference's range it is `stats.wasserstein_from_grid` over the fine cells (exact on the reference's
    own values in exact mode, each cell's mass spread across it otherwise: see `FineGrid`). In the two open outer
    cells the values themselves are used:
    - both sides' distinct values known (at most OPEN_VALUES each, merged): exact;
    - one side holds nothing there (always so against the reference, which has no values outside its range):
      exact from the other side's exact sum, because |F_a - F_b| keeps one sign across the cell, so its integral
      is that side's share x (mean - edge), the same as a point mass at the mean;
    - else (both hold values there, one has more than OPEN_VALUES distinct ones): each such side is taken as a
      point mass at its mean; the cell's contribution is then off by at most 2 x min(A_a, A_b), A = share in the
      cell x |mean - edge| (both the true and this value lie in [|A_a - A_b|, A_a + A_b]).
    NaN when either side is empty.
    """
    na, nb = a.n, b.n
    if na == 0 or nb == 0:
        return math.nan
    inner = col.fine._inner
    if inner.size == 0:  # a reference without values: no cells to place anything in
        return 0.0
    lower = _open_points(a.below, b.below, int(a.cells[0]), int(b.cells[0]), inner[0], a.min, b.min)
    upper = _open_points(a.above, b.above, int(a.cells[-1]), int(b.cells[-1]), inner[-1], a.max, b.max)
    # Cell i spans [bounds[i], bounds[i + 1]]. A point mass is a zero-width cell; the gaps between points (and up
    # to the range's edges) hold nothing, so the CDF difference is constant there and is integrated exactly.
    bounds: list[float] = [lower[0][0] if lower else float(inner[0])]
    ca: list[int] = []
    cb: list[int] = []

    def cell(right: float, x: int, y: int) -> None:
        bounds.append(right)
        ca.append(x)
        cb.append(y)

    for v, x, y in lower:
        cell(v, 0, 0)  # the gap from the previous point (zero width before the first)
        cell(v, x, y)
    if lower:
        cell(float(inner[0]), 0, 0)
    bounds.extend(inner[1:].tolist())
    ca.extend(a.cells[1:-1].tolist())
    cb.extend(b.cells[1:-1].tolist())
    for v, x, y in upper:
        cell(v, 0, 0)
        cell(v, x, y)
    return wasserstein_from_grid(bounds, ca, cb)


def _open_points(
    a: OpenCell, b: OpenCell, na: int, nb: int, edge: float, a_ext: float | None, b_ext: float | None
) -> list[tuple[float, int, int]]:
    """(value, count a, count b) point masses standing for both sides' values in one open cell, ascending."""
    pts: dict[float, list[int]] = {}
    for side, (cell, n, ext) in enumerate(((a, na, a_ext), (b, nb, b_ext))):
        if n == 0:
            continue
        if cell.values is not None:
            items = list(cell.values.items())
        elif cell.total is not None:
            items = [(float(cell.total / n), n)]
        else:  # stored before open cells were kept: halfway to the window's extreme, as the old uniform spread
            items = [((edge + (edge if ext is None else ext)) / 2.0, n)]
        for v, k in items:
            pts.setdefault(v, [0, 0])[side] += k
    return [(v, c[0], c[1]) for v, c in sorted(pts.items())]


def _column_getter(frame: pl.DataFrame | Mapping[str, Any]):
    """(get(name, numeric) -> float64 array | polars String Series | None, rows) for a frame or dict."""
    if isinstance(frame, pl.DataFrame):
        present = set(frame.columns)

        def get_pl(name: str, numeric: bool):
            if name not in present:
                return None
            s = frame.get_column(name)
            return float_values(s, name) if numeric else string_values(s)

        return get_pl, frame.height
    if not isinstance(frame, Mapping):
        raise ValueError("frame: expected a polars DataFrame or a dict of columns")
    lengths = {name: len(v) for name, v in frame.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"frame: columns have different lengths {lengths}")
    rows = next(iter(lengths.values()), 0)

    def get_dict(name: str, numeric: bool):
        if name not in frame:
            return None
        v = frame[name]
        if numeric:
            if isinstance(v, pl.Series):
                return float_values(v, name)
            try:
                arr = np.asarray(v, dtype=np.float64)  # None becomes NaN
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name}: numeric column holds non-numbers ({e})") from None
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected a one-dimensional column")
            return arr
        s = v if isinstance(v, pl.Series) else pl.Series("value", v, strict=False)
        return string_values(s)

    return get_dict, rows


def _count_categories(col: CategoricalColumn, s: pl.Series) -> CategoricalCounts:
    counts = np.zeros(len(col.categories), dtype=np.int64)
    missing = s.null_count()
    # One hash pass over the rows; the Python loop runs over distinct values only.
    vc = s.alias("value").value_counts()
    index = col.index
    unseen = 0
    names: dict[str, int] = {}
    for value, n in zip(vc.to_series(0).to_list(), vc.to_series(1).to_list(), strict=True):
        if value is None:
            continue
        i = index.get(value)
        if i is None:
            unseen += n
            names[value] = n
        else:
            counts[i] += n
    return CategoricalCounts(counts, missing, unseen, dict(_top(names)))


def _top(names: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[:UNSEEN_TOP]


def _add(acc: NumericCounts | CategoricalCounts, part: NumericCounts | CategoricalCounts) -> None:
    acc.missing += part.missing
    if isinstance(acc, NumericCounts):
        assert isinstance(part, NumericCounts)
        acc.cells += part.cells
        acc.out_of_range += part.out_of_range
        acc.below.add(part.below)
        acc.above.add(part.above)
        if part.min is not None:
            acc.min = part.min if acc.min is None else min(acc.min, part.min)
            acc.max = part.max if acc.max is None else max(acc.max, part.max)  # type: ignore[type-var]
    else:
        assert isinstance(part, CategoricalCounts)
        acc.counts += part.counts
        acc.unseen += part.unseen
        if part.unseen_top:
            merged = dict(acc.unseen_top)
            for k, v in part.unseen_top.items():
                merged[k] = merged.get(k, 0) + v
            acc.unseen_top = dict(_top(merged))
