"""Alerts on the wire: alerts and their acks and silences, rules, webhook delivery."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, _Wire

AlertSeverity = Literal["info", "warning", "critical"]
AlertState = Literal["pending", "firing", "resolved"]


class AlertOut(_Wire):
    """One alert instance, keyed by its fingerprint (rule + labels): deduplicated while it lasts."""

    fingerprint: str
    rule: str
    kind: str
    severity: AlertSeverity
    state: AlertState
    endpoint: str | None = None
    subject: str | None = None  # e.g. the feature
    summary: str
    value: float | None = None
    threshold: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: float  # first breach
    firing_at: float | None = None  # after its `for` duration
    resolved_at: float | None = None
    updated_at: float
    acked_by: str | None = None
    acked_at: float | None = None
    ack_comment: str = ""  # what the person who took it in hand said
    silenced_until: float | None = None
    silenced_by: str | None = None
    silence_comment: str = ""
    host: str = ""  # the agent's name, filled by the agent


class AlertAck(_Wire):
    model_config = STRICT_INPUT
    comment: str = Field(default="", max_length=500)


class AlertSilence(_Wire):
    model_config = STRICT_INPUT
    duration_s: float = Field(gt=0, le=30 * 86400)
    comment: str = Field(default="", max_length=500)


class AlertRuleOut(_Wire):
    name: str
    kind: str
    severity: AlertSeverity
    threshold: float | None
    for_s: float
    endpoints: list[str] = Field(default_factory=list)  # empty: all
    group_by: Literal["endpoint", "subject"] = "subject"
    keep_firing_for_s: float = 0.0


class WebhookStatus(_Wire):
    name: str
    url: str  # credentials and query strings removed
    format: Literal["slack", "alertmanager"]
    sent: int
    failed: int
    queued: int
    last_error: str | None = None
    last_sent_at: float | None = None


class AlertsResponse(_Wire):
    """`GET /api/v1/alerts`."""

    alerts: list[AlertOut]
    rules: list[AlertRuleOut]
    webhooks: list[WebhookStatus]
