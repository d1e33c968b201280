"""Wires the agent's parts, owns their lifecycle, talks to systemd and handles signals.

Start order: data-dir lock (agent/cli.py) -> store (recover, migrate, replay the prediction journal) ->
writer -> tokens -> telemetry -> HTTP. Stop order is the reverse, ending with a flush and a CHECKPOINT
so the next start replays no WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import sys
import time

import uvicorn

from agent.alerting.loop import alert_loop, start_alerting, stop_alerting
from agent.api.app import create_app
from agent.api.fastpath import PredictFastPath
from agent.asyncinf.service import AsyncService
from agent.audit import open_audit
from agent.auth.tokens import TokenStore, bootstrap_admin_token
from agent.config import AgentConfig
from agent.context import AgentContext
from agent.monitoring.service import MonitorService
from agent.registry.store import Registry, reset_tmp_dir
from agent.schemas import GpuStatus, Snapshot
from agent.serving.overload import BACKLOG, MAX_CONNECTIONS, ArrivalProtocol, bound_malloc
from agent.serving.predlog import replay_journal
from agent.serving.service import ServingService
from agent.store.db import open_store
from agent.store.reader import StoreReader
from agent.store.rollup import make_maintenance
from agent.store.writer import StoreWriter
from agent.systemd import notify, watchdog_interval
from agent.telemetry.enforcement import detect_enforcement
from agent.telemetry.sampler import Sampler
from agent.timeline.record import XidWatch, record_start, record_stop

log = logging.getLogger("watchkeeper.agent")

ALERT_ROW = ("ts", "severity", "kind", "message")


def _sources(cfg: AgentConfig):
    if cfg.simulate.host:
        from agent.telemetry.simulated import SimulatedHostCollector

        host = SimulatedHostCollector(seed=cfg.simulate.seed)
    else:
        from agent.telemetry.host import HostCollector

        host = HostCollector(top_n=cfg.top_processes)
    if cfg.simulate.gpus:
        from agent.telemetry.simulated import SimulatedGpuSource

        gpu = SimulatedGpuSource(count=cfg.simulate.gpus, seed=cfg.simulate.seed)
    else:
        from agent.telemetry.gpu import NvmlGpuSource

        gpu = NvmlGpuSource()
    return host, gpu


class _GpuStatusWatch:
    """Records an agent alert when the GPU source's state changes (once, not per sample)."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self._last: tuple[str, str | None] | None = None

    def __call__(self, snap: Snapshot) -> None:
        st: GpuStatus = snap.gpu_status
        key = (st.source, st.reason)
        if key == self._last:
            return
        first = self._last is None
        self._last = key
        if st.source == "none":
            sev = "info" if first else "warning"
            msg = f"no GPU data: {st.reason or 'unknown reason'}"
        else:
            sev, msg = (
                "info",
                f"GPU source {st.source}{' (simulated)' if st.simulated else ''}: {len(snap.gpus)} GPU(s)",
            )
        self._writer.append("agent_alerts", ALERT_ROW, [(snap.ts, sev, "telemetry.gpu_source", msg)])


class _SnapshotWatches:
    """Several per-sample watchers behind the sampler's one hook."""

    def __init__(self, *watches) -> None:
        self._watches = watches

    def __call__(self, snap: Snapshot) -> None:
        for w in self._watches:
            w(snap)


def build(cfg: AgentConfig) -> AgentContext:
    """Open the store and start the writer and sampler. Raises on a store that cannot open."""
    opened = open_store(cfg.db_path)
    # Answered requests a crash left only in the prediction journal go into the store before anything runs.
    replayed = replay_journal(opened.con, cfg.data_dir / "journal")
    if replayed.problem:
        opened.startup_alerts.append(("critical", "store.journal_replay_failed", replayed.problem))
    # Job rows and submits' audit entries a crash left only in the jobs journal: before the audit chain is
    # checked, and before the writer thread shares the connection.
    from agent.jobs.store import replay_jobs_journal

    jobs_replayed = replay_jobs_journal(opened.con, cfg.data_dir / "jobs-journal")
    if jobs_replayed.replay.problem:
        opened.startup_alerts.append(("critical", "store.journal_replay_failed", jobs_replayed.replay.problem))
    writer = StoreWriter(
        opened.con,
        flush_interval=cfg.flush_interval,
        maintenance=make_maintenance(
            cfg.retention.raw,
            cfg.retention.rollup,
            settle_s=cfg.flush_interval + 5,
            predictions_s=cfg.retention.predictions,
            windows_s=cfg.monitoring.keep,
        ),
    )
    now = time.time()
    # Read what the last run recorded before this one's writer writes anything.
    record_start(opened.con, writer, cfg.model_dump_json(), now)
    writer.start()
    writer.append("agent_alerts", ALERT_ROW, [(now, sev, kind, msg) for sev, kind, msg in opened.startup_alerts])
    tokens = TokenStore(writer, opened.con, cfg)
    token_file = bootstrap_admin_token(tokens, cfg.data_dir)
    if token_file is not None:
        print(
            f"watchkeeper-agent: no tokens configured; created an admin token: read it from {token_file} "
            "(mode 0600; the agent itself keeps only its digest)",
            file=sys.stderr,
            flush=True,
        )
    host, gpu = _sources(cfg)
    sampler = Sampler(
        host,
        gpu,
        writer,
        cfg.name,
        interval=cfg.sample_interval,
        jitter=cfg.sample_jitter,
        host_simulated=cfg.simulate.host,
        on_snapshot=_SnapshotWatches(_GpuStatusWatch(writer), XidWatch(writer)),
    )
    # Model artifacts; uploads stream into tmp/ (one filesystem, so placing an artifact is a rename).
    reset_tmp_dir(cfg.data_dir / "tmp")
    registry = Registry(writer, opened.con, cfg.data_dir / "models", cfg.data_dir / "tmp")
    serving = ServingService(registry, writer, cfg.serving.pool_budget)
    serving.predlog.attach_journal(replayed.journal)  # before the first request: every answer is journaled
    serving.restore(opened.con)
    # Endpoints that follow an alias switch to the new version (once it is loaded) when it moves.
    registry.subscribe(lambda event: serving.reresolve_alias(event.model))
    checks = {"store": "ok"}
    if opened.startup_alerts:
        checks["store"] = "recovered: " + opened.startup_alerts[0][2][:120]
    # The keyed chain, checked (agent/audit.py); entries just replayed are past the exported head, by design.
    audit, checks["audit"] = open_audit(cfg, writer, opened.con, jobs_replayed.audit_seqs)
    ctx = AgentContext(
        cfg=cfg,
        writer=writer,
        reader=StoreReader(opened.con, cfg.retention.raw),
        sampler=sampler,
        tokens=tokens,
        audit=audit,
        enforcement=detect_enforcement(),
        schema_version=opened.schema_version,
        started_at=now,
        checks=checks,
        registry=registry,
        serving=serving,
        jobs_journal=jobs_replayed.replay.journal,
    )
    # The async queue: replayed from its record file now (interrupted runs queued again), started with serving.
    ctx.asyncinf = AsyncService(cfg.data_dir / "async", serving)
    # Drift windows over the prediction log (its thread imports numpy only once an endpoint exists).
    ctx.monitor = MonitorService(cfg.monitoring, opened.con, writer, registry, serving)
    sampler.start()
    ctx.monitor.start()
    start_alerting(ctx)  # ctx.alerts: restores alert state, starts webhook delivery
    start_rollouts(ctx, opened.con)  # ctx.rollouts: replays rollout events, routes live ones again
    start_jobs(ctx, opened.con)  # ctx.jobs: re-adopts running jobs (or marks them LOST) before the listeners
    start_pipelines(ctx, opened.con)  # ctx.pipelines: runs that were going resume, through their jobs
    return ctx


def start_pipelines(ctx: AgentContext, con) -> None:
    """Pipelines need the jobs service (their isolated steps are its jobs)."""
    if ctx.jobs is None:
        return
    from agent.pipelines.service import PipelineService
    from agent.pipelines.store import PipelineStore
    from agent.pipelines.triggers import TriggerLoop

    datasets = getattr(ctx.rollouts, "datasets", None)
    svc = PipelineService(PipelineStore(ctx.writer, con), ctx.cfg.data_dir, ctx.jobs, ctx.registry, datasets,
                          ctx.rollouts, ctx.audit, ctx.cfg.name)  # fmt: skip
    try:
        resumed, failed = svc.restore()
    except Exception:
        log.exception("could not restore pipelines; starting with none")
        resumed = failed = 0
    if resumed or failed:
        msg = f"resumed {resumed} pipeline run(s); {failed} in-process step(s) failed by the restart"
        level = "warning" if failed else "info"
        ctx.writer.append("agent_alerts", ALERT_ROW, [(time.time(), level, "pipelines.restart", msg)])
    svc.triggers = TriggerLoop(svc, lambda: ctx.alerts)
    svc.triggers.start()
    ctx.pipelines = svc


def jobs_root(cfg: AgentConfig) -> str:
    """`[jobs] jobs_root`, or one named for this agent (cgroup names: letters, digits, `_.-`, ≤ 64)."""
    if cfg.jobs.jobs_root:
        return cfg.jobs.jobs_root
    return ("watchkeeper.jobs." + re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.name))[:64]


def start_jobs(ctx: AgentContext, con) -> None:
    """Build the jobs service, re-adopt what was running, start the runner thread."""
    if not ctx.cfg.jobs.enabled:
        return
    from agent.jobs.service import JobService, check_run_as, choose_tier
    from agent.jobs.store import JobStore

    check_run_as(ctx.cfg.jobs.run_as)
    tier = choose_tier(ctx.enforcement, jobs_root(ctx.cfg), ctx.cfg.jobs.tier, ctx.cfg.jobs.run_as)
    svc = JobService(ctx.cfg, JobStore(ctx.writer, con, ctx.jobs_journal), tier, lambda: ctx.sampler.latest)
    adopted, lost = svc.restore()
    if adopted or lost:
        ctx.writer.append("agent_alerts", ALERT_ROW, [(time.time(), "warning" if lost else "info", "jobs.restart",
                          f"re-adopted {adopted} running job(s); {lost} marked LOST")])  # fmt: skip
    svc.start()
    ctx.jobs = svc
    from agent.batch.service import BatchService

    # Batch transform runs as jobs of the `batch` pipeline; the agent reads their files (docs/batch.md).
    ctx.batch = BatchService(ctx.cfg.data_dir, svc, ctx.registry, ctx.serving,
                             ctx.serving.predlog if ctx.serving is not None else None)  # fmt: skip
    svc.progress_of = ctx.batch.progress_of
    ctx.batch.start()


def start_rollouts(ctx: AgentContext, con) -> None:
    """Build the rollout engine (and the datasets its gates use), replay its events, start its thread.

    Candidates of restored rollouts load once serving's loop runs; until then stable takes all traffic."""
    from agent.registry.datasets import DatasetStore
    from agent.rollouts.engine import RolloutEngine

    datasets = DatasetStore(ctx.writer, con, ctx.cfg.data_dir / "datasets")
    engine = RolloutEngine(
        ctx.writer, con, ctx.serving, ctx.registry, ctx.audit, datasets=datasets, alerts=lambda: ctx.alerts,
        host=ctx.cfg.name,
    )  # fmt: skip
    try:
        engine.restore()
    except Exception:
        log.exception("could not restore rollouts; starting with none")
    engine.start()
    ctx.rollouts = engine


def stop_rollouts(ctx: AgentContext) -> None:
    if ctx.rollouts is not None:
        ctx.rollouts.stop()


def shutdown(ctx: AgentContext) -> None:
    """Stop sampling, flush, checkpoint, close. Safe to call twice."""
    ctx.accepting = False
    if ctx.monitor is not None:
        ctx.monitor.stop()
    if ctx.pipelines is not None:
        ctx.pipelines.stop()
    stop_rollouts(ctx)
    if ctx.batch is not None:
        ctx.batch.stop()
    if ctx.jobs is not None:
        ctx.jobs.stop()  # jobs keep running: the next start re-adopts them
    if ctx.asyncinf is not None:
        ctx.asyncinf.close()
    if ctx.serving is not None:
        ctx.serving.close()
    ctx.sampler.stop()
    stop_alerting(ctx)
    if ctx.writer.running:
        record_stop(ctx.writer, "shutdown")
    ctx.writer.stop()
    if ctx.serving is not None:
        ctx.serving.predlog.close_journal()  # after the last flush: nothing uncommitted is left in it
    if ctx.jobs_journal is not None:
        ctx.jobs_journal.close()  # the writer's stop committed what it held
    try:
        ctx.reader.con.close()
    except Exception:  # already closed
        pass


async def _supervise(ctx: AgentContext, server: uvicorn.Server) -> None:
    """READY once listening; WATCHDOG only while the sampler loop is alive, so a hang gets us restarted."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.02)
    notify(f"READY=1\nSTATUS=serving, sampling every {ctx.cfg.sample_interval:g}s\nMAINPID={os.getpid()}")
    interval = watchdog_interval()
    while not server.should_exit:
        if interval is not None and ctx.sampler.alive(within=max(10 * ctx.cfg.sample_interval, 30.0)):
            notify("WATCHDOG=1")
        await asyncio.sleep(interval or 1.0)


def _quiet_gc() -> None:
    """Move start-up objects out of the collector's sight and collect young objects less often.

    Full collections rescanned every imported module's objects every few seconds (50-90 ms each,
    freeing nothing): that was the predict path's p99. Young-generation collections still run.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)


def _run_loop(coro) -> None:
    """uvloop when installed (uvicorn[standard] brings it): its transports make each response
    cheaper than asyncio's selector loop, which is most of the predict path's cost on small models."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def serve(cfg: AgentConfig, sockets: list[socket.socket]) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    bound_malloc()  # before build() starts threads
    ctx = build(cfg)
    app = PredictFastPath(create_app(ctx), ctx)
    config = uvicorn.Config(
        app,
        http=ArrivalProtocol,  # PeerCredProtocol that also stamps each request's arrival
        limit_concurrency=MAX_CONNECTIONS,  # memory stays bounded whatever the callers do
        backlog=BACKLOG,
        lifespan="off",
        log_level="warning" if cfg.log_level == "info" else cfg.log_level,
        access_log=cfg.log_level == "debug",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    for s in sockets:
        where = s.getsockname()
        log.info("listening on %s", where if isinstance(where, str) else f"{where[0]}:{where[1]}")

    async def main() -> None:
        sup = asyncio.create_task(_supervise(ctx, server))
        if ctx.serving is not None:
            ctx.serving.start(asyncio.get_running_loop())  # pre-warms endpoints' models
        if ctx.asyncinf is not None:
            ctx.asyncinf.start(asyncio.get_running_loop())  # the worker drains what a restart found queued
        alerts = asyncio.create_task(alert_loop(ctx))  # evaluates rules every alerting.interval
        loop = asyncio.get_running_loop()
        loop.call_later(5.0, _quiet_gc)
        try:
            await server.serve(sockets=sockets)
        finally:
            ctx.accepting = False
            sup.cancel()
            alerts.cancel()

    # uvicorn re-raises the signal that stopped it once serve() returns; with the default handler
    # that would kill us before the flush and checkpoint below. A Python handler makes it a no-op.
    # SIGHUP (a closed terminal, e.g. the demo's) stops gracefully too; uvicorn leaves it alone.
    def on_signal(sig: int, _frame: object) -> None:
        log.info("stopping on signal %s", signal.Signals(sig).name)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    print(
        f"watchkeeper-agent {cfg.name}: listening on " + ", ".join(str(a) for a in cfg.listen_addresses()),
        file=sys.stderr,
        flush=True,
    )
    try:
        _run_loop(main())
    finally:
        notify("STOPPING=1")
        shutdown(ctx)
        for a in cfg.listen_addresses():
            if a.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(a.path)
    return 0
