"""The timeline's items: every change and signal about one endpoint in [since, until], read where each fact
already lives (docs/timeline.md has the table). One query per source; turning a row into a line is per item,
and items are few next to the series' rows (agent/timeline/series.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent.schemas import TimelineItem

AGENT = "watchkeeper-agent"
Reader = Callable[[str, list], list[tuple]]

_ROLLOUT_VERBS = {
    "rollout.start": "started",
    "rollout.approve": "approved",
    "rollout.reject": "rejected",
    "rollout.promote": "promoted",
    "rollout.pause": "paused",
    "rollout.resume": "resumed",
    "rollout.abort": "aborted",
    "rollout.rollback": "rolled back",
    "rollout.rejected": "refused by its gate",
}
_ALERT_EVENTS = {"firing": "fired", "resolved": "resolved", "ack": "acknowledged", "silence": "silenced"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def endpoint_models(q: Reader, endpoint: str, until: float) -> list[str]:
    """The models this endpoint has served (its config events up to `until`)."""
    rows = q(
        "SELECT DISTINCT json_extract_string(body, '$.model') FROM endpoint_events "
        "WHERE endpoint = ? AND kind = 'config' AND ts <= ?",
        [endpoint, until],
    )
    return [r[0] for r in rows if r[0]]


def audit_items(q: Reader, endpoint: str, models: list[str], since: float, until: float) -> list[TimelineItem]:
    """Rollout actions (people's and the agent's automatic ones, with on_behalf_of and cause), model
    registrations and alias moves of the endpoint's models. Endpoint config and alerts come from their own
    tables (endpoint_items, alert_items), which hold the agent's switches too."""
    targets = [f"model:{m}" for m in models]
    rows = q(
        "SELECT ts, principal, role, action, target, detail, client FROM audit_log WHERE ts >= ? AND ts <= ? AND ("
        " (action LIKE 'rollout.%' AND (target = ? OR json_extract_string(detail, '$.endpoint') = ?))"
        " OR (action IN ('model.register', 'model.alias') AND list_contains(?, target))) ORDER BY seq",
        [since, until, f"endpoint:{endpoint}", endpoint, targets],
    )
    out = []
    for ts, principal, role, action, target, detail_s, client in rows:
        d = json.loads(detail_s)
        auto = bool(d.get("automatic"))
        if action.startswith("rollout."):
            rid = d.get("rollout") or d.get("id") or target.removeprefix("rollout:")
            verb = _ROLLOUT_VERBS.get(action, action.removeprefix("rollout."))
            if action == "rollout.start":
                what = (
                    f"rollout {rid} started: {d.get('model')} v{d.get('stable_version')} -> "
                    f"v{d.get('candidate_version')} ({d.get('strategy')})"
                )
            elif action in ("rollout.approve", "rollout.reject"):
                step = d.get("approved_step", d.get("step_index"))
                what = f"{verb} step {step} of rollout {rid} (weight {_fmt(d.get('weight'))}%)"
            else:
                what = f"rollout {rid} {verb}"
            guard = d.get("guard") or {}
            if guard:
                d["guard_name"] = guard.get("name")
            reason = d.get("reason")
            if reason:
                what += f": {reason}"
            kind, ref = action, rid
        elif action == "model.register":
            ver = d.get("version")
            what = f"model {target.removeprefix('model:')} v{ver} registered"
            kind, ref = action, f"{target.removeprefix('model:')}:{ver}"
        else:
            alias = d.get("alias")
            what = (
                f"alias {target.removeprefix('model:')}@{alias} moved v{d.get('from_version')} -> "
                f"v{d.get('to_version', d.get('version'))}"
            )
            if d.get("reason"):
                what += f": {d['reason']}"
            kind, ref = action, target
        d.update({"role": role, "client": client})
        out.append(
            TimelineItem(
                ts=ts,
                kind=kind,
                category="change",
                actor=principal,
                summary=what,
                details=d,
                ref=ref,
                on_behalf_of=d.get("on_behalf_of") if auto else None,
                cause=d.get("cause") if auto else None,
            )
        )
    return out


def weight_items(q: Reader, endpoint: str, since: float, until: float) -> list[TimelineItem]:
    """Rollout traffic moves: each rollout event whose weight or shadow share differs from the one before."""
    rows = q(
        """
        WITH e AS (
            SELECT seq, ts, rollout_id, kind, principal,
                   CAST(json_extract(body, '$.snapshot.weight') AS DOUBLE) AS w,
                   CAST(json_extract(body, '$.snapshot.shadow') AS DOUBLE) AS sh,
                   CAST(json_extract(body, '$.snapshot.step_index') AS INTEGER) AS step,
                   json_extract_string(body, '$.note') AS note
            FROM rollout_events WHERE endpoint = ? AND ts <= ?),
        l AS (SELECT *, lag(w) OVER (PARTITION BY rollout_id ORDER BY seq) AS pw,
                        lag(sh) OVER (PARTITION BY rollout_id ORDER BY seq) AS psh FROM e)
        SELECT ts, rollout_id, kind, principal, w, pw, sh, psh, step, note FROM l
        WHERE ts >= ? AND (coalesce(w, 0) <> coalesce(pw, 0) OR coalesce(sh, 0) <> coalesce(psh, 0))
          AND kind NOT IN ('ended')
        ORDER BY seq""",
        [endpoint, until, since],
    )
    out = []
    for ts, rid, kind, principal, w, pw, sh, psh, step, note in rows:
        parts = []
        if (w or 0) != (pw or 0):
            parts.append(f"weight {_fmt(pw or 0.0)}% -> {_fmt(w or 0.0)}%")
        if (sh or 0) != (psh or 0):
            parts.append(f"shadow {_fmt(psh or 0.0)} -> {_fmt(sh or 0.0)}")
        what = f"rollout {rid} step {step}: {', '.join(parts)}"
        detail = {"rollout": rid, "event": kind, "weight": w, "from_weight": pw, "shadow": sh, "step_index": step}
        if note:
            detail["note"] = note
        auto = principal == AGENT
        out.append(
            TimelineItem(
                ts=ts,
                kind="rollout.weight",
                category="change",
                actor=principal,
                summary=what,
                details=detail,
                ref=rid,
                cause=note if auto else None,
            )
        )
    return out


def endpoint_items(q: Reader, endpoint: str, since: float, until: float) -> list[TimelineItem]:
    """Config changes (what changed, against the config before) and fallback switches, by whoever made them."""
    rows = q(
        "SELECT ts, kind, body, principal FROM endpoint_events WHERE endpoint = ? AND ts <= ? ORDER BY seq",
        [endpoint, until],
    )
    out, before = [], None
    for ts, kind, body, principal in rows:
        data = json.loads(body)
        if kind == "config":
            prev, before = before, data
            if ts < since:
                continue
            if prev is None:
                serves = f"v{data.get('version')}" if data.get("version") is not None else f"@{data.get('alias')}"
                what, changed = f"endpoint created: {data.get('model')} {serves}", sorted(data)
            else:
                changed = sorted(k for k in set(data) | set(prev) if data.get(k) != prev.get(k))
                shown = ", ".join(f"{k} {_short(prev.get(k))} -> {_short(data.get(k))}" for k in changed[:3])
                more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
                what = f"endpoint config: {shown or 'rewritten unchanged'}{more}"
            out.append(
                TimelineItem(
                    ts=ts,
                    kind="endpoint.config",
                    category="change",
                    actor=principal,
                    summary=what,
                    details={"changed": changed, "config": data},
                )
            )
        elif ts >= since and kind == "fallback":
            on = bool(data.get("enabled"))
            what = "switched to fallback" if on else "switched back from fallback"
            if data.get("reason"):
                what += f": {data['reason']}"
            out.append(
                TimelineItem(
                    ts=ts, kind="endpoint.fallback", category="change", actor=principal, summary=what, details=data
                )
            )
        elif ts >= since and kind == "delete":
            out.append(
                TimelineItem(
                    ts=ts, kind="endpoint.delete", category="change", actor=principal, summary="endpoint deleted"
                )
            )
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


def alert_items(q: Reader, endpoint: str, since: float, until: float) -> list[TimelineItem]:
    """Alerts of the endpoint fired, acknowledged, silenced, resolved (pending and notifications left out)."""
    rows = q(
        """
        SELECT e.ts, e.fingerprint, e.event, e.detail, a.body FROM alert_events e JOIN alerts a USING (fingerprint)
        WHERE json_extract_string(a.body, '$.endpoint') = ? AND e.ts >= ? AND e.ts <= ?
          AND e.event IN ('firing', 'resolved', 'ack', 'silence')
        ORDER BY e.ts""",
        [endpoint, since, until],
    )
    out = []
    for ts, fp, event, detail_s, body_s in rows:
        d, a = json.loads(detail_s), json.loads(body_s)
        actor = d.get("principal") or AGENT
        what = f"{a.get('severity')} alert {a.get('rule')} {_ALERT_EVENTS[event]}"
        if event == "firing":
            what += f": {a.get('summary')}"
        elif d.get("comment"):
            what += f": {d['comment']}"
        elif event == "resolved" and d.get("reason"):
            what += f" ({d['reason']})"
        details = {"rule": a.get("rule"), "kind": a.get("kind"), "severity": a.get("severity"), **d}
        if a.get("value") is not None:
            details.update(value=a.get("value"), threshold=a.get("threshold"))
        out.append(
            TimelineItem(
                ts=ts, kind=f"alert.{event}", category="signal", actor=actor, summary=what, details=details, ref=fp
            )
        )
    return out


def drift_items(q: Reader, endpoint: str, since: float, until: float) -> list[TimelineItem]:
    """Per window (against the reference): when the set of drifted features, or of features with data-quality
    findings, differs from the previous window's: which features, with their scores."""
    rows = q(
        """
        WITH w AS (
            SELECT window_end, any_value(version) AS version,
                   list(feature ORDER BY score DESC) FILTER (WHERE drifted) AS drifted,
                   list(feature ORDER BY feature) FILTER (WHERE verdict LIKE '%quality%') AS quality,
                   list(struct_pack(f := feature, s := score) ORDER BY score DESC) FILTER (WHERE drifted) AS scores
            FROM drift_scores
            WHERE endpoint = ? AND baseline = 'reference' AND window_end <= ? AND window_end >= ? - 86400
            GROUP BY window_end),
        l AS (SELECT *, lag(drifted) OVER (ORDER BY window_end) AS pd,
                        lag(quality) OVER (ORDER BY window_end) AS pq FROM w)
        SELECT window_end, version, drifted, pd, quality, pq, scores FROM l
        WHERE window_end >= ? AND (list_sort(coalesce(drifted, [])) IS DISTINCT FROM list_sort(coalesce(pd, []))
                                   OR coalesce(quality, []) IS DISTINCT FROM coalesce(pq, []))
        ORDER BY window_end""",
        [endpoint, until, since, since],
    )
    out = []
    for ts, version, drifted, pd, quality, pq, scores in rows:
        drifted, pd, quality, pq = drifted or [], pd or [], quality or [], pq or []
        if sorted(drifted) != sorted(pd):
            if drifted:
                top = ", ".join(f"{s['f']} {_fmt(s['s'])}" for s in (scores or [])[:5])
                what = f"drift in {len(drifted)} feature(s): {top}"
            else:
                what = "no feature drifts any more"
            details = {"drifted": drifted, "before": pd, "version": version}
            out.append(
                TimelineItem(ts=ts, kind="drift.verdict", category="signal", actor=AGENT, summary=what, details=details)
            )
        if sorted(quality) != sorted(pq):
            what = f"data-quality findings in {', '.join(quality[:5])}" if quality else "data-quality findings cleared"
            details = {"features": quality, "before": pq, "version": version}
            out.append(
                TimelineItem(ts=ts, kind="data_quality", category="signal", actor=AGENT, summary=what, details=details)
            )
    return out


def agent_event_items(q: Reader, endpoint: str, since: float, until: float) -> list[TimelineItem]:
    """The agent's own events: starts/stops and config reloads (host-wide), this endpoint's breaker. XID
    errors are a series (agent/timeline/series.py), not items, unless few: then each is an item too."""
    rows = q(
        "SELECT epoch(ts), kind, endpoint, summary, detail FROM agent_events "
        "WHERE ts >= make_timestamp(CAST(? * 1e6 AS BIGINT)) AND ts <= make_timestamp(CAST(? * 1e6 AS BIGINT)) "
        "AND (endpoint = ? OR endpoint IS NULL) ORDER BY ts LIMIT 2000",
        [since, until, endpoint],
    )
    out = []
    for ts, kind, _ep, summary, detail_s in rows:
        category = "signal" if kind.startswith(("breaker.", "gpu.")) else "change"
        out.append(
            TimelineItem(
                ts=ts, kind=kind, category=category, actor=AGENT, summary=summary, details=json.loads(detail_s)
            )
        )
    return out


def job_items(q: Reader, since: float, until: float) -> list[TimelineItem] | None:
    """Jobs started or ended on this host (a training job taking the GPU), from the jobs table (issue 13) when
    this agent has one; None when it doesn't."""
    cols = {r[0] for r in q("SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'", [])}
    need = {"id", "started_at", "ended_at"}
    if not need <= cols:
        return None
    pick = [
        "id", "started_at", "ended_at",
        "pipeline" if "pipeline" in cols else "NULL",
        "state" if "state" in cols else "NULL",
        "reason" if "reason" in cols else "NULL",
        "json_extract_string(job, '$.submitted_by')" if "job" in cols else (
            "submitted_by" if "submitted_by" in cols else "NULL"),
    ]  # fmt: skip
    rows = q(
        f"SELECT {', '.join(pick)} FROM jobs WHERE (started_at BETWEEN ? AND ?) OR (ended_at BETWEEN ? AND ?)",
        [since, until, since, until],
    )
    out = []
    for jid, started, ended, pipeline, state, reason, by in rows:
        who = by or AGENT
        details = {"job": jid, "pipeline": pipeline, "state": state, "reason": reason}
        if started is not None and since <= started <= until:
            what = f"job {jid} started" + (f" (pipeline {pipeline})" if pipeline else "")
            out.append(
                TimelineItem(
                    ts=started, kind="job.start", category="change", actor=who, summary=what, details=details, ref=jid
                )
            )
        if ended is not None and since <= ended <= until:
            what = f"job {jid} ended: {state or '?'}" + (f" ({reason})" if reason else "")
            out.append(
                TimelineItem(
                    ts=ended, kind="job.end", category="change", actor=who, summary=what, details=details, ref=jid
                )
            )
    return out
