"""Validate request rows against a model signature and encode them into the model's float matrix.

Per row and feature: unknown field, wrong type, and (under the "reject" policy) a missing value are
errors that name the row and field (the request gets 422). Out-of-range values, unseen categories
and imputed missing values are not errors: they are counted (data quality) and the row is served.
This runs on the event loop for every request, so it is plain loops over small lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.registry.signature import encoded_width
from agent.schemas import FeatureSpec, Signature
from agent.serving.errors import ValidationFailed

if TYPE_CHECKING:
    import numpy as np

VECTOR_MIN_ROWS = 32
# The encoded matrix is float32 (every runtime takes it as is): a larger magnitude would become
# Infinity in the cast and the model would answer NaN, served as `score: null` with a definite label.
F32_MAX = 3.4028234663852886e38
MAX_ERRORS = 50  # per request: enough to fix a payload, bounded so a huge bad one can't bloat the answer


@dataclass
class Quality:
    """Data-quality counts of one request, per feature name."""

    missing: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def bump(d: dict[str, int], name: str) -> None:
        d[name] = d.get(name, 0) + 1


@dataclass
class Encoded:
    matrix: np.ndarray  # float32 [rows, width]
    # Numeric features as received (None = missing), for the log: rows x num_width values, row-major,
    # flat so the log keeps one list per request rather than one per row.
    num: list[float | None]
    cat: list[str | None]
    quality: Quality
    num_width: int = 0
    cat_width: int = 0


@dataclass(frozen=True)
class _Feature:
    spec: FeatureSpec
    offset: int
    index: dict[str, int] | None  # category -> one-hot position


_NUMERIC = (int, float)
_NUMBER_TYPES = frozenset({int, float, type(None)})
_BOOL_TYPES = frozenset({bool, int, float, type(None)})
_CATEGORY_TYPES = frozenset({str, type(None)})


class Encoder:
    def __init__(self, sig: Signature, missing_policy: str = "reject") -> None:
        self.signature = sig
        self.width = encoded_width(sig)
        self.impute = missing_policy == "impute"
        feats: list[_Feature] = []
        offset = 0
        for f in sig.features:
            if f.dtype == "category":
                cats = f.categories or []
                feats.append(_Feature(f, offset, {c: i for i, c in enumerate(cats)}))
                offset += len(cats)
            else:
                feats.append(_Feature(f, offset, None))
                offset += 1
        self._features = feats
        self._by_name = {f.spec.name: f for f in feats}
        self.numeric_names = [f.spec.name for f in feats if f.index is None]
        self.category_names = [f.spec.name for f in feats if f.index is not None]

    def encode_records(self, records: list[Any]) -> Encoded:
        """Rows as JSON objects. Raises ValidationFailed with every error (up to MAX_ERRORS)."""
        import numpy as np  # lazily: an agent serving nothing never imports numpy

        n = len(records)
        mat = np.zeros((n, self.width), dtype=np.float32)
        errors: list[dict[str, Any]] = []
        q = Quality()
        nums: list[float | None] = []
        cats: list[str | None] = []
        by_name = self._by_name
        for r, rec in enumerate(records):
            if not isinstance(rec, dict):
                errors.append({"row": r, "field": None, "message": "a record must be a JSON object"})
                continue
            for key in rec:
                if key not in by_name:
                    errors.append({"row": r, "field": key, "message": "unknown field"})
            row = mat[r]
            for f in self._features:
                v = rec.get(f.spec.name)
                ok = self._one(f, v, row, r, nums, cats, errors, q)
                if not ok and len(errors) >= MAX_ERRORS:
                    break
            if len(errors) >= MAX_ERRORS:
                break
        if errors:
            raise ValidationFailed(errors[:MAX_ERRORS])
        return Encoded(mat, nums, cats, q, len(self.numeric_names), len(self.category_names))

    def encode_columns(self, columns: Any) -> Encoded:
        """Columnar form {feature: [values...]}: same checks and result as records, one list per feature.

        Clean columns (every feature present, no unknown field, values of the right JSON types) are encoded
        with numpy a column at a time, without a Python step per value; anything else is transposed to
        records so each error names its row and field exactly as the records path would.
        """
        if not isinstance(columns, dict) or not columns:
            raise ValidationFailed([{"row": None, "field": "columns", "message": "expected an object of lists"}])
        lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
        if -1 in lengths:
            bad = next(k for k, v in columns.items() if not isinstance(v, list))
            raise ValidationFailed([{"row": None, "field": bad, "message": "expected a list"}])
        if len(lengths) != 1:
            raise ValidationFailed([{"row": None, "field": "columns", "message": "columns differ in length"}])
        n = lengths.pop()
        # numpy's per-call overhead loses below ~20 rows (measured: bench/encode.py); small requests transpose.
        fast = self._encode_clean_columns(columns, n) if n >= VECTOR_MIN_ROWS else None
        if fast is not None:
            return fast
        names = list(columns)
        cols = [columns[k] for k in names]
        return self.encode_records([dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)][:n])

    def _encode_clean_columns(self, columns: dict[str, list], n: int) -> Encoded | None:
        """The vectorised path; None when the columns need the per-value path (errors, odd types)."""
        import numpy as np

        if len(columns) != len(self._features) or any(k not in self._by_name for k in columns):
            return None
        mat = np.zeros((n, self.width), dtype=np.float32)
        q = Quality()
        num_cols: list[np.ndarray] = []
        cat_cols: list[list[str | None]] = []
        for f in self._features:
            spec = f.spec
            col = columns[spec.name]
            types = set(map(type, col))
            if f.index is None:
                allowed = _BOOL_TYPES if spec.dtype == "bool" else _NUMBER_TYPES
                if not types <= allowed:
                    return None
                raw = np.array(col, dtype=np.float64)  # None -> NaN
                if (np.abs(raw) > F32_MAX).any():  # infinite or beyond float32: the per-value path names it
                    return None
                miss = np.isnan(raw)
                used = raw
                if miss.any():
                    if not self.impute or spec.impute is None:
                        return None
                    q.missing[spec.name] = int(miss.sum())
                    used = np.where(miss, float(spec.impute), raw)
                if spec.dtype == "int" and not np.array_equal(used, np.round(used)):
                    return None
                if spec.dtype == "bool" and not np.isin(used, (0.0, 1.0)).all():
                    return None
                oor = np.zeros(n, dtype=bool)
                if spec.min is not None:
                    oor |= used < spec.min
                if spec.max is not None:
                    oor |= used > spec.max
                if oor.any():
                    q.out_of_range[spec.name] = int(oor.sum())
                mat[:, f.offset] = used
                num_cols.append(raw)
            else:
                if not types <= _CATEGORY_TYPES:
                    return None
                missing = col.count(None)
                used_col: list = col
                if missing:
                    if not self.impute or spec.impute is None:
                        return None
                    q.missing[spec.name] = missing
                    used_col = [spec.impute if v is None else v for v in col]
                index = f.index
                assert index is not None
                pos = np.fromiter((index.get(str(v), -1) for v in used_col), dtype=np.int64, count=n)
                seen = pos >= 0
                unseen = n - int(seen.sum())
                if unseen:
                    q.unseen[spec.name] = unseen
                rows = np.nonzero(seen)[0]
                mat[rows, f.offset + pos[seen]] = 1.0
                cat_cols.append(col)
        # The log keeps what was received, row-major; missing numerics as NaN (the log stores them as NULL).
        num = np.column_stack(num_cols).ravel().tolist() if num_cols else []
        cat = list(cat_cols[0]) if len(cat_cols) == 1 else [v for row in zip(*cat_cols, strict=True) for v in row]
        return Encoded(mat, num, cat, q, len(self.numeric_names), len(self.category_names))

    def _one(
        self,
        f: _Feature,
        v: Any,
        row: np.ndarray,
        r: int,
        num_row: list[float | None],
        cat_row: list[str | None],
        errors: list[dict[str, Any]],
        q: Quality,
    ) -> bool:
        spec = f.spec
        if v is None or (isinstance(v, float) and math.isnan(v)):
            Quality.bump(q.missing, spec.name)
            if not self.impute:
                errors.append({"row": r, "field": spec.name, "message": "missing value"})
                return False
            if spec.impute is None:
                errors.append({"row": r, "field": spec.name, "message": "missing value and no impute value"})
                return False
            v_use = spec.impute
            if f.index is None:
                num_row.append(None)
            else:
                cat_row.append(None)
        else:
            v_use = v
            if f.index is None:
                if spec.dtype == "bool":
                    if not isinstance(v, bool) and v not in (0, 1):
                        errors.append({"row": r, "field": spec.name, "message": "expected a boolean"})
                        return False
                elif isinstance(v, bool) or not isinstance(v, _NUMERIC):
                    errors.append({"row": r, "field": spec.name, "message": f"expected a number, got {_kind(v)}"})
                    return False
                elif spec.dtype == "int" and isinstance(v, float) and not v.is_integer():
                    errors.append({"row": r, "field": spec.name, "message": "expected an integer"})
                    return False
                elif not -F32_MAX <= v <= F32_MAX:
                    msg = "infinite value" if math.isinf(v) else f"{v:g} is beyond the model input's range (float32)"
                    errors.append({"row": r, "field": spec.name, "message": msg})
                    return False
                num_row.append(float(v))
            else:
                if not isinstance(v, str):
                    errors.append({"row": r, "field": spec.name, "message": f"expected a string, got {_kind(v)}"})
                    return False
                cat_row.append(v)
        if f.index is None:
            x = float(v_use)
            if (spec.min is not None and x < spec.min) or (spec.max is not None and x > spec.max):
                Quality.bump(q.out_of_range, spec.name)
            row[f.offset] = x
        else:
            pos = f.index.get(str(v_use))
            if pos is None:
                Quality.bump(q.unseen, spec.name)  # encodes as all zeros
            else:
                row[f.offset + pos] = 1.0
        return True


def _kind(v: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)
