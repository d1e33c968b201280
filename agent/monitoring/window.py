"""Mergeable histograms of serving data over a profile's frozen bins.

A `WindowHistogram` holds, per monitored column, counts: the fine cells of numeric columns (the coarse PSI bins
are sums of them), counts per reference category, missing values, values outside the expected range, unseen
categories. Merging adds counts, so drift over any time range is a merge of stored windows with no re-scan, and
merging is exact and associative (the unseen-category names excepted, see `UNSEEN_TOP`).

The two open outer cells of a numeric column (below the reference's smallest value, above its largest) also
keep what Wasserstein needs to stay exact there (`OpenCell`): their distinct values with counts while there are
at most `OPEN_VALUES`, and always the exact (rational) sum of their values. Both merge exactly.

`WindowHistogram.from_profile(profile)` is the reference itself as a histogram: reference and windows go through
the same comparison code.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl

from agent.monitoring.cells import (
    OPEN_VALUES,
    UNSEEN_TOP,
    CategoricalCounts,
    NumericCounts,
    OpenCell,
    _add,
    _column_getter,
    _count_categories,
    _top,
    exact_sum,
    wasserstein,
)
from agent.monitoring.profile import NumericColumn, ReferenceProfile, sorted_finite

__all__ = ["SCHEMA", "UNSEEN_TOP", "OpenCell", "Range", "WindowHistogram", "exact_sum", "wasserstein"]

SCHEMA = "watchkeeper.window-histogram/1"

# Below this many rows one thread is faster than handing columns to a pool (measured on 2 cores, 25 columns:
# 10k rows ~5 ms on one thread, the pool pays off between 20k and 40k rows; numpy's sort releases the GIL).
PARALLEL_MIN_ROWS = 32_768

Range = tuple[float | None, float | None]


class WindowHistogram:
    """Counts of one window of serving data (or of the reference) over a profile's frozen bins."""

    def __init__(
        self,
        profile: ReferenceProfile,
        ranges: dict[str, Range] | None = None,
        *,
        _columns: dict[str, NumericCounts | CategoricalCounts] | None = None,
        _rows: int = 0,
    ) -> None:
        self.profile = profile
        self.ranges: dict[str, Range] = _check_ranges(profile, ranges)
        self.rows = _rows
        if _columns is None:
            _columns = {}
            for name, col in profile.columns.items():
                if isinstance(col, NumericColumn):
                    _columns[name] = NumericCounts(np.zeros(col.fine.n_cells, dtype=np.int64))
                else:
                    _columns[name] = CategoricalCounts(np.zeros(len(col.categories), dtype=np.int64))
        self.columns = _columns

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, profile: ReferenceProfile, ranges: dict[str, Range] | None = None) -> WindowHistogram:
        """An empty window. `ranges` maps numeric columns to the (min, max) a signature allows (None: open);
        values outside count as out of range. Columns not in `ranges` use the reference's min and max."""
        return cls(profile, ranges)

    @classmethod
    def from_profile(cls, profile: ReferenceProfile) -> WindowHistogram:
        """The reference data as a histogram (nothing is out of range or unseen in it, by construction)."""
        cols: dict[str, NumericCounts | CategoricalCounts] = {}
        for name, col in profile.columns.items():
            if isinstance(col, NumericColumn):
                cols[name] = NumericCounts(col.cells.copy(), col.missing, 0, col.min, col.max)  # open cells empty
            else:
                cols[name] = CategoricalCounts(col.counts.copy(), col.missing)
        return cls(profile, None, _columns=cols, _rows=profile.rows)

    def copy(self) -> WindowHistogram:
        return self.merge(WindowHistogram(self.profile, self.ranges))

    # ---- counting --------------------------------------------------------------------------------------------

    def update(
        self,
        frame: pl.DataFrame | Mapping[str, Any],
        *,
        threads: int | None = None,
        columns: Iterable[str] | None = None,
    ) -> WindowHistogram:
        """Count the rows of `frame` (a polars DataFrame or a dict of arrays/lists) into this window; returns self.

        Numeric values may be null/NaN (missing; so are +-inf); categorical values may be None. A monitored
        column absent from `frame` counts as missing on every row; extra columns are ignored. `columns` limits
        the update to those monitored columns (e.g. the prediction of only the rows a model answered); the
        window's `rows` grows only when every feature column is counted. `threads`: columns are counted in
        parallel for frames of PARALLEL_MIN_ROWS rows or more (default min(4, CPUs)); 1 turns that off. The
        window is unchanged if a column is malformed (ValueError naming it).
        """
        get, rows = _column_getter(frame)
        names = list(self.profile.columns)
        if columns is not None:
            wanted = set(columns)
            names = [n for n in names if n in wanted]
        if threads is None:
            threads = min(4, os.cpu_count() or 1) if rows >= PARALLEL_MIN_ROWS else 1
        if threads > 1 and len(names) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(lambda n: self._count(n, get, rows), names))
        else:
            parts = [self._count(n, get, rows) for n in names]
        # Everything was counted before anything is added, so a bad column leaves the window as it was.
        for name, part in zip(names, parts, strict=True):
            _add(self.columns[name], part)
        if set(self.profile.features) <= set(names):
            self.rows += rows
        return self

    def _count(self, name: str, get, rows: int) -> NumericCounts | CategoricalCounts:
        col = self.profile.columns[name]
        if isinstance(col, NumericColumn):
            x = get(name, numeric=True)
            if x is None:
                return NumericCounts(np.zeros(col.fine.n_cells, dtype=np.int64), missing=rows)
            valid, bad = sorted_finite(x)
            lo, hi = self.ranges.get(name, (col.min, col.max))
            oor = 0
            if valid.size:
                if lo is not None:
                    oor += int(np.searchsorted(valid, lo, "left"))
                if hi is not None:
                    oor += valid.size - int(np.searchsorted(valid, hi, "right"))
            cells = col.fine.cells(valid)
            return NumericCounts(
                cells,
                missing=bad,
                out_of_range=oor,
                min=float(valid[0]) if valid.size else None,
                max=float(valid[-1]) if valid.size else None,
                # the open cells are the ends of the sorted values: slices, no extra pass
                below=OpenCell.of(valid[: cells[0]]) if cells.size > 1 else OpenCell(),
                above=OpenCell.of(valid[valid.size - cells[-1] :]) if cells.size > 1 else OpenCell(),
            )
        s = get(name, numeric=False)
        if s is None:
            return CategoricalCounts(np.zeros(len(col.categories), dtype=np.int64), missing=rows)
        return _count_categories(col, s)

    # ---- combining -------------------------------------------------------------------------------------------

    def merge(self, other: WindowHistogram) -> WindowHistogram:
        """A new histogram holding both windows' counts. Same profile and ranges required (ValueError)."""
        if not isinstance(other, WindowHistogram):
            raise ValueError("merge: expected a WindowHistogram")
        if other.profile is not self.profile and other.profile.fingerprint != self.profile.fingerprint:
            raise ValueError("profile: windows counted against different reference profiles cannot merge")
        if other.ranges != self.ranges:
            raise ValueError("ranges: windows with different expected ranges cannot merge")
        out = WindowHistogram(self.profile, self.ranges)
        for name, acc in out.columns.items():
            _add(acc, self.columns[name])
            _add(acc, other.columns[name])
        out.rows = self.rows + other.rows
        return out

    @classmethod
    def merge_all(cls, windows: list[WindowHistogram]) -> WindowHistogram:
        """Merge a non-empty list of windows, left to right."""
        if not windows:
            raise ValueError("windows: nothing to merge")
        out = windows[0].copy()
        for w in windows[1:]:
            out = out.merge(w)
        return out

    # ---- reading ---------------------------------------------------------------------------------------------

    def cells(self, name: str) -> np.ndarray:
        """Counts per fine cell of a numeric column."""
        c = self.columns[name]
        if not isinstance(c, NumericCounts):
            raise ValueError(f"{name}: not a numeric column")
        return c.cells

    def coarse_counts(self, name: str) -> np.ndarray:
        """Counts per coarse bin of a numeric column (the profile's `edges`), or per category."""
        c = self.columns[name]
        col = self.profile.columns[name]
        if isinstance(c, NumericCounts):
            return col.coarse(c.cells)  # type: ignore[union-attr]
        return c.counts

    def shares(self, name: str) -> tuple[list[str], list[float]]:
        """Bin labels and the share of present values in each, for display: a numeric column's coarse bins
        ("< e1", "[e1, e2)", ..., ">= ek"), or a categorical column's reference categories then "(unseen)".
        All shares are 0 when nothing was counted."""
        c = self.columns[name]
        col = self.profile.columns[name]
        if isinstance(c, NumericCounts):
            edges = [f"{e:.6g}" for e in col.edges.tolist()]  # type: ignore[union-attr]
            if not edges:
                labels = ["all"]
            else:
                labels = [f"< {edges[0]}", *(f"[{a}, {b})" for a, b in itertools.pairwise(edges))]
                labels.append(f">= {edges[-1]}")
            counts = col.coarse(c.cells)  # type: ignore[union-attr]
        else:
            labels = [*col.categories, "(unseen)"]  # type: ignore[union-attr]
            counts = np.append(c.counts, c.unseen)
        total = int(counts.sum())
        return labels, (counts / total).tolist() if total else [0.0] * len(labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowHistogram):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    # ---- JSON ------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (schema watchkeeper.window-histogram/1). Counts are stored densely, or as
        [indices, counts] when that is shorter (most cells of a small window are empty)."""
        cols: dict[str, Any] = {}
        for name, c in self.columns.items():
            if isinstance(c, NumericCounts):
                cols[name] = {
                    "kind": "numeric",
                    "missing": c.missing,
                    "out_of_range": c.out_of_range,
                    "min": c.min,
                    "max": c.max,
                    **_encode_counts("cells", c.cells),
                }
                # Only a cell holding values is written; a window without the key holds none there, or was
                # stored before open cells were kept (then its count says which).
                for key, cell, count in (("below", c.below, c.cells[0]), ("above", c.above, c.cells[-1])):
                    if count and c.cells.size > 1:
                        cols[name][key] = cell.to_json()
            else:
                cols[name] = {
                    "kind": "categorical",
                    "missing": c.missing,
                    "unseen": c.unseen,
                    "unseen_top": [[k, v] for k, v in _top(c.unseen_top)],
                    **_encode_counts("counts", c.counts),
                }
        return {
            "schema": SCHEMA,
            "profile": self.profile.fingerprint,
            "rows": self.rows,
            "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
            "columns": cols,
        }

    @classmethod
    def from_json(cls, d: Any, profile: ReferenceProfile) -> WindowHistogram:
        """Rebuild a window counted against `profile`; ValueError naming the field for malformed input."""
        if not isinstance(d, Mapping):
            raise ValueError("window: expected a JSON object")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
        if d.get("profile") != profile.fingerprint:
            raise ValueError("profile: the window was counted against another reference profile")
        rows = d.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ValueError("rows: expected an integer >= 0")
        raw_ranges = d.get("ranges", {})
        if not isinstance(raw_ranges, Mapping):
            raise ValueError("ranges: expected an object")
        ranges: dict[str, Range] = {}
        for k, v in raw_ranges.items():
            if not isinstance(v, list) or len(v) != 2:
                raise ValueError(f"ranges.{k}: expected [min, max]")
            ranges[k] = (v[0], v[1])
        raw = d.get("columns")
        if not isinstance(raw, Mapping):
            raise ValueError("columns: expected an object")
        if set(raw) != set(profile.columns):
            raise ValueError(f"columns: expected {sorted(profile.columns)}, got {sorted(raw)}")
        cols: dict[str, NumericCounts | CategoricalCounts] = {}
        for name, col in profile.columns.items():
            cd = raw[name]
            path = f"columns.{name}"
            if not isinstance(cd, Mapping):
                raise ValueError(f"{path}: expected an object")
            missing = _nonneg(cd, "missing", path)
            if isinstance(col, NumericColumn):
                if cd.get("kind") != "numeric":
                    raise ValueError(f"{path}.kind: expected 'numeric'")
                cells = _decode_counts(cd, "cells", path, col.fine.n_cells)
                lo, hi = cd.get("min"), cd.get("max")
                for key, v in (("min", lo), ("max", hi)):
                    if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
                        raise ValueError(f"{path}.{key}: expected a number or null")
                if (lo is None) != (int(cells.sum()) == 0) or (hi is None) != (lo is None):
                    raise ValueError(f"{path}.min: min and max are null exactly when no value was counted")
                c: NumericCounts | CategoricalCounts = NumericCounts(
                    cells,
                    missing,
                    _nonneg(cd, "out_of_range", path),
                    None if lo is None else float(lo),
                    None if hi is None else float(hi),
                    _open_cell(cd, "below", path, int(cells[0]), col, cells.size),
                    _open_cell(cd, "above", path, int(cells[-1]), col, cells.size),
                )
            else:
                if cd.get("kind") != "categorical":
                    raise ValueError(f"{path}.kind: expected 'categorical'")
                counts = _decode_counts(cd, "counts", path, len(col.categories))
                top = cd.get("unseen_top", [])
                if not isinstance(top, list) or not all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) for p in top
                ):
                    raise ValueError(f"{path}.unseen_top: expected a list of [name, count]")
                c = CategoricalCounts(counts, missing, _nonneg(cd, "unseen", path), {p[0]: p[1] for p in top})
            # A feature sees every row; the prediction and label columns may be counted for fewer
            # (`update(columns=...)`: only answered rows, labels as they arrive), never for more.
            if c.n + c.missing > rows or (col.role == "feature" and c.n + c.missing != rows):
                raise ValueError(f"{path}.missing: counts + missing must equal rows ({rows})")
            cols[name] = c
        return cls(profile, ranges, _columns=cols, _rows=rows)


# ---- helpers ---------------------------------------------------------------------------------------------------


def _open_cell(cd: Mapping, key: str, path: str, count: int, col: NumericColumn, n_cells: int) -> OpenCell:
    """An open cell from JSON; absent with a count means a window stored before open cells were kept."""
    raw = cd.get(key)
    if raw is None:
        return OpenCell() if count == 0 or n_cells < 2 else OpenCell(None, None)
    where = f"{path}.{key}"
    if n_cells < 2 or not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object")
    total: Fraction | None = None
    if raw.get("sum") is not None:
        try:
            total = Fraction(str(raw["sum"]))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{where}.sum: expected an exact fraction such as '1999/2'") from None
    values = raw.get("values")
    if values is None:
        return OpenCell(None, total)
    ok = isinstance(values, list) and len(values) <= OPEN_VALUES
    ok = ok and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int | float) and not isinstance(p[0], bool)
        and math.isfinite(p[0]) and isinstance(p[1], int) and not isinstance(p[1], bool) and p[1] > 0
        for p in values
    )  # fmt: skip
    if not ok:
        raise ValueError(f"{where}.values: expected at most {OPEN_VALUES} [value, count] pairs")
    vals = {float(p[0]) + 0.0: p[1] for p in values}
    edge = col.fine.points[0] if key == "below" else col.fine.points[-1]
    inside = all(v < edge for v in vals) if key == "below" else all(v >= edge for v in vals)
    if len(vals) != len(values) or sum(vals.values()) != count or not inside:
        raise ValueError(f"{where}.values: must be distinct values of the cell whose counts sum to {count}")
    if total != sum((Fraction(v) * n for v, n in vals.items()), Fraction(0)):
        raise ValueError(f"{where}.sum: differs from the sum of the values")
    return OpenCell(vals, total)


def _check_ranges(profile: ReferenceProfile, ranges: dict[str, Range] | None) -> dict[str, Range]:
    out: dict[str, Range] = {}
    for name, r in (ranges or {}).items():
        col = profile.columns.get(name)
        if not isinstance(col, NumericColumn):
            raise ValueError(f"ranges.{name}: not a numeric column of the profile")
        if not isinstance(r, tuple | list) or len(r) != 2:
            raise ValueError(f"ranges.{name}: expected (min, max)")
        lo, hi = (None if v is None else float(v) for v in r)
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"ranges.{name}: min {lo} is above max {hi}")
        out[name] = (lo, hi)
    return out


def _encode_counts(key: str, counts: np.ndarray) -> dict[str, Any]:
    nz = np.flatnonzero(counts)
    if 2 * nz.size < counts.size:
        return {f"{key}_sparse": [nz.tolist(), counts[nz].tolist()]}
    return {key: counts.tolist()}


def _decode_counts(cd: Mapping, key: str, path: str, length: int) -> np.ndarray:
    if key in cd:
        v = cd[key]
        if not isinstance(v, list) or len(v) != length:
            raise ValueError(f"{path}.{key}: expected {length} counts")
        out = np.array(v, dtype=np.int64) if all(isinstance(x, int) and not isinstance(x, bool) for x in v) else None
    elif f"{key}_sparse" in cd:
        v = cd[f"{key}_sparse"]
        ok = isinstance(v, list) and len(v) == 2 and all(isinstance(p, list) for p in v) and len(v[0]) == len(v[1])
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for p in v for x in p)
        if not ok:
            raise ValueError(f"{path}.{key}_sparse: expected [indices, counts]")
        idx = np.array(v[0], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= length or np.any(np.diff(idx) <= 0)):
            raise ValueError(f"{path}.{key}_sparse: indices must be ascending within 0..{length - 1}")
        out = np.zeros(length, dtype=np.int64)
        out[idx] = v[1]
    else:
        raise ValueError(f"{path}.{key}: missing")
    if out is None or (out.size and out.min() < 0):
        raise ValueError(f"{path}.{key}: expected non-negative integer counts")
    return out


def _nonneg(cd: Mapping, key: str, path: str) -> int:
    v = cd.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{path}.{key}: expected an integer >= 0")
    return v
