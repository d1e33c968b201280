"""Facts about a model signature shared by the registry (validating an artifact) and the encoder."""

from __future__ import annotations

from agent.schemas import Signature


def encoded_width(sig: Signature) -> int:
    """Width of the float vector the model receives: one column per numeric feature, one-hot per category."""
    return sum(len(f.categories or ()) if f.dtype == "category" else 1 for f in sig.features)


def signature_problems(sig: Signature) -> list[str]:
    """Inconsistencies a pydantic field check can't see (empty when the signature is usable)."""
    problems: list[str] = []
    seen: set[str] = set()
    for f in sig.features:
        if f.name in seen:
            problems.append(f"feature {f.name!r} appears twice")
        seen.add(f.name)
        if f.dtype == "category":
            if not f.categories:
                problems.append(f"feature {f.name!r}: a category feature needs its categories")
            elif len(set(f.categories)) != len(f.categories):
                problems.append(f"feature {f.name!r}: categories repeat")
        elif f.categories:
            problems.append(f"feature {f.name!r}: categories given for a {f.dtype} feature")
        if f.min is not None and f.max is not None and f.min > f.max:
            problems.append(f"feature {f.name!r}: min > max")
    out = sig.output
    if out.kind == "binary" and out.labels is not None and len(out.labels) != 2:
        problems.append("output: a binary model has exactly two labels")
    if out.kind == "multiclass" and not out.labels:
        problems.append("output: a multiclass model needs its labels")
    return problems
