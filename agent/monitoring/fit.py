"""Reference profiles fitted at registration from uploaded Parquet data, and the validation-skew check.

Column conventions of the uploaded data: one column per signature feature (same names), optionally
`score` (the model's output on those rows: the prediction reference) and `label` (the true class or
target: the label reference; 0/1 or booleans are mapped to the output's label names for binary models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.schemas import Signature

PREDICTION = "__prediction__"
LABEL = "__label__"


class FitError(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _read(path: Path, signature: Signature, field: str) -> Any:
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a bad file
        raise FitError(f"{field} is not readable Parquet: {str(e).splitlines()[0][:200]}", field) from None
    missing = [f.name for f in signature.features if f.name not in df.columns]
    if missing:
        raise FitError(f"{field} data lacks the signature's columns {missing}", field)
    if df.height == 0:
        raise FitError(f"{field} data has no rows", field)
    try:
        return reference_frame(df, signature)
    except Exception:  # polars refuses a cast (a word in a numeric column, a nested type): say which column
        raise _bad_column(df, signature, field) from None


def _bad_column(df: Any, signature: Signature, field: str) -> FitError:
    """The first column whose cast fails, named, with a value that can't be converted."""
    import polars as pl

    for name, expr in _expressions(df, signature):
        try:
            df.select(expr)
            continue
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        src = df.get_column(name)
        if src.dtype == pl.String:
            bad = src.filter(src.cast(pl.Float64, strict=False).is_null() & src.is_not_null())
            if bad.len():
                return FitError(
                    f"{field} column {name!r} must hold numbers, but {bad.len()} of its values are not "
                    f"(e.g. {bad[0]!r})",
                    f"{field}.{name}",
                )
        return FitError(f"{field} column {name!r} ({src.dtype}) cannot be read: {reason}", f"{field}.{name}")
    return FitError(f"{field} data could not be read as the signature's columns", field)


def reference_frame(df: Any, signature: Signature) -> Any:
    """The feature columns, with `score`/`label` renamed to the profile's prediction/label names."""
    return df.select([expr for _, expr in _expressions(df, signature)])


def _expressions(df: Any, signature: Signature) -> list[tuple[str, Any]]:
    """(source column, polars expression) for every column the profile is fitted on."""
    import polars as pl

    cols = [(f.name, pl.col(f.name).cast(pl.Utf8) if f.dtype == "category" else pl.col(f.name).cast(pl.Float64))
            for f in signature.features]  # fmt: skip
    if "score" in df.columns:
        cols.append(("score", pl.col("score").cast(pl.Float64).alias(PREDICTION)))
    if "label" in df.columns:
        lab = pl.col("label")
        out = signature.output
        dtype = df.schema["label"]
        if out.kind == "binary" and (dtype == pl.Boolean or dtype.is_integer()):
            names = out.labels or ["0", "1"]
            lab = pl.when(lab.cast(pl.Int64) == 1).then(pl.lit(names[1])).otherwise(pl.lit(names[0]))
        elif out.kind == "regression":
            lab = lab.cast(pl.Float64)
        else:
            lab = lab.cast(pl.Utf8)
        cols.append(("label", lab.alias(LABEL)))
    return cols


def fit_for_signature(frame: Any, signature: Signature) -> Any:
    """A ReferenceProfile of a frame made by `reference_frame`."""
    from agent.monitoring.profile import fit_profile

    return fit_profile(
        frame,
        numeric=[f.name for f in signature.features if f.dtype != "category"],
        categorical=[f.name for f in signature.features if f.dtype == "category"],
        prediction=PREDICTION if PREDICTION in frame.columns else None,
        label=LABEL if LABEL in frame.columns else None,
        prediction_kind="numeric",
        label_kind="numeric" if signature.output.kind == "regression" else "categorical",
    )


def profile_for_registration(signature: Signature, reference: Path, validation: Path | None) -> dict:
    """Fit the profile from `reference`; with `validation`, record its skew against it in the profile."""
    from agent.monitoring.drift import DriftThresholds, compare
    from agent.monitoring.window import WindowHistogram

    ref = _read(reference, signature, "reference")
    try:
        prof = fit_for_signature(ref, signature)
    except ValueError as e:  # names the column
        raise FitError(f"reference data: {e}", "reference") from None
    body = prof.to_json()
    if validation is not None:
        val = _read(validation, signature, "validation")
        hist = WindowHistogram.empty(prof)
        try:
            hist.update(val)
        except ValueError as e:
            raise FitError(f"validation data: {e}", "validation") from None
        rep = compare(WindowHistogram.from_profile(prof), hist, DriftThresholds())
        body["validation_skew"] = rep.to_json()
    return body
