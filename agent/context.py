"""The running agent's parts, wired once by the daemon and handed to the API (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.audit import AuditLog
from agent.auth.tokens import TokenStore
from agent.config import AgentConfig
from agent.schemas import EnforcementInfo
from agent.store.reader import StoreReader
from agent.store.writer import StoreWriter
from agent.telemetry.sampler import Sampler

if TYPE_CHECKING:
    from agent.alerting.engine import AlertEngine
    from agent.asyncinf.service import AsyncService
    from agent.batch.service import BatchService
    from agent.jobs.service import JobService
    from agent.monitoring.service import MonitorService
    from agent.pipelines.service import PipelineService
    from agent.registry.store import Registry
    from agent.rollouts.engine import RolloutEngine
    from agent.serving.service import ServingService
    from agent.store.journal import Journal


@dataclass
class AgentContext:
    cfg: AgentConfig
    writer: StoreWriter
    reader: StoreReader
    sampler: Sampler
    tokens: TokenStore
    audit: AuditLog
    enforcement: EnforcementInfo
    schema_version: int
    started_at: float
    # Model serving (None until wired, e.g. in unit tests of other parts).
    serving: ServingService | None = None
    # The model registry (None until wired, e.g. in unit tests of other parts).
    registry: Registry | None = None
    # Drift windows, data quality and labels over the prediction log (None until wired).
    monitor: MonitorService | None = None
    # Alert rules, their state and webhook delivery (None until wired).
    alerts: AlertEngine | None = None
    # Rollouts of endpoints to candidate versions, and the datasets their gates use (None until wired).
    rollouts: RolloutEngine | None = None
    # Jobs under per-pipeline quotas ([jobs] enabled; None until wired).
    jobs: JobService | None = None
    # The jobs store's crash journal, opened by `build` once a crash's leftovers are replayed (agent/jobs/store.py).
    jobs_journal: Journal | None = None
    # Pipelines, their runs and triggers (needs jobs; None until wired).
    pipelines: PipelineService | None = None
    # Asynchronous inference: the durable queue, its worker and callbacks (None until wired).
    asyncinf: AsyncService | None = None
    # Batch transform (jobs of the `batch` pipeline; None without jobs).
    batch: BatchService | None = None
    # Cleared when the agent begins to stop, so /readyz turns 503 before the listener closes.
    accepting: bool = True
    checks: dict[str, str] = field(default_factory=dict)
