"""Reading a stored JSON document strictly: each value checked for its type and range, each error naming its
path (`columns.x.cells`), so a damaged profile or window is refused with a reason, never half-read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def read_int(d: Mapping, key: str, path: str, minimum: int = 0) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{path}{'.' if path else ''}{key}: expected an integer >= {minimum}, got {v!r}")
    return v


def opt_str(d: Mapping, key: str, path: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{path}{'.' if path else ''}{key}: expected a string or null, got {v!r}")
    return v


def opt_float(d: Mapping, key: str, path: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{path}.{key}: expected a finite number or null, got {v!r}")
    return float(v)


def float_array(d: Mapping, key: str, path: str) -> np.ndarray:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{path}.{key}: expected a list of numbers")
    arr = np.array(v, dtype=np.float64)
    if arr.size and (not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0)):
        raise ValueError(f"{path}.{key}: values must be finite and strictly ascending")
    return arr


def count_array(d: Mapping, key: str, path: str, length: int) -> np.ndarray:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise ValueError(f"{path}.{key}: expected a list of non-negative integers")
    if len(v) != length:
        raise ValueError(f"{path}.{key}: expected {length} counts, got {len(v)}")
    return np.array(v, dtype=np.int64)
