"""Alerting metrics for /metrics: alerts by state and severity, webhook deliveries.

`watchkeeper_alerts_firing{severity}` and `watchkeeper_alerts_pending{severity}` (every severity
is exported, 0 included, so a dashboard's "no critical alerts" is a value and not a gap);
`watchkeeper_webhook_sent_total`, `..._failed_total` (gave up after its attempts),
`..._dropped_total` (queue full) and the gauge `watchkeeper_webhook_queued`, labels webhook, format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.alerting.engine import AlertEngine

SEVERITIES = ("info", "warning", "critical")


def alerting_metrics(engine: AlertEngine) -> Iterator:
    counts = engine.counts()
    for state in ("firing", "pending"):
        g = GaugeMetricFamily(f"watchkeeper_alerts_{state}", f"Alerts {state} now", labels=["severity"])
        for sev in SEVERITIES:
            g.add_metric([sev], counts.get((state, sev), 0))
        yield g
    if engine.notifier is None:
        return
    sent = CounterMetricFamily("watchkeeper_webhook_sent", "Notifications delivered", labels=["webhook", "format"])
    failed = CounterMetricFamily(
        "watchkeeper_webhook_failed", "Notifications given up after all attempts", labels=["webhook", "format"]
    )
    dropped = CounterMetricFamily(
        "watchkeeper_webhook_dropped", "Notifications dropped because the queue was full", labels=["webhook", "format"]
    )
    queued = GaugeMetricFamily("watchkeeper_webhook_queued", "Notifications waiting", labels=["webhook", "format"])
    for name, fmt, n_sent, n_failed, n_dropped, n_queued in engine.notifier.counters():
        sent.add_metric([name, fmt], n_sent)
        failed.add_metric([name, fmt], n_failed)
        dropped.add_metric([name, fmt], n_dropped)
        queued.add_metric([name, fmt], n_queued)
    yield from (sent, failed, dropped, queued)


class AlertCollector(Collector):
    """Registered on the app's metrics registry; reads the engine at scrape time (memory only)."""

    def __init__(self, engine: Callable[[], AlertEngine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator:
        engine = self._engine()
        if engine is not None:
            yield from alerting_metrics(engine)
