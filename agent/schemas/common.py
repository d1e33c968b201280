"""What every wire model shares: the base classes, strict input, the API prefix, the error and health bodies."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

API_PREFIX = "/api/v1"

# One meaning for a size everywhere (agent.toml, the API, the CLI): KiB/MiB/GiB/TiB and the single letters
# K/M/G/T (as `sbatch --mem=4G` and `docker -m 4g` mean them) are powers of 1024; KB/MB/GB/TB powers of 1000.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|[KMGT]iB|[KMGT]B|[KMGTkmgt])?\s*$")
_SIZE_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
               "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # fmt: skip


def parse_size(v: object) -> object:
    """ "4G" / "512MiB" / "1.5GiB" / "2GB" / 1073741824 -> bytes. Anything else is left for the strict int
    check to refuse with the field named."""
    if isinstance(v, str):
        m = _SIZE.match(v)
        if not m:
            raise ValueError(f"not a size: {v!r} (say e.g. 4G, 512MiB or a number of bytes)")
        unit = (m.group(2) or "B").replace("iB", "")
        return int(float(m.group(1)) * _SIZE_UNITS[unit if unit.endswith("B") and len(unit) == 2 else unit.upper()])
    return v


class _Wire(BaseModel):
    # Extra keys are ignored when reading so an older console can talk to a newer agent.
    model_config = ConfigDict(extra="ignore")


# What the agent accepts: no unknown keys, and no coercion - `{"enabled": 0}` is not a boolean, "5" not a
# number - so a request is valid exactly when its OpenAPI schema says it is.
# Every request model: no unknown keys, no coercion, and no NaN/Infinity (a NaN fallback score would be
# served as `null` with a definite label; a NaN feedback value poisons every quality metric).
STRICT_INPUT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _whole(v: object) -> object:
    # JSON has one kind of number: to JSON Schema (and so to our OpenAPI) 3.0 is an integer. Strict mode
    # would refuse it; take it as 3. A bool or a string still fails the strict int check after this.
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


WholeInt = Annotated[int, BeforeValidator(_whole)]

# Unix seconds a request may name (year 2286): far past any real time, well inside DuckDB's timestamps.
MAX_UNIX_S = 10_000_000_000


def _finite_json(v: Any) -> Any:
    """A JSON value with no NaN/Infinity anywhere in it (they can't be answered as JSON, and a fallback
    score of NaN would be served as `null` with a definite label)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    for x in v.values() if isinstance(v, dict) else v if isinstance(v, list) else ():
        _finite_json(x)
    return v


FiniteJson = Annotated[Any, AfterValidator(_finite_json)]


class ErrorBody(_Wire):
    """Every 4xx/5xx the agent sends has this shape."""

    error: str
    detail: str | list | dict | None = None
    field: str | None = None


class Health(_Wire):
    status: Literal["ok", "starting", "degraded"]
    agent_name: str
    version: str
    checks: dict[str, str] = Field(default_factory=dict)
