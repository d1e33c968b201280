"""Confirmation before switching an endpoint to its fallback prediction (or back to the model).

The dialog is a `ConfirmScreen` (y confirms, n or Escape cancels) whose reason is required: the
agent records it in its audit log with who, when and from where.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.core.screens.confirm import ConfirmScreen


@dataclass(frozen=True)
class FallbackRequest:
    """What the operator is about to do, in the words the dialog shows."""

    agent: str  # the agent's key in the fleet
    host: str  # its display name
    endpoint: str
    model_version: str
    enable: bool
    breaker: str = "closed"
    fallback_configured: bool = True

    @property
    def title(self) -> str:
        action = "Switch to fallback" if self.enable else "Switch back to the model"
        return f"{action}: {self.endpoint} on {self.host}?"

    @property
    def consequence(self) -> str:
        """What will happen, in plain words."""
        where = f"{self.endpoint} on {self.host} (serving {self.model_version})"
        if self.enable:
            return (
                f"Every request to {where} will be answered with the endpoint's configured fallback "
                f"prediction (marked fallback: true, reason 'operator') instead of calling the model, "
                f"until someone switches it back."
            )
        return (
            f"Requests to {where} will go to the model again. "
            f"Breaker now {self.breaker.replace('_', '-')}: if it is open, callers still get the fallback "
            f"until it closes."
        )


class FallbackConfirm(ConfirmScreen):
    """y / n / Escape; the reason Input must not be empty. Dismisses True (confirmed) or False."""

    def __init__(self, request: FallbackRequest) -> None:
        super().__init__(
            heading=request.title,
            body=request.consequence,
            yes_label="Yes, switch to fallback (y)" if request.enable else "Yes, back to the model (y)",
            yes_variant="warning" if request.enable else "primary",
            box_class="-enable" if request.enable else "-disable",
            text_label="Reason (required; recorded in the agent's audit log):",
            text_placeholder="e.g. INC-1234 model returns NaN",
            text_required=True,
        )
        self.request = request
