"""The trivial in-process step of bench/pipelines.py: what a pipeline's `call` runs, nothing more."""

from __future__ import annotations

from typing import Any


def step(**kwargs: Any) -> int:
    """Take whatever the runner passes and return one number: the step's cost is the runner's overhead."""
    return 1
