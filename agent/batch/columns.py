"""Arrow record batches as the model's float32 matrix, and its output as prediction columns (batch transform).

The same rules as the real-time encoder (`agent/serving/encode.py`), a column at a time over Arrow arrays:
a missing value is imputed (endpoint policy "impute" with a signature impute value) or rejects its row;
a wrong type, a non-integer for an int, a value beyond float32 reject their row; out-of-range values and
unseen categories are counted and scored. The same row therefore gives the same float32 vector, hence the
same score, here and through `POST /predict`. A rejected row names its first bad field and why, as a 422
would; the others in the batch are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent.registry.signature import encoded_width
from agent.schemas import Signature
from agent.serving.encode import F32_MAX

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass
class Encoded:
    """One batch: the matrix of its good rows, which rows those are, and why the others were rejected."""

    matrix: np.ndarray  # float32 [good rows, width]
    good: np.ndarray  # bool [rows]
    reasons: dict[int, tuple[str, str]]  # row in batch -> (field, message), first problem only
    raw_num: list[np.ndarray]  # per numeric feature, float64 as received (NaN = missing), for the log
    raw_cat: list[pa.Array]  # per category feature, strings as received
    missing: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)


class ArrowEncoder:
    """Encode Arrow tables/batches for one signature and missing policy."""

    def __init__(self, sig: Signature, missing_policy: str = "reject") -> None:
        self.signature = sig
        self.width = encoded_width(sig)
        self.impute = missing_policy == "impute"
        self.features = []
        offset = 0
        for f in sig.features:
            self.features.append((f, offset))
            offset += len(f.categories or ()) if f.dtype == "category" else 1
        self.numeric_names = [f.name for f in sig.features if f.dtype != "category"]
        self.category_names = [f.name for f in sig.features if f.dtype == "category"]

    def encode(self, batch: pa.Table | pa.RecordBatch) -> Encoded:
        """Every feature column must be present (the caller checks the file's schema first)."""
        n = batch.num_rows
        mat = np.zeros((n, self.width), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, tuple[str, str]] = {}
        enc = Encoded(mat, bad, reasons, [], [])

        def reject(mask: np.ndarray, name: str, message: str | Sequence[str]) -> None:
            for r in np.nonzero(mask & ~bad)[0].tolist():
                reasons[r] = (name, message if isinstance(message, str) else message[r])
            bad[mask] = True

        for spec, off in self.features:
            col = batch.column(spec.name)
            if spec.dtype == "category":
                self._category(spec, off, col, enc, reject)
            else:
                self._numeric(spec, off, col, enc, reject)
        enc.good = ~bad
        enc.matrix = mat if not bad.any() else mat[enc.good]
        return enc

    def _numeric(self, spec, off: int, col, enc: Encoded, reject) -> None:
        name = spec.name
        typ = col.type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or pa.types.is_null(typ):
            if pa.types.is_boolean(typ) and spec.dtype != "bool":
                reject(np.ones(len(col), bool), name, "expected a number, got a boolean")
                raw = np.zeros(len(col))
            else:
                raw = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            raw, msgs = _parse_numbers(col)
            reject(msgs != None, name, msgs)  # noqa: E711 (elementwise)
        enc.raw_num.append(raw)
        miss = np.isnan(raw)
        used = raw
        if miss.any():
            enc.missing[name] = int(miss.sum())
            if self.impute and spec.impute is not None:
                used = np.where(miss, float(spec.impute), raw)
            else:
                why = "missing value" if not self.impute else "missing value and no impute value"
                reject(miss, name, why)
                used = np.where(miss, 0.0, raw)
        over = np.abs(used) > F32_MAX
        if over.any():
            reject(over & np.isinf(used), name, "infinite value")
            reject(over, name, "beyond the model input's range (float32)")
            used = np.where(over, 0.0, used)
        if spec.dtype == "int":
            reject(used != np.round(used), name, "expected an integer")
        elif spec.dtype == "bool":
            reject(~np.isin(used, (0.0, 1.0)), name, "expected a boolean")
        oor = np.zeros(len(used), dtype=bool)
        if spec.min is not None:
            oor |= used < spec.min
        if spec.max is not None:
            oor |= used > spec.max
        if oor.any():
            enc.out_of_range[name] = int(oor.sum())
        enc.matrix[:, off] = used

    def _category(self, spec, off: int, col, enc: Encoded, reject) -> None:
        name = spec.name
        typ = col.type
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(typ) and (
            pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)
        ):
            # Parquet's dictionary pages read as is: look each distinct value up once, then index by code.
            self._category_dict(spec, off, col, enc, reject)
            return
        if pa.types.is_dictionary(typ):
            col = pc.cast(col, pa.string())
            typ = col.type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)):
            kind = "a number" if (pa.types.is_integer(typ) or pa.types.is_floating(typ)) else str(typ)
            reject(np.asarray(pc.is_valid(col)), name, f"expected a string, got {kind}")
            col = pa.nulls(len(col), pa.string())
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        col = col.cast(pa.string())
        enc.raw_cat.append(col)
        miss = np.asarray(col.is_null())
        used = col
        if miss.any():
            enc.missing[name] = int(miss.sum())
            if self.impute and spec.impute is not None:
                used = pc.fill_null(col, str(spec.impute))
            else:
                reject(miss, name, "missing value" if not self.impute else "missing value and no impute value")
        pos = pc.index_in(used, value_set=pa.array(spec.categories or [], pa.string()))
        pos_np = np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        seen = pos_np >= 0
        unseen = int((~seen & ~np.asarray(used.is_null())).sum())
        if unseen:
            enc.unseen[name] = unseen
        rows = np.nonzero(seen)[0]
        enc.matrix[rows, off + pos_np[seen]] = 1.0

    def _category_dict(self, spec, off: int, col: pa.DictionaryArray, enc: Encoded, reject) -> None:
        name = spec.name
        enc.raw_cat.append(col)
        cats = pa.array(spec.categories or [], pa.string())
        dict_pos = np.asarray(pc.index_in(col.dictionary.cast(pa.string()), value_set=cats).fill_null(-1), np.int64)
        codes = col.indices
        miss = np.asarray(codes.is_null())
        idx = np.asarray(codes.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        pos = dict_pos[idx] if len(dict_pos) else np.full(len(idx), -1, np.int64)
        if miss.any():
            enc.missing[name] = int(miss.sum())
            if self.impute and spec.impute is not None:
                imp = (spec.categories or []).index(spec.impute) if spec.impute in (spec.categories or []) else -1
                pos = np.where(miss, imp, pos)
            else:
                reject(miss, name, "missing value" if not self.impute else "missing value and no impute value")
                pos = np.where(miss, -1, pos)
        seen = pos >= 0
        unseen = int((~seen & ~miss).sum())
        if unseen:
            enc.unseen[name] = unseen
        rows = np.nonzero(seen)[0]
        enc.matrix[rows, off + pos[seen]] = 1.0


def _parse_numbers(col) -> tuple[np.ndarray, np.ndarray]:
    """A text column where numbers were expected (a CSV column with a stray word): numbers parsed, the rest
    NaN with a message each (an object array, None where the value was fine)."""
    vals = col.to_pylist()
    out = np.full(len(vals), np.nan)
    msgs = np.full(len(vals), None, dtype=object)
    for i, v in enumerate(vals):
        if v is None or v == "":
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            msgs[i] = f"expected a number, got {str(v)[:40]!r}"
    return out, msgs


def decode(out: np.ndarray, sig: Signature) -> tuple[pa.Array, pa.Array | None, np.ndarray]:
    """Model output [rows, k] as the `score` and `label` columns (vectorised `agent/serving/codec.decode_output`),
    and a mask of rows whose score is not finite (rejected: real time would answer 502 for them)."""
    spec = sig.output
    if spec.kind == "multiclass":
        idx = out.argmax(axis=1)
        scores = out[np.arange(len(out)), idx].astype(np.float64)
        names = spec.labels or [str(i) for i in range(out.shape[1])]
        labels = pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(names))
        bad = ~np.isfinite(out).all(axis=1)
    elif spec.kind == "binary":
        scores = (out[:, -1] if out.shape[1] > 1 else out[:, 0]).astype(np.float64)
        names = spec.labels or ["0", "1"]
        pick = (scores >= spec.threshold).astype(np.int32)
        labels = pa.DictionaryArray.from_arrays(pa.array(pick), pa.array(names))
        bad = ~np.isfinite(scores)
    else:
        scores = out[:, 0].astype(np.float64)
        labels = None
        bad = ~np.isfinite(scores)
    return pa.array(scores, pa.float64()), labels, bad
