"""Serving metrics for /metrics, in the names Triton and BentoML users already chart.

Triton: nv_inference_request_success / _failure / nv_inference_count (rows) / nv_inference_exec_count
(model executions) / nv_inference_pending_request_count, labels model and version. BentoML:
bentoml_service_request_total{endpoint,http_response_code} and a request-duration histogram. Ours:
watchkeeper_fallback_total{endpoint,reason}, breaker state, pool memory.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from agent.serving.service import ServingService
from agent.serving.stats import BOUNDS_MS

# Prometheus histograms with 176 buckets would be heavy to scrape; export a coarse subset of ours.
_EXPORT_LE_MS = [0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
_BREAKER = {"closed": 0, "half_open": 1, "open": 2, "disabled": -1}


def serving_metrics(s: ServingService) -> Iterator:
    ok = CounterMetricFamily(
        "nv_inference_request_success", "Successful inference requests", labels=["model", "version", "endpoint"]
    )
    fail = CounterMetricFamily(
        "nv_inference_request_failure",
        "Failed inference requests (errors, not fallbacks)",
        labels=["model", "version", "endpoint"],
    )
    rows = CounterMetricFamily("nv_inference_count", "Rows inferred", labels=["model", "version", "endpoint"])
    codes = CounterMetricFamily(
        "bentoml_service_request", "Requests by HTTP status", labels=["endpoint", "http_response_code"]
    )
    fb = CounterMetricFamily(
        "watchkeeper_fallback", "Requests answered with the fallback prediction", labels=["endpoint", "reason"]
    )
    shed = CounterMetricFamily(
        "watchkeeper_shed",
        "Requests shed (429 or the fallback): overload = waited too long for the agent, shed = max_concurrency",
        labels=["endpoint", "reason", "answer"],
    )
    hist = HistogramMetricFamily(
        "bentoml_service_request_duration_seconds",
        "Request latency from its arrival at the agent (queueing included)",
        labels=["endpoint", "model", "version"],
    )
    for (endpoint, version), st in s.stats.items():
        labels = [st.model, str(version), endpoint]
        ok.add_metric(labels, st.requests - st.errors)
        fail.add_metric(labels, st.errors)
        rows.add_metric(labels, st.rows)
        for code, n in st.status_codes.items():
            codes.add_metric([endpoint, str(code)], n)
        for reason, n in st.fallbacks_by_reason.items():
            fb.add_metric([endpoint, reason], n)
            if reason in ("overload", "shed"):
                shed.add_metric([endpoint, reason, "fallback"], n)
        for reason, n in st.shed.items():
            shed.add_metric([endpoint, reason, "429"], n)
        buckets, acc, i = [], 0, 0
        for le in _EXPORT_LE_MS:
            while i < len(BOUNDS_MS) and BOUNDS_MS[i] <= le * 1.0001:
                acc += st.hist[i]
                i += 1
            buckets.append((str(le / 1000), acc))
        buckets.append(("+Inf", sum(st.hist)))
        hist.add_metric([endpoint, st.model, str(version)], buckets, st.sum_ms / 1000)
    yield from (ok, fail, rows, codes, fb, shed, hist)
    yield GaugeMetricFamily(
        "watchkeeper_event_loop_lag_seconds",
        "How late a 20 ms timer fired on the serving loop, worst of the last 5 s (requests wait this long unseen)",
        s.lag.worst_recent(),
    )
    execs = CounterMetricFamily("nv_inference_exec_count", "Model executions (batches)", labels=["endpoint"])
    pending = GaugeMetricFamily("nv_inference_pending_request_count", "Rows in flight", labels=["endpoint"])
    breaker = GaugeMetricFamily(
        "watchkeeper_breaker_state", "0 closed, 1 half-open, 2 open, -1 disabled", labels=["endpoint"]
    )
    forced = GaugeMetricFamily(
        "watchkeeper_fallback_mode", "1 when an operator switched the endpoint to fallback", labels=["endpoint"]
    )
    for ep in s.endpoints.values():
        if ep.batcher is not None:
            execs.add_metric([ep.name], ep.batcher.batches)
        pending.add_metric([ep.name], ep.in_flight_rows)
        breaker.add_metric([ep.name], _BREAKER[ep.breaker.state])
        forced.add_metric([ep.name], 1 if ep.fallback_mode else 0)
    yield from (execs, pending, breaker, forced)
    yield GaugeMetricFamily("watchkeeper_model_pool_used_bytes", "Estimated memory of loaded models", s.pool.used_bytes)
    yield GaugeMetricFamily("watchkeeper_model_pool_budget_bytes", "Model pool memory budget", s.pool.budget_bytes)
    yield CounterMetricFamily("watchkeeper_model_evictions", "Models evicted from the pool", s.pool.evictions)
    yield CounterMetricFamily("watchkeeper_predlog_rows", "Prediction rows handed to the log", s.predlog.rows_logged)
    yield CounterMetricFamily(
        "watchkeeper_predlog_dropped_rows", "Prediction rows dropped (store behind)", s.predlog.rows_dropped
    )
    yield CounterMetricFamily(
        "watchkeeper_predlog_unjournaled_requests",
        "Logged requests not written to the crash journal (write errors, or the journal full): lost on a crash",
        s.predlog.unjournaled,
    )
