"""The agent's alerting lifecycle: build the engine and notifier, evaluate every interval, stop.

The daemon calls `start_alerting` in `build()`, runs `alert_loop` as a task on the event loop and
calls `stop_alerting` on shutdown. The loop reads the serving status on the event loop (where the
serving counters live, as `GET /api/v1/serving` does) and does everything else in a worker thread:
the monitor's signals may read the store and `evaluate` waits for the store writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from agent.alerting.engine import AlertEngine
from agent.alerting.rules import JOB_KINDS, MONITOR_KINDS, ROLLOUT_KINDS, SERVING_KINDS, Signal
from agent.alerting.signals import serving_signals
from agent.alerting.webhooks import Notifier
from agent.config import AgentConfig
from agent.schemas import ServingStatus

if TYPE_CHECKING:
    from agent.context import AgentContext

log = logging.getLogger("watchkeeper.alerting")


def external_url(cfg: AgentConfig) -> str:
    """The agent's first TCP address as a URL, for links in notifications ("" when only a socket)."""
    for a in cfg.listen_addresses():
        if a.kind == "tcp":
            host = "localhost" if a.host in ("0.0.0.0", "::") else a.host
            return f"http://{f'[{host}]' if ':' in host else host}:{a.port}"
    return ""


def start_alerting(ctx: AgentContext) -> AlertEngine:
    """Restore alert state from the store and start webhook delivery. Sets and returns ctx.alerts."""
    cfg = ctx.cfg
    notifier = Notifier(cfg.alerting.webhooks, external_url=external_url(cfg))
    engine = AlertEngine(ctx.writer, ctx.reader, cfg.alerting.rules, cfg.name, notifier)
    try:
        active = engine.load()
    except Exception:
        log.exception("could not restore alerts; starting with none")
    else:
        if active:
            log.info("restored %d pending/firing alert(s)", active)
    notifier.start()
    ctx.alerts = engine
    return engine


def stop_alerting(ctx: AgentContext) -> None:
    if ctx.alerts is not None and ctx.alerts.notifier is not None:
        ctx.alerts.notifier.stop()


def collect(
    ctx: AgentContext, engine: AlertEngine, status: ServingStatus | None, previous: ServingStatus | None
) -> tuple[list[Signal], set[str]]:
    """Every signal source's signals, and the kinds they speak for (a source that failed speaks for
    none, so its alerts stay as they are instead of resolving)."""
    signals: list[Signal] = []
    covered: set[str] = set()
    if status is not None:
        signals.extend(serving_signals(status, previous, engine.rules))
        covered |= SERVING_KINDS
    monitor_signals = getattr(ctx.monitor, "signals", None)
    if monitor_signals is not None:
        try:
            got = monitor_signals()
        except Exception:
            log.exception("monitor signals failed")
            got = None
        if got is not None:  # None: not ready yet
            signals.extend(got)
            covered |= MONITOR_KINDS
    rollout_signals = getattr(ctx.rollouts, "signals", None)
    if rollout_signals is not None:
        try:
            signals.extend(rollout_signals())
            covered |= ROLLOUT_KINDS
        except Exception:
            log.exception("rollout signals failed")
    jobs_view = getattr(ctx.jobs, "alert_view", None)
    if jobs_view is not None:
        try:
            from agent.alerting.job_signals import job_signals, quota_signals

            jobs, p95s, quotas = jobs_view()
            signals.extend(job_signals(jobs, p95s, time.time()))
            signals.extend(quota_signals(quotas))
            covered |= JOB_KINDS
        except Exception:
            log.exception("job signals failed")
    return signals, covered


def evaluate_once(
    ctx: AgentContext, engine: AlertEngine, status: ServingStatus | None, previous: ServingStatus | None
) -> None:
    signals, covered = collect(ctx, engine, status, previous)
    engine.evaluate(signals, time.time(), covered)


async def alert_loop(ctx: AgentContext) -> None:
    """Every `alerting.interval` seconds: gather signals and evaluate, off the event loop."""
    engine = ctx.alerts
    if engine is None:
        return
    interval = ctx.cfg.alerting.interval
    previous: ServingStatus | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            status = ctx.serving.status() if ctx.serving is not None else None
            await asyncio.to_thread(evaluate_once, ctx, engine, status, previous)
            previous = status
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alert evaluation failed")
