"""Reference profiles: what a model version's training (or validation) data looked like, fitted once.

A profile freezes everything windows of serving data are later counted against, so windows never move the bins:

- numeric columns: count, missing (null, NaN or +-inf), min, max, mean, std (ddof=0); coarse `edges` for PSI:
  the reference quantiles (inverted CDF, i.e. actual data values) at 1/bins ... (bins-1)/bins, repeats and the
  minimum dropped, with open outer bins (-inf, e1), [e1, e2), ..., [ek, +inf);
- a `FineGrid` for KS and Wasserstein, see its docstring: the exact distinct values when there are at most
  `fine_bins` of them (KS exact, Wasserstein exact while serving values stay on the reference's values), else
  ~`fine_bins` quantile bins (KS within the largest bin's mass, Wasserstein to within a few percent); values
  outside the reference's range fall in two open cells, where windows keep more (`window.OpenCell`);
- categorical columns: counts per category (values compared as strings, as polars casts them), missing.

The prediction and label columns are profiled the same way, numeric or categorical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import polars as pl

from agent.monitoring.jsonread import count_array, float_array, opt_float, opt_str, read_int

SCHEMA = "watchkeeper.reference-profile/2"

Role = Literal["feature", "prediction", "label"]


def sorted_finite(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Sort a float64 array; return its finite values (a view, ascending) and how many were null/NaN/+-inf.

    Sorting is the fastest way found to count against ~1000 frozen cut points (measured: 27 ms per 1M values,
    against 140 ms for binary-searching every value), and it leaves missing and infinite values at the ends.
    """
    xs = np.sort(x)
    start = int(np.searchsorted(xs, -np.inf, "right"))
    end = int(np.searchsorted(xs, np.inf, "left"))  # numpy sorts NaN after +inf
    return xs[start:end], xs.size - (end - start)


@dataclass(frozen=True, eq=False)
class FineGrid:
    """The fine cells of a numeric column, for KS and Wasserstein.

    mode "exact" (at most `fine_bins` distinct reference values v_0 < ... < v_{K-1}): 2K + 1 cells, alternately
    the open gaps and the points themselves: (-inf, v_0), {v_0}, (v_0, v_1), {v_1}, ..., {v_{K-1}},
    (v_{K-1}, +inf). The reference has mass only on the points, so the KS statistic evaluated at cell ends is
    exactly the two-sample statistic even when serving values fall between reference values; the Wasserstein
    distance is exact while they don't (values in a gap are taken as spread across it).

    mode "binned": cut points b_0 = min < b_1 < ... < b_L = nextafter(max) (reference quantiles at
    1/fine_bins steps plus the coarse edges), cells (-inf, b_0), [b_0, b_1), ..., [b_{L-1}, b_L),
    [b_L, +inf); the outer two hold only values outside the reference range. KS is evaluated at cell
    boundaries: |D_binned - D_exact| <= the largest mass any one cell holds in either sample (within a cell
    both CDFs move by at most their cell mass), ~1/fine_bins for continuous data. Wasserstein takes each
    inner cell's mass as spread uniformly across it (`stats.wasserstein_from_grid`): error at most
    sum (p_i + q_i) x width_i, well under 1 % at fine_bins=1000 in the tests. The two open outer cells are
    handled by `window.wasserstein` from what windows keep there (exact against the reference).
    """

    mode: Literal["exact", "binned"]
    points: np.ndarray  # exact: the distinct values; binned: the cut points b_0..b_L

    @property
    def n_cells(self) -> int:
        return 2 * self.points.size + 1 if self.mode == "exact" else self.points.size + 1

    def cells(self, xs: np.ndarray) -> np.ndarray:
        """Counts per cell of the finite, ascending values `xs` (int64, length n_cells)."""
        cuts = self._cuts(xs)
        out = np.empty(cuts.size + 1, dtype=np.int64)
        out[0] = cuts[0] if cuts.size else xs.size
        if cuts.size:
            np.subtract(cuts[1:], cuts[:-1], out=out[1:-1])
            out[-1] = xs.size - cuts[-1]
        return out

    def _cuts(self, xs: np.ndarray) -> np.ndarray:
        if self.mode == "binned":
            return np.searchsorted(xs, self.points, "left")
        cuts = np.empty(2 * self.points.size, dtype=np.int64)
        cuts[0::2] = np.searchsorted(xs, self.points, "left")
        cuts[1::2] = np.searchsorted(xs, self.points, "right")
        return cuts

    @cached_property
    def _inner(self) -> np.ndarray:
        # Right ends of every cell but the last: each point twice in exact mode (gap ends at v_k, point cell is
        # the zero-width [v_k, v_k]); the cut points in binned mode.
        return np.repeat(self.points, 2) if self.mode == "exact" else self.points

    def grid(self, lo: float | None, hi: float | None) -> np.ndarray:
        """Cell boundaries for `stats.wasserstein_from_grid`; `lo`/`hi` bound the open outer cells (the smallest
        and largest value either sample holds)."""
        inner = self._inner
        if inner.size == 0:
            a = 0.0 if lo is None else lo
            return np.array([a, a if hi is None else max(a, hi)])
        first = inner[0] if lo is None else min(inner[0], lo)
        last = inner[-1] if hi is None else max(inner[-1], hi)
        return np.concatenate(([first], inner, [last]))

    def cell_ends(self) -> np.ndarray:
        """A non-decreasing right end per cell (the order KS evaluates the CDFs in)."""
        inner = self._inner
        return np.append(inner, inner[-1] if inner.size else 0.0)

    def coarse_starts(self, edges: np.ndarray) -> np.ndarray:
        """Index of the first cell of each coarse bin (edges are a subset of the points)."""
        pos = np.searchsorted(self.points, edges)
        first = 2 * pos + 1 if self.mode == "exact" else pos + 1
        return np.concatenate(([0], first)).astype(np.intp)


@dataclass(frozen=True, eq=False)
class NumericColumn:
    """Reference profile of one numeric column (see the module docstring)."""

    name: str
    role: Role
    count: int
    missing: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    edges: np.ndarray  # coarse interior edges, ascending
    fine: FineGrid
    cells: np.ndarray  # reference counts per fine cell
    kind: Literal["numeric"] = field(default="numeric", init=False)

    @cached_property
    def coarse_starts(self) -> np.ndarray:
        return self.fine.coarse_starts(self.edges)

    def coarse(self, cells: np.ndarray) -> np.ndarray:
        """Counts per coarse bin from counts per fine cell."""
        return np.add.reduceat(cells, self.coarse_starts)

    @property
    def coarse_counts(self) -> np.ndarray:
        return self.coarse(self.cells)


@dataclass(frozen=True, eq=False)
class CategoricalColumn:
    """Reference profile of one categorical column: categories (most frequent first) and their counts."""

    name: str
    role: Role
    count: int
    missing: int
    categories: tuple[str, ...]
    counts: np.ndarray
    kind: Literal["categorical"] = field(default="categorical", init=False)

    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}


Column = NumericColumn | CategoricalColumn


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Profiles of every monitored column of one model version, in a stable order."""

    columns: dict[str, Column]
    rows: int
    bins: int
    fine_bins: int
    prediction: str | None = None
    label: str | None = None

    @property
    def features(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.role == "feature"]

    @property
    def numeric(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.kind == "categorical"]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: windows counted against one profile can only merge with each other."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (schema watchkeeper.reference-profile/2); floats round-trip exactly."""
        cols = []
        for c in self.columns.values():
            if isinstance(c, NumericColumn):
                if c.fine.mode == "exact":
                    fine = {"mode": "exact", "values": c.fine.points.tolist(), "counts": c.cells[1::2].tolist()}
                else:
                    fine = {"mode": "binned", "edges": c.fine.points[1:-1].tolist(), "counts": c.cells[1:-1].tolist()}
                cols.append(
                    {
                        "name": c.name,
                        "role": c.role,
                        "kind": "numeric",
                        "count": c.count,
                        "missing": c.missing,
                        "min": c.min,
                        "max": c.max,
                        "mean": c.mean,
                        "std": c.std,
                        "edges": c.edges.tolist(),
                        "fine": fine,
                    }
                )
            else:
                cols.append(
                    {
                        "name": c.name,
                        "role": c.role,
                        "kind": "categorical",
                        "count": c.count,
                        "missing": c.missing,
                        "categories": list(c.categories),
                        "counts": c.counts.tolist(),
                    }
                )
        return {
            "schema": SCHEMA,
            "rows": self.rows,
            "bins": self.bins,
            "fine_bins": self.fine_bins,
            "prediction": self.prediction,
            "label": self.label,
            "columns": cols,
        }

    @classmethod
    def from_json(cls, d: Any) -> ReferenceProfile:
        """Rebuild a profile from `to_json()`; ValueError naming the field for anything malformed."""
        if not isinstance(d, Mapping):
            raise ValueError("profile: expected a JSON object")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
        rows = read_int(d, "rows", "")
        bins = read_int(d, "bins", "", minimum=1)
        fine_bins = read_int(d, "fine_bins", "", minimum=1)
        prediction = opt_str(d, "prediction", "")
        label = opt_str(d, "label", "")
        raw = d.get("columns")
        if not isinstance(raw, list):
            raise ValueError("columns: expected a list")
        columns: dict[str, Column] = {}
        for i, cd in enumerate(raw):
            path = f"columns[{i}]"
            if not isinstance(cd, Mapping):
                raise ValueError(f"{path}: expected an object")
            col = _column_from_json(cd, path)
            if col.name in columns:
                raise ValueError(f"{path}.name: duplicate column {col.name!r}")
            if col.count + col.missing != rows:
                raise ValueError(f"{path}.count: count + missing must equal rows ({rows})")
            columns[col.name] = col
        for key, name, role in (("prediction", prediction, "prediction"), ("label", label, "label")):
            if name is not None and (name not in columns or columns[name].role != role):
                raise ValueError(f"{key}: no column {name!r} with role {role!r}")
        for name, c in columns.items():
            if c.role in ("prediction", "label") and name not in (prediction, label):
                raise ValueError(f"columns: {name!r} has role {c.role!r} but is not the profile's {c.role}")
        return cls(columns=columns, rows=rows, bins=bins, fine_bins=fine_bins, prediction=prediction, label=label)


# ---- fitting ---------------------------------------------------------------------------------------------------


def fit_profile(
    data: pl.DataFrame | Mapping[str, Any],
    numeric: list[str],
    categorical: list[str],
    prediction: str | None = None,
    label: str | None = None,
    *,
    bins: int = 10,
    fine_bins: int = 1000,
    prediction_kind: Literal["numeric", "categorical"] | None = None,
    label_kind: Literal["numeric", "categorical"] | None = None,
) -> ReferenceProfile:
    """Fit the reference profile of `data` (a polars DataFrame, or a dict of arrays/lists).

    `numeric` and `categorical` name the feature columns. The prediction and label columns are numeric when
    their dtype is floating point and categorical otherwise, unless `prediction_kind`/`label_kind` say.
    ValueError names a missing column, a name given twice or a numeric column that isn't numbers.
    """
    if bins < 1 or fine_bins < 1:
        raise ValueError("bins: bins and fine_bins must be at least 1")
    df = data if isinstance(data, pl.DataFrame) else pl.DataFrame(dict(data))
    wanted: list[tuple[str, str, Role]] = [(n, "numeric", "feature") for n in numeric]
    wanted += [(n, "categorical", "feature") for n in categorical]
    for name, role, kind in ((prediction, "prediction", prediction_kind), (label, "label", label_kind)):
        if name is None:
            continue
        if name not in df.columns:
            raise ValueError(f"{role}: no column {name!r} in the data")
        if kind is None:
            kind = "numeric" if df.schema[name].is_float() else "categorical"
        elif kind not in ("numeric", "categorical"):
            raise ValueError(f"{role}_kind: expected 'numeric' or 'categorical', got {kind!r}")
        wanted.append((name, kind, role))  # type: ignore[arg-type]
    seen: set[str] = set()
    columns: dict[str, Column] = {}
    for name, kind, role in wanted:
        if name in seen:
            raise ValueError(f"{name}: column named twice")
        seen.add(name)
        if name not in df.columns:
            raise ValueError(f"{name}: no such column in the data")
        s = df.get_column(name)
        if kind == "numeric":
            columns[name] = _fit_numeric(name, role, float_values(s, name), bins, fine_bins)
        else:
            columns[name] = _fit_categorical(name, role, s)
    return ReferenceProfile(
        columns=columns, rows=df.height, bins=bins, fine_bins=fine_bins, prediction=prediction, label=label
    )


def float_values(s: pl.Series, name: str) -> np.ndarray:
    """A numeric polars Series as float64 with nulls as NaN; ValueError naming the column otherwise."""
    if s.dtype == pl.Float64:
        return s.to_numpy()
    if not (s.dtype.is_numeric() or s.dtype == pl.Boolean or s.dtype == pl.Null):
        raise ValueError(f"{name}: numeric column has dtype {s.dtype}")
    return s.cast(pl.Float64).to_numpy()


def string_values(s: pl.Series) -> pl.Series:
    """Categorical values as polars strings (ints become "1", booleans "true"), the same at fit and update."""
    return s if s.dtype == pl.String else s.cast(pl.String)


def _quantile_index(n: int, levels: int) -> np.ndarray:
    # Inverted-CDF quantile at j/levels, j = 1..levels-1: the smallest x with F(x) >= j/levels, which is
    # sorted[ceil(j n / levels) - 1], in integer arithmetic so no level is off by one ulp.
    j = np.arange(1, levels, dtype=np.int64)
    return (j * n + levels - 1) // levels - 1


def _fit_numeric(name: str, role: Role, x: np.ndarray, bins: int, fine_bins: int) -> NumericColumn:
    valid, missing = sorted_finite(x)
    n = valid.size
    empty = np.empty(0)
    if n == 0:
        fine = FineGrid("exact", empty)
        return NumericColumn(name, role, 0, missing, None, None, None, None, empty, fine, fine.cells(valid))
    lo, hi = float(valid[0]), float(valid[-1])
    edges = np.unique(valid[_quantile_index(n, bins)])
    edges = edges[edges > lo]  # an edge at the minimum would only leave an empty bin below it
    distinct = np.empty(n, dtype=bool)
    distinct[0] = True
    np.not_equal(valid[1:], valid[:-1], out=distinct[1:])
    n_distinct = int(np.count_nonzero(distinct))
    if n_distinct <= fine_bins:
        fine = FineGrid("exact", valid[distinct].copy())
    else:
        qs = valid[_quantile_index(n, fine_bins)]
        points = np.unique(np.concatenate(([lo], qs, edges, [np.nextafter(hi, np.inf)])))
        fine = FineGrid("binned", points)
    return NumericColumn(
        name=name,
        role=role,
        count=n,
        missing=missing,
        min=lo,
        max=hi,
        mean=float(np.mean(valid)),
        std=float(np.std(valid)),
        edges=edges,
        fine=fine,
        cells=fine.cells(valid),
    )


def _fit_categorical(name: str, role: Role, s: pl.Series) -> CategoricalColumn:
    s = string_values(s)
    missing = s.null_count()
    vc = s.drop_nulls().alias("value").value_counts()
    pairs = sorted(zip(vc.to_series(0).to_list(), vc.to_series(1).to_list(), strict=True), key=lambda p: (-p[1], p[0]))
    return CategoricalColumn(
        name=name,
        role=role,
        count=s.len() - missing,
        missing=missing,
        categories=tuple(p[0] for p in pairs),
        counts=np.array([p[1] for p in pairs], dtype=np.int64),
    )


def _column_from_json(cd: Mapping, path: str) -> Column:
    name = cd.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}.name: expected a non-empty string")
    role = cd.get("role")
    if role not in ("feature", "prediction", "label"):
        raise ValueError(f"{path}.role: expected 'feature', 'prediction' or 'label', got {role!r}")
    count = read_int(cd, "count", path)
    missing = read_int(cd, "missing", path)
    kind = cd.get("kind")
    if kind == "categorical":
        cats = cd.get("categories")
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats) or len(set(cats)) != len(cats):
            raise ValueError(f"{path}.categories: expected a list of distinct strings")
        counts = count_array(cd, "counts", path, len(cats))
        if int(counts.sum()) != count:
            raise ValueError(f"{path}.counts: sum {int(counts.sum())} differs from count {count}")
        return CategoricalColumn(name, role, count, missing, tuple(cats), counts)
    if kind != "numeric":
        raise ValueError(f"{path}.kind: expected 'numeric' or 'categorical', got {kind!r}")
    lo = opt_float(cd, "min", path)
    hi = opt_float(cd, "max", path)
    mean = opt_float(cd, "mean", path)
    std = opt_float(cd, "std", path)
    edges = float_array(cd, "edges", path)
    fd = cd.get("fine")
    fpath = f"{path}.fine"
    if not isinstance(fd, Mapping):
        raise ValueError(f"{fpath}: expected an object")
    if count == 0:
        if any(v is not None for v in (lo, hi, mean, std)) or edges.size:
            raise ValueError(f"{path}.min: a column without values has no min, max, mean, std or edges")
        fine = FineGrid("exact", np.empty(0))
        return NumericColumn(name, role, 0, missing, None, None, None, None, edges, fine, np.zeros(1, np.int64))
    if lo is None or hi is None or mean is None or std is None or lo > hi or std < 0:
        raise ValueError(f"{path}.min: min <= max, mean and std >= 0 are required when count > 0")
    mode = fd.get("mode")
    if mode == "exact":
        values = float_array(fd, "values", fpath)
        per_value = count_array(fd, "counts", fpath, values.size)
        if values.size == 0 or values[0] != lo or values[-1] != hi:
            raise ValueError(f"{fpath}.values: must run from min to max")
        fine = FineGrid("exact", values)
        cells = np.zeros(fine.n_cells, dtype=np.int64)
        cells[1::2] = per_value
    elif mode == "binned":
        inner = float_array(fd, "edges", fpath)
        in_range = count_array(fd, "counts", fpath, inner.size + 1)
        if inner.size and (inner[0] <= lo or inner[-1] > hi):
            raise ValueError(f"{fpath}.edges: must lie in (min, max]")
        fine = FineGrid("binned", np.concatenate(([lo], inner, [np.nextafter(hi, np.inf)])))
        cells = np.concatenate(([0], in_range, [0])).astype(np.int64)
    else:
        raise ValueError(f"{fpath}.mode: expected 'exact' or 'binned', got {mode!r}")
    if int(cells.sum()) != count:
        raise ValueError(f"{fpath}.counts: sum {int(cells.sum())} differs from count {count}")
    if edges.size and (edges[0] <= lo or not np.all(np.isin(edges, fine.points))):
        raise ValueError(f"{path}.edges: coarse edges must be fine cut points above min")
    return NumericColumn(name, role, count, missing, lo, hi, mean, std, edges, fine, cells)
