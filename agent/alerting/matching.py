"""Which signals match which rule, as one alert each: the alert's fingerprint (stable across restarts and
hosts), the worse of two matches, and the per-endpoint groups of `group_by = "endpoint"` rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.alerting.rules import Signal, group_by
from agent.config import AlertRuleConfig

if TYPE_CHECKING:
    pass


def fingerprint(rule: str, endpoint: str | None, subject: str | None) -> str:
    """Stable across restarts and hosts: 16 hex digits of sha256(rule, endpoint, subject)."""
    key = "\x1f".join((rule, endpoint or "", subject or ""))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class _Match:
    rule: AlertRuleConfig
    signal: Signal
    breached: bool
    threshold: float | None


def _worse(m: _Match, than: _Match) -> bool:
    """Breached beats not breached; then the larger value."""
    if m.breached != than.breached:
        return m.breached
    return (m.signal.value or 0.0) > (than.signal.value or 0.0)


GROUP_LISTED = 5  # subjects named in a grouped alert's summary (all of them are in its labels)


def _grouped(matches: dict[str, _Match]) -> dict[str, _Match]:
    """Fold the per-subject matches of `group_by = "endpoint"` rules into one match per (rule, endpoint).

    The group breaches while any subject does; its value is the worst subject's, its subject the
    breached subjects (worst first), and its summary names them with their values.
    """
    out: dict[str, _Match] = {}
    groups: dict[str, list[_Match]] = {}
    for fp, m in matches.items():
        if group_by(m.rule) == "endpoint" and m.signal.subject is not None:
            groups.setdefault(fingerprint(m.rule.name, m.signal.endpoint, None), []).append(m)
        else:
            out[fp] = m
    for fp, members in groups.items():
        members.sort(key=lambda m: (not m.breached, -(m.signal.value or 0.0), m.signal.subject or ""))
        worst = members[0]
        hot = [m for m in members if m.breached]
        names = [m.signal.subject or "" for m in hot]
        shown = "; ".join(_summary(m.signal, m.threshold) for m in hot[:GROUP_LISTED])
        more = f"; and {len(hot) - GROUP_LISTED} more" if len(hot) > GROUP_LISTED else ""
        what = worst.rule.kind.replace("_", " ")
        if hot:
            summary = f"{what} on {len(hot)} of {len(members)} features: {shown}{more}"
        else:
            summary = f"{what}: none of {len(members)} features"
        subject = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "") if names else None
        labels = {**worst.signal.labels, "features": ",".join(names)}
        sig = Signal(worst.signal.kind, worst.signal.endpoint, subject, worst.signal.value, worst.threshold,
                     bool(hot), summary, labels)  # fmt: skip
        out[fp] = _Match(worst.rule, sig, bool(hot), None)
    return out


def _summary(s: Signal, threshold: float | None) -> str:
    return s.summary if threshold is None else f"{s.summary} (threshold {threshold:.4g})"
