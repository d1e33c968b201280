"""Rollout metrics for /metrics, read from the engine's memory at scrape time.

Per rollout that is active or the latest of its endpoint (labels rollout, endpoint, model, strategy):

- `watchkeeper_rollout_state{...,state}`: 1 for the state it is in, 0 for the others (every state is exported);
- `watchkeeper_rollout_candidate_weight`: the candidate's share of live traffic, percent;
- `watchkeeper_rollout_shadow_share`: the share of requests mirrored to the candidate, 0..1;
- `watchkeeper_rollout_awaiting_approval`: 1 while a step waits for an approver;
- `watchkeeper_rollout_guard_breached{...,guard}`: 1 while a guard is breached.

And `watchkeeper_rollouts{state}`: how many rollouts the agent knows in each state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.schemas import ROLLOUT_TERMINAL, RolloutOut, RolloutState

STATES: tuple[str, ...] = get_args(RolloutState)
LABELS = ["rollout", "endpoint", "model", "strategy"]


def shown(rollouts: list[RolloutOut]) -> list[RolloutOut]:
    """Active rollouts and the latest of each endpoint (bounded, whatever the history)."""
    latest: dict[str, RolloutOut] = {}
    for r in rollouts:
        if r.endpoint not in latest or r.started_at > latest[r.endpoint].started_at:
            latest[r.endpoint] = r
    keep = {r.id for r in latest.values()}
    return [r for r in rollouts if r.id in keep or r.state not in ROLLOUT_TERMINAL]


def rollout_metrics(rollouts: list[RolloutOut]) -> Iterator:
    state = GaugeMetricFamily("watchkeeper_rollout_state", "Rollout in this state (1) or not (0)",
                              labels=[*LABELS, "state"])  # fmt: skip
    weight = GaugeMetricFamily("watchkeeper_rollout_candidate_weight", "Candidate's share of live traffic, percent",
                               labels=LABELS)  # fmt: skip
    shadow = GaugeMetricFamily("watchkeeper_rollout_shadow_share", "Share of requests mirrored to the candidate",
                               labels=LABELS)  # fmt: skip
    waiting = GaugeMetricFamily("watchkeeper_rollout_awaiting_approval", "A step waits for an approver", labels=LABELS)
    breached = GaugeMetricFamily("watchkeeper_rollout_guard_breached", "A rollout guard is breached now",
                                 labels=[*LABELS, "guard"])  # fmt: skip
    for r in shown(rollouts):
        lv = [r.id, r.endpoint, r.model, r.strategy]
        for s in STATES:
            state.add_metric([*lv, s], 1.0 if r.state == s else 0.0)
        weight.add_metric(lv, r.weight)
        shadow.add_metric(lv, r.shadow)
        waiting.add_metric(lv, 1.0 if r.awaiting_approval_for is not None else 0.0)
        for g in r.guards:
            breached.add_metric([*lv, g.name], 1.0 if g.breached else 0.0)
    counts = GaugeMetricFamily("watchkeeper_rollouts", "Rollouts known to the agent, by state", labels=["state"])
    for s in STATES:
        counts.add_metric([s], sum(1 for r in rollouts if r.state == s))
    yield from (state, weight, shadow, waiting, breached, counts)


class RolloutCollector(Collector):
    """Registered on the app's metrics registry; reads the engine at scrape time (memory only)."""

    def __init__(self, engine: Callable[[], object | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator:
        engine = self._engine()
        if engine is not None:
            yield from rollout_metrics(engine.list())  # type: ignore[attr-defined]
