"""Async queue metrics for /metrics: depth, oldest age, running, finished by state (throughput = rate())."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.asyncinf.service import AsyncService


def async_metrics(svc: AsyncService) -> Iterator:
    depth = GaugeMetricFamily("watchkeeper_async_queue_depth", "Async requests queued", labels=["endpoint"])
    running = GaugeMetricFamily("watchkeeper_async_running", "Async requests running", labels=["endpoint"])
    oldest = GaugeMetricFamily(
        "watchkeeper_async_oldest_age_seconds", "Age of the oldest queued async request (0: none)", labels=["endpoint"]
    )
    cap = GaugeMetricFamily("watchkeeper_async_capacity", "Async queue capacity", labels=["endpoint"])
    done = CounterMetricFamily(
        "watchkeeper_async_requests",
        "Async requests finished since start, by final state (throughput: rate of succeeded)",
        labels=["endpoint", "state"],
    )
    cbs = GaugeMetricFamily(
        "watchkeeper_async_callbacks",
        "Callbacks of kept requests by state (pending, failed)",
        labels=["endpoint", "state"],
    )
    rows = CounterMetricFamily("watchkeeper_async_rows", "Rows predicted by the async worker", labels=["endpoint"])
    yields = CounterMetricFamily("watchkeeper_async_yields", "Times the async worker held back for real time")
    for name, st in svc.queue.stats().items():
        depth.add_metric([name], st.queued)
        running.add_metric([name], st.running)
        oldest.add_metric([name], st.oldest_queued_s or 0.0)
        cap.add_metric([name], st.capacity)
        for state in ("succeeded", "failed", "cancelled", "expired"):
            done.add_metric([name, state], getattr(st, state))
        cbs.add_metric([name, "pending"], st.callbacks_pending)
        cbs.add_metric([name, "failed"], st.callbacks_failed)
        rows.add_metric([name], svc.worker.stats.per_endpoint_rows.get(name, 0))
    yields.add_metric([], svc.worker.stats.yields)
    busy = CounterMetricFamily("watchkeeper_async_busy_seconds", "Time the async worker spent running micro-batches")
    busy.add_metric([], svc.worker.stats.busy_s)
    batches = CounterMetricFamily("watchkeeper_async_batches", "Micro-batches the async worker ran")
    batches.add_metric([], svc.worker.stats.batches)
    yield from (depth, running, oldest, cap, done, cbs, rows, yields, busy, batches)
