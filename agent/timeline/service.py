"""One endpoint's incident timeline, assembled from the store (GET /api/v1/endpoints/{name}/timeline) and
"what changed before this?" (…/timeline/before). Reads only, on its own cursor; the API runs it in its
thread pool.
"""

from __future__ import annotations

import json
import time

import duckdb

from agent.schemas import Timeline, TimelineBefore
from agent.timeline import items as it
from agent.timeline.series import build_series, pick_step

MAX_ITEMS = 2000
MAX_SPAN_S = 31 * 86400
DEFAULT_BEFORE_S = 1800.0
NOTES = (
    "error share counts answers with a fallback for a model failure; failures of an endpoint without a fallback "
    "are not in the prediction log (see the endpoint's stats)",
)
# The order of simultaneous items: a cause before its effect (an approval before the weight it moves).
_RANK = {"rollout.start": 0, "rollout.approve": 1, "rollout.reject": 1, "rollout.weight": 2}


class TimelineError(Exception):
    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


class TimelineService:
    """Builds timelines from the agent's DuckDB file (`con`: the store's connection; a cursor per call)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, host: str) -> None:
        self._con = con
        self.host = host

    def timeline(
        self, endpoint: str, since: float | None = None, until: float | None = None, step: float | None = None
    ) -> Timeline:
        """Items and series of `endpoint` in [since, until] (default: the last hour)."""
        until = time.time() if until is None else until
        since = until - 3600.0 if since is None else since
        if until <= since:
            raise TimelineError(422, "until must be after since", "until")
        if until - since > MAX_SPAN_S:
            raise TimelineError(422, f"the range is at most {MAX_SPAN_S // 86400} days", "since")
        if step is not None and (until - since) / step > 5000:
            raise TimelineError(422, "step too small for the range (at most 5000 buckets)", "step")
        step = step or pick_step(until - since)
        cur = self._con.cursor()
        try:
            q = _reader(cur)
            self._check_endpoint(q, endpoint)
            buckets, series = build_series(q, endpoint, since, until, step)
            models = it.endpoint_models(q, endpoint, until)
            items = [
                *it.endpoint_items(q, endpoint, since, until),
                *it.audit_items(q, endpoint, models, since, until),
                *it.weight_items(q, endpoint, since, until),
                *it.alert_items(q, endpoint, since, until),
                *it.drift_items(q, endpoint, since, until),
                *it.agent_event_items(q, endpoint, since, until),
            ]
            notes = list(NOTES)
            jobs = it.job_items(q, since, until)
            if jobs is None:
                notes.append("jobs: this agent has no jobs table")
            else:
                items.extend(jobs)
        finally:
            cur.close()
        for x in items:
            x.host = self.host
        items.sort(key=lambda x: (x.ts, _RANK.get(x.kind, 3)))
        truncated = len(items) > MAX_ITEMS
        if truncated:
            items = items[-MAX_ITEMS:]
        return Timeline(
            endpoint=endpoint, host=self.host, since=since, until=until, step_s=step, buckets=buckets,
            series=series, items=items, truncated=truncated, notes=notes,
        )  # fmt: skip

    def before(
        self, endpoint: str, at: float | None = None, window_s: float = DEFAULT_BEFORE_S, alert: str | None = None
    ) -> TimelineBefore:
        """The changes in the `window_s` before `at` (or before the alert `alert` fired), newest first, with the
        timeline from `at - window_s` to `at + window_s / 2`."""
        if alert is not None:
            at = self._alert_time(endpoint, alert)
        if at is None:
            raise TimelineError(422, "give at (unix seconds) or alert (a fingerprint)", "at")
        tl = self.timeline(endpoint, at - window_s, at + window_s / 2)
        changes = [x for x in tl.items if x.category == "change" and x.ts <= at]
        changes.reverse()
        return TimelineBefore(endpoint=endpoint, at=at, window_s=window_s, alert=alert, changes=changes, timeline=tl)

    def _alert_time(self, endpoint: str, fp: str) -> float:
        cur = self._con.cursor()
        try:
            row = cur.execute("SELECT body FROM alerts WHERE fingerprint = ?", [fp]).fetchone()
        finally:
            cur.close()
        if row is None:
            raise TimelineError(404, f"no alert {fp!r} on this agent", "alert")
        a = json.loads(row[0])
        if a.get("endpoint") != endpoint:
            raise TimelineError(422, f"alert {fp!r} is about endpoint {a.get('endpoint')!r}, not {endpoint!r}", "alert")
        return float(a.get("firing_at") or a.get("started_at"))

    def _check_endpoint(self, q: it.Reader, endpoint: str) -> None:
        if not q("SELECT 1 FROM endpoint_events WHERE endpoint = ? LIMIT 1", [endpoint]):
            raise TimelineError(404, f"no endpoint {endpoint!r} (now or before) on this agent", "name")


def _reader(cur: duckdb.DuckDBPyConnection) -> it.Reader:
    def q(sql: str, params) -> list[tuple]:
        return cur.execute(sql, params).fetchall()

    return q
