"""The FastAPI application factory: routes, error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from agent import __version__
from agent.alerting.metrics import AlertCollector
from agent.api.errors import install_error_handlers
from agent.api.gate import Gate
from agent.api.metrics import AgentCollector, make_registry
from agent.api.openapi import install_openapi
from agent.api.routes import (
    admin,
    asyncinf,
    endpoints,
    health,
    models,
    monitoring,
    summary,
    telemetry,
    timeline,
)
from agent.api.routes import alerts as alert_routes
from agent.api.routes import batch as batch_routes
from agent.api.routes import jobs as job_routes
from agent.api.routes import pipelines as pipeline_routes
from agent.api.routes import rollouts as rollout_routes
from agent.context import AgentContext
from agent.jobs.metrics import JobsCollector
from agent.rollouts.metrics import RolloutCollector
from agent.schemas import API_PREFIX


def create_app(ctx: AgentContext) -> FastAPI:
    app = FastAPI(
        title="Watchkeeper agent",
        version=__version__,
        description="Per-host agent: telemetry, store, model registry, serving, drift and alerts (rollouts next).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.registry = make_registry(
        AgentCollector(lambda: ctx.sampler.latest, lambda: ctx.writer.stats, ctx.cfg.name, extra=_serving_metrics(ctx))
    )
    app.state.registry.register(AlertCollector(lambda: ctx.alerts))
    app.state.registry.register(RolloutCollector(lambda: ctx.rollouts))
    app.state.registry.register(JobsCollector(lambda: ctx.jobs))
    install_error_handlers(app)
    # Auth and body caps from headers, before FastAPI reads any body (agent/api/gate.py).
    app.add_middleware(Gate, ctx=ctx)
    app.include_router(health.router)
    app.include_router(telemetry.router, prefix=API_PREFIX)
    app.include_router(summary.router, prefix=API_PREFIX)
    app.include_router(admin.router, prefix=API_PREFIX)
    app.include_router(models.router, prefix=API_PREFIX)
    app.include_router(endpoints.router, prefix=API_PREFIX)
    app.include_router(asyncinf.router, prefix=API_PREFIX)
    app.include_router(monitoring.router, prefix=API_PREFIX)
    app.include_router(alert_routes.router, prefix=API_PREFIX)
    app.include_router(rollout_routes.router, prefix=API_PREFIX)
    app.include_router(job_routes.router, prefix=API_PREFIX)
    app.include_router(timeline.router, prefix=API_PREFIX)
    app.include_router(pipeline_routes.router, prefix=API_PREFIX)
    app.include_router(batch_routes.router, prefix=API_PREFIX)
    install_openapi(app)
    return app


def _serving_metrics(ctx: AgentContext):
    def extra():
        if ctx.serving is not None:
            from agent.serving.metrics import serving_metrics

            yield from serving_metrics(ctx.serving)
        if ctx.asyncinf is not None:
            from agent.asyncinf.metrics import async_metrics

            yield from async_metrics(ctx.asyncinf)

    return extra
