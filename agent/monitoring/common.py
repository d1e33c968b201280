"""What the monitor's parts share: numpy and the statistics modules loaded on first use, its error, the
latest window's reports, and conversions from store rows to arrays and wire values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.schemas import DriftReportOut, FeatureDriftOut, ModelVersion, QualityWindow

if TYPE_CHECKING:
    import numpy as np

    from agent.monitoring import quality as q
    from agent.monitoring.profile import ReferenceProfile


_USERS: list[dict[str, Any]] = []  # the globals of the monitor's modules that use the names loaded lazily


def lazy_statistics(namespace: dict[str, Any]) -> None:
    """Have `_load_statistics` put numpy and the statistics names into this module's globals too."""
    _USERS.append(namespace)


def _load_statistics() -> None:
    """Import numpy and the statistics modules on first use (an agent serving nothing never does)."""
    import numpy as np

    from agent.monitoring import quality as q
    from agent.monitoring.drift import DriftThresholds, compare
    from agent.monitoring.profile import ReferenceProfile
    from agent.monitoring.window import WindowHistogram

    names = {
        "np": np, "q": q, "DriftThresholds": DriftThresholds, "compare": compare,
        "ReferenceProfile": ReferenceProfile, "WindowHistogram": WindowHistogram,
    }  # fmt: skip
    for ns in _USERS:
        ns.update(names)


class MonitorError(Exception):
    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


@dataclass
class _Latest:
    version: ModelVersion
    start: float
    end: float
    reports: dict[str, DriftReportOut]  # baseline -> report


# ---------------------------------------------------------------------- helpers


def _range_source(spec: Any, f: Any) -> str | None:
    """Where a numeric feature's out-of-range bounds came from: the signature, the reference profile, or both
    (one bound each). None for categorical columns, the prediction, and bounds open on both sides."""
    if f.kind != "numeric" or (f.range_min is None and f.range_max is None):
        return None
    from_sig = [spec is not None and getattr(spec, k) is not None for k in ("min", "max")]
    if all(from_sig):
        return "signature"
    return "signature+reference" if any(from_sig) else "reference"


def _profile_names(prof: ReferenceProfile) -> set[str]:
    return set(prof.numeric) | set(prof.categorical)


def _is_categorical(prof: ReferenceProfile, name: str) -> bool:
    return name in prof.categorical


def _frame(batch: Any, num_names: list[str], cat_names: list[str], prediction: str | None) -> dict[str, np.ndarray]:
    """Columns of a record batch of (num DOUBLE[], cat VARCHAR[], score) as one array per feature."""
    import pyarrow.compute as pc

    n = batch.num_rows
    frame: dict[str, np.ndarray] = {}
    if num_names:
        col = batch.column(0)
        vals = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
        if vals.size == n * len(num_names):
            mat = vals.reshape(n, len(num_names))
            for i, f in enumerate(num_names):
                frame[f] = mat[:, i]
    if cat_names:
        col = batch.column(1)
        vals = np.asarray(pc.list_flatten(col).to_pylist(), dtype=object)
        if vals.size == n * len(cat_names):
            mat = vals.reshape(n, len(cat_names))
            for i, f in enumerate(cat_names):
                frame[f] = mat[:, i]
    if prediction is not None:
        frame[prediction] = batch.column(2).to_numpy(zero_copy_only=False).astype(np.float64)
    return frame


def _quality_windows(tbl: Any, w: float, kind: str, positive: str | None) -> list[QualityWindow]:
    if tbl.num_rows == 0:
        return []
    d = {c: tbl.column(c).to_numpy(zero_copy_only=False) for c in tbl.column_names}
    keys = sorted({(m, int(v), float(ws)) for m, v, ws in zip(d["model"], d["version"], d["ws"], strict=True)})
    out = []
    for model, version, ws in keys:
        sel = (d["model"] == model) & (d["version"] == version) & (d["ws"] == ws)
        truth = d["truth"][sel]
        tv = d["truth_value"][sel].astype(np.float64)
        labelled = (truth != None) | ~np.isnan(tv)  # noqa: E711 (elementwise over an object array)
        qw = QualityWindow(model=model, version=version, window_start=ws, window_end=ws + w,
                           labelled=int(labelled.sum()), predictions=int(sel.sum()))  # fmt: skip
        if labelled.any():
            if kind == "regression":
                t = np.where(np.isnan(tv), np.array([_to_float(x) for x in truth]), tv)
                m = q.regression(d["score"][sel].astype(np.float64)[labelled], t[labelled])
            else:
                m = q.classification(
                    d["score"][sel].astype(np.float64)[labelled] if kind == "binary" else None,
                    d["predicted"][sel][labelled], truth[labelled], positive,
                )  # fmt: skip
            qw = qw.model_copy(update={k: v for k, v in m.items() if v is not None})
        out.append(qw)
    return out


def _positive_label(mv: ModelVersion) -> str | None:
    spec = mv.signature.output
    if spec.kind != "binary":
        return None
    return (spec.labels or ["0", "1"])[1]


def _to_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(f: Any) -> dict[str, Any]:
    """A FeatureDrift as wire fields: NaN/inf become None (JSON has no NaN)."""
    d = f.__dict__ if hasattr(f, "__dict__") else dict(f)
    out = {}
    for k in FeatureDriftOut.model_fields:
        if k not in d:
            continue
        v = d[k]
        if isinstance(v, float | np.floating):
            v = _finite(v)
        elif isinstance(v, np.integer | np.bool_):
            v = v.item()
        elif isinstance(v, Iterable) and not isinstance(v, str):
            v = list(v)
        out[k] = v
    return out


def _dumps(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _loads(s: str) -> Any:
    import orjson

    return orjson.loads(s)


lazy_statistics(globals())
