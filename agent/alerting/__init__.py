"""Alerting: rules over serving, drift and quality signals; a deduplicating state machine persisted
in the store; webhook delivery (Slack, Alertmanager). Kinds and thresholds: agent/alerting/rules.py."""

from agent.alerting.rules import DEFAULT_RULES, Signal

# Where the alert list is served (agent/api/routes/alerts.py); webhooks link to it. `/api/v1/alerts`
# itself still lists the agent's own conditions (agent/api/routes/telemetry.py).
ALERTS_PATH = "/api/v1/alerting"

__all__ = ["ALERTS_PATH", "DEFAULT_RULES", "Signal"]
