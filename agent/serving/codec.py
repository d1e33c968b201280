"""What the predict path and a candidate's routing share: counting and encoding a request's rows, decoding a
model's output, the time a request has left, and the errors an answer is made of.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import orjson

from agent.schemas import ModelVersion
from agent.serving.endpoints import Answer, Endpoint
from agent.serving.errors import ValidationFailed

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.encode import Encoded, Encoder


def left_s(ep: Endpoint, t0: float) -> float:
    """What is left of the endpoint's timeout for a request that arrived at t0 (seconds, >= 0)."""
    return max(0.0, ep.config.timeout_ms / 1000 - (time.perf_counter() - t0))


class InjectedFault(Exception):
    """A failure the endpoint's `fault` config asked for (chaos testing), counted like a model error."""


class TooManyRows(Exception):
    """The request has more rows than the endpoint's `max_rows` (413)."""


def rows_in(payload: Any) -> int:
    """How many rows a request body holds (records or columns); 1 when it cannot tell."""
    if isinstance(payload, dict):
        if isinstance(payload.get("records"), list):
            return len(payload["records"])
        cols = payload.get("columns")
        if isinstance(cols, dict) and cols:
            first = next(iter(cols.values()))
            return len(first) if isinstance(first, list) else 1
    return 1


def encode_payload(encoder: Encoder, payload: Any, max_rows: int) -> Encoded:
    """A parsed body as the model's input matrix. Raises ValidationFailed (422) or TooManyRows (413)."""
    if not isinstance(payload, dict):
        raise ValidationFailed([{"row": None, "field": "body", "message": "expected a JSON object"}])
    extra = set(payload) - {"records", "columns"}
    if extra:
        raise ValidationFailed([{"row": None, "field": sorted(extra)[0], "message": "unknown field"}])
    if "records" in payload and "columns" in payload:
        raise ValidationFailed([{"row": None, "field": "columns", "message": "give records or columns, not both"}])
    if "records" in payload:
        recs = payload["records"]
        if not isinstance(recs, list) or not recs:
            raise ValidationFailed([{"row": None, "field": "records", "message": "expected a non-empty list"}])
        if len(recs) > max_rows:
            raise TooManyRows(f"{len(recs)} rows; this endpoint takes at most {max_rows}")
        return encoder.encode_records(recs)
    if "columns" in payload:
        n = rows_in(payload)
        if n > max_rows:
            raise TooManyRows(f"{n} rows; this endpoint takes at most {max_rows}")
        return encoder.encode_columns(payload["columns"])
    raise ValidationFailed([{"row": None, "field": "records", "message": "give records or columns"}])


class NonFiniteOutput(Exception):
    """The model answered a NaN or infinite score."""


def decode_output(out: np.ndarray, mv: ModelVersion, strict: bool = True) -> tuple[list, list, list]:
    """Scores, labels and the answer's predictions. Raises NonFiniteOutput for a NaN/infinite score (strict)."""
    spec = mv.signature.output
    if spec.kind == "binary":
        col = out[:, -1] if out.shape[1] > 1 else out[:, 0]
        scores = col.tolist()
        if strict and not all(map(math.isfinite, scores)):
            raise NonFiniteOutput
        names = spec.labels or ["0", "1"]
        labels = [names[1] if s >= spec.threshold else names[0] for s in scores]
        return scores, labels, [{"score": s, "label": lab} for s, lab in zip(scores, labels, strict=True)]
    if spec.kind == "regression":
        scores = out[:, 0].tolist()
        if strict and not all(map(math.isfinite, scores)):
            raise NonFiniteOutput
        return scores, [None] * len(scores), [{"score": s} for s in scores]
    names = spec.labels or [str(i) for i in range(out.shape[1])]
    idx = out.argmax(axis=1).tolist()
    probs = out.tolist()
    if strict and not all(math.isfinite(p) for row in probs for p in row):
        raise NonFiniteOutput
    scores = [p[i] for p, i in zip(probs, idx, strict=True)]
    labels = [names[i] for i in idx]
    preds = [{"score": s, "label": lab, "scores": p} for s, lab, p in zip(scores, labels, probs, strict=True)]
    return scores, labels, preds


def first_field(errors: list[dict]) -> str | None:
    """The first field named in a list of validation errors (the error body's `field`)."""
    return next((e.get("field") for e in errors if e.get("field")), None)


def error_answer(status: int, error: str, detail: Any, field: str | None) -> Answer:
    """An error answer in the agent's error body shape."""
    return Answer(status, orjson.dumps({"error": error, "detail": detail, "field": field}))
