"""What a step uses to log and to find its files: stdlib only, importable without the agent (copy
this one file next to a step that runs elsewhere).

The protocol is language-neutral: the runner sets `WK_STEP_LOG` to a file; a step appends JSON lines
`{"kind": "metric"|"param"|"artifact", "key": ..., "value": ...}` to it (a shell step:
`echo '{"kind":"metric","key":"auc","value":0.71}' >> "$WK_STEP_LOG"`). Its inputs and outputs are
paths in `WK_INPUT_<NAME>` / `WK_OUTPUT_<NAME>`, its parameters JSON in `WK_PARAMS`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_LOG = "WK_STEP_LOG"
ENV_PARAMS = "WK_PARAMS"
ENV_INPUT = "WK_INPUT_"
ENV_OUTPUT = "WK_OUTPUT_"
ENV_RUN = "WK_RUN_ID"
ENV_STEP = "WK_STEP"


def _append(kind: str, key: str, value: object) -> None:
    path = os.environ.get(ENV_LOG)
    if not path:
        return  # outside a pipeline run: logging is a no-op, so a step also runs by hand
    line = json.dumps({"kind": kind, "key": key, "value": value}, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:  # one write per line: appends from one step don't interleave
        fh.write(line)


def log_metric(key: str, value: float) -> None:
    """Record a metric of this step (the last value logged per key is the step's)."""
    _append("metric", key, float(value))


def log_param(key: str, value: str | int | float | bool) -> None:
    """Record a parameter this step used (a later different value for the same key is refused by the
    runner, as MLflow does: a param describes the run, it does not change within it)."""
    if not isinstance(value, str | int | float | bool):
        raise TypeError(f"a param is a scalar, not {type(value).__name__}")
    if isinstance(value, str) and len(value) > 6000:
        raise ValueError("a param is at most 6000 characters")
    _append("param", key, value)


def log_artifact(key: str, path: str | os.PathLike) -> None:
    """Name a file this step wrote beyond its declared outputs; the runner stores it by content."""
    _append("artifact", key, str(Path(path).resolve()))


@dataclass
class StepContext:
    """What a callable step gets: its parameters and the paths of its inputs and outputs."""

    params: dict = field(default_factory=dict)
    inputs: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    run_id: str = ""
    step: str = ""

    log_metric = staticmethod(log_metric)
    log_param = staticmethod(log_param)
    log_artifact = staticmethod(log_artifact)


def context_from_env(env: dict[str, str] | None = None) -> StepContext:
    """The step's context from the variables the runner set."""
    e = os.environ if env is None else env
    ins = {k[len(ENV_INPUT) :].lower(): Path(v) for k, v in e.items() if k.startswith(ENV_INPUT)}
    outs = {k[len(ENV_OUTPUT) :].lower(): Path(v) for k, v in e.items() if k.startswith(ENV_OUTPUT)}
    return StepContext(json.loads(e.get(ENV_PARAMS) or "{}"), ins, outs, e.get(ENV_RUN, ""), e.get(ENV_STEP, ""))


def env_name(name: str) -> str:
    """An input/output name as it appears in a variable (`train-set` -> `TRAIN_SET`)."""
    return name.upper().replace("-", "_")
