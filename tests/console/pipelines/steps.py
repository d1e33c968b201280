"""The steps of the console's pipeline tests: tiny callables a real agent's worker runs."""

from __future__ import annotations

from typing import Any


def prep(ctx: Any) -> None:
    """Write the prepared data; print a line for the step's log."""
    print("prepared 3 rows")
    ctx.outputs["data"].write_text("1\n2\n3\n")


def train(ctx: Any) -> None:
    """A metric that depends on the `lr` parameter, so two runs differ."""
    lr = float(ctx.params["lr"])
    ctx.log_param("optimizer", "sgd")
    ctx.log_metric("auc", round(0.5 + lr, 4))
    ctx.outputs["model"].write_text(f"model lr={lr}\n")
