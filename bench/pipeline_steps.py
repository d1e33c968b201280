"""The trivial in-process step of bench/pipelines.py: what a pipeline's `call` runs, nothing more."""

from __future__ import annotations

from typing import Any


def step(ctx: Any) -> None:
    """Write one byte to the step's output: the step's cost is the runner's overhead."""
    ctx.outputs["out"].write_text("1")
