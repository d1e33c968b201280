"""The FastAPI application factory: routes, error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from agent import __version__
from agent.api.errors import install_error_handlers
from agent.api.metrics import AgentCollector, make_registry
from agent.api.routes import admin, health, models, telemetry
from agent.api.schemas import API_PREFIX
from agent.context import AgentContext


def create_app(ctx: AgentContext) -> FastAPI:
    app = FastAPI(
        title="Watchkeeper agent",
        version=__version__,
        description="Per-host agent: telemetry, store and (later) serving, drift and rollouts.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.registry = make_registry(
        AgentCollector(lambda: ctx.sampler.latest, lambda: ctx.writer.stats, ctx.cfg.name)
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(telemetry.router, prefix=API_PREFIX)
    app.include_router(admin.router, prefix=API_PREFIX)
    app.include_router(models.router, prefix=API_PREFIX)
    return app
