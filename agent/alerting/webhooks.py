"""Webhook delivery: Slack-compatible and Alertmanager-webhook-compatible payloads, off every hot path.

`Notifier.notify` only appends to a bounded queue and returns. Each webhook has its own queue and
worker thread, so a slow or dead receiver delays nobody else: the oldest notifications are dropped
(and counted) when its queue is full. A delivery is retried with exponential backoff and full
jitter (0.5 s, 1 s, 2 s ... capped at 60 s, each a random share of that) up to the webhook's
`max_attempts`, each attempt bounded by its `timeout`. Connection errors, timeouts, 408, 429 and
5xx are retried (a 429's Retry-After is honoured up to the cap); any other answer is final.
Notifications still queued when the agent stops are not sent.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from agent.alerting import ALERTS_PATH
from agent.config import WebhookConfig
from agent.schemas import AlertOut, WebhookStatus

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("watchkeeper.alerting")

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MAX_QUEUE = 1000
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0
# Alertmanager's zero time: a firing alert has no end yet.
ZERO_TIME = "0001-01-01T00:00:00Z"
_SECRETISH = re.compile(r"^[A-Za-z0-9_\-]{16,}$")


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds, e.g. 2024-05-01T12:00:00.250Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment; path segments that look like tokens (Slack's
    `/services/T.../B.../<secret>`) become `***`."""
    try:
        u = urlsplit(url)
    except ValueError:
        return "(unparsable url)"
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if u.port is None else f"{host}:{u.port}"
    path = "/".join("***" if _SECRETISH.match(seg) else seg for seg in u.path.split("/"))
    return urlunsplit((u.scheme, netloc, path, "", ""))


def _alert_labels(a: AlertOut) -> dict[str, str]:
    labels = {k: str(v) for k, v in a.labels.items()}
    labels.update({"alertname": a.rule, "kind": a.kind, "severity": a.severity, "host": a.host})
    if a.endpoint is not None:
        labels["endpoint"] = a.endpoint
    if a.subject is not None:
        labels["subject"] = a.subject
    return labels


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def alertmanager_payload(a: AlertOut, status: str, receiver: str, external_url: str = "") -> dict:
    """One alert as Alertmanager's webhook receiver body (version 4)."""
    labels = _alert_labels(a)
    annotations = {"summary": a.summary}
    if a.value is not None:
        annotations["value"] = _fmt(a.value)
    if a.threshold is not None:
        annotations["threshold"] = _fmt(a.threshold)
    group = {"alertname": a.rule}
    if a.endpoint is not None:
        group["endpoint"] = a.endpoint
    group_key = "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}"
    starts = a.firing_at if a.firing_at is not None else a.started_at
    ends = rfc3339(a.resolved_at) if status == "resolved" and a.resolved_at is not None else ZERO_TIME
    base = external_url.rstrip("/")
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": base,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(starts),
                "endsAt": ends,
                "generatorURL": f"{base}{ALERTS_PATH}?fingerprint={a.fingerprint}" if base else "",
                "fingerprint": a.fingerprint,
            }
        ],
    }


def slack_payload(a: AlertOut, status: str) -> dict:
    """One alert as a Slack incoming-webhook message: `text` (fallback and notifications) and blocks."""
    icon = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
    head = "RESOLVED" if status == "resolved" else f"FIRING {a.severity.upper()}"
    where = f" on {a.endpoint}" if a.endpoint else ""
    subject = f" ({a.subject})" if a.subject else ""
    title = f"[{head}] {a.rule}{where}{subject} @ {a.host}"
    text = f"{title}: {a.summary}"
    fields = [
        {"type": "mrkdwn", "text": f"*Severity*\n{a.severity}"},
        {"type": "mrkdwn", "text": f"*Endpoint*\n{a.endpoint or '-'}"},
        {"type": "mrkdwn", "text": f"*Value / threshold*\n{_fmt(a.value)} / {_fmt(a.threshold)}"},
        {"type": "mrkdwn", "text": f"*Host*\n{a.host}"},
    ]
    if a.subject:
        fields.insert(2, {"type": "mrkdwn", "text": f"*Subject*\n{a.subject}"})
    when = f"started {rfc3339(a.started_at)}"
    if status == "resolved" and a.resolved_at is not None:
        when += f", resolved {rfc3339(a.resolved_at)}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon.get(a.severity, '')} *{title}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": a.summary}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{when} | fingerprint `{a.fingerprint}`"}]},
        ],
    }


class _Hook:
    """One webhook: its queue, counters and worker thread."""

    def __init__(self, cfg: WebhookConfig, notifier: Notifier) -> None:
        self.cfg = cfg
        self.n = notifier
        self.queue: deque[tuple[AlertOut, str]] = deque()
        self.cond = threading.Condition()
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self.last_sent_at: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"webhook-{cfg.name}", daemon=True)

    def put(self, item: tuple[AlertOut, str]) -> None:
        with self.cond:
            if len(self.queue) >= self.n.max_queue:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(item)
            self.cond.notify()

    def _run(self) -> None:
        import httpx  # here, not at import: an agent without webhooks never pays for it (~4 MiB)

        with httpx.Client(timeout=self.cfg.timeout, follow_redirects=False) as client:
            while True:
                with self.cond:
                    while not self.queue and not self.n.stopping.is_set():
                        self.cond.wait()
                    if self.n.stopping.is_set():
                        return
                    alert, status = self.queue.popleft()
                try:
                    self._deliver(client, alert, status)
                except Exception as e:  # never let one bad payload end the worker
                    self.failed += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    log.exception("webhook %s: delivery crashed", self.cfg.name)

    def _body(self, alert: AlertOut, status: str) -> bytes:
        if self.cfg.format == "slack":
            payload = slack_payload(alert, status)
        else:
            payload = alertmanager_payload(alert, status, self.cfg.name, self.n.external_url)
        return json.dumps(payload).encode()

    def _deliver(self, client: httpx.Client, alert: AlertOut, status: str) -> None:
        import httpx

        body = self._body(alert, status)
        error = "not attempted"
        for attempt in range(1, self.cfg.max_attempts + 1):
            retry_after: float | None = None
            try:
                r = client.post(self.cfg.url, content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__
                retryable = True
            else:
                if 200 <= r.status_code < 300:
                    self.sent += 1
                    self.last_sent_at = time.time()
                    return
                error = f"HTTP {r.status_code}"
                retryable = r.status_code in (408, 429) or r.status_code >= 500
                if r.status_code == 429:
                    retry_after = _seconds(r.headers.get("retry-after"))
            self.last_error = f"attempt {attempt}/{self.cfg.max_attempts}: {error}"
            if not retryable or attempt == self.cfg.max_attempts:
                break
            delay = self.n.backoff(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.n.backoff_cap))
            if self.n.stopping.wait(delay):
                break
        self.failed += 1
        log.warning("webhook %s: giving up on %s (%s): %s", self.cfg.name, alert.fingerprint, status, error)

    def status(self) -> WebhookStatus:
        return WebhookStatus(
            name=self.cfg.name,
            url=redact_url(self.cfg.url),
            format=self.cfg.format,
            sent=self.sent,
            failed=self.failed,
            queued=len(self.queue),
            last_error=self.last_error,
            last_sent_at=self.last_sent_at,
        )


def _seconds(v: str | None) -> float | None:
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None


class Notifier:
    """Sends alert notifications to the configured webhooks from background threads."""

    def __init__(
        self,
        webhooks: list[WebhookConfig],
        external_url: str = "",
        max_queue: int = MAX_QUEUE,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_cap: float = BACKOFF_CAP_S,
    ) -> None:
        self.external_url = external_url
        self.max_queue = max_queue
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stopping = threading.Event()
        self._hooks = [_Hook(w, self) for w in webhooks]
        self._started = False

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): full jitter over base * 2^(n-1)."""
        return random.uniform(0.5, 1.0) * min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        # httpx logs every request line at INFO, URL included: a Slack webhook's URL is its secret.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for h in self._hooks:
            h.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the workers (an attempt in flight ends within its timeout; threads are daemons)."""
        self.stopping.set()
        for h in self._hooks:
            with h.cond:
                h.cond.notify_all()
        deadline = time.monotonic() + timeout
        for h in self._hooks:
            if h.thread.is_alive():
                h.thread.join(max(0.0, deadline - time.monotonic()))

    def notify(self, alert: AlertOut, status: str) -> None:
        """Queue `alert` ("firing" or "resolved") for every webhook whose min_severity it meets.
        Never blocks and never raises for a slow receiver."""
        rank = SEVERITY_RANK.get(alert.severity, 0)
        for h in self._hooks:
            if rank >= SEVERITY_RANK[h.cfg.min_severity]:
                h.put((alert, status))

    def statuses(self) -> list[WebhookStatus]:
        return [h.status() for h in self._hooks]

    def counters(self) -> list[tuple[str, str, int, int, int, int]]:
        """(name, format, sent, failed, dropped, queued) per webhook, for /metrics."""
        return [(h.cfg.name, h.cfg.format, h.sent, h.failed, h.dropped, len(h.queue)) for h in self._hooks]
