"""The pipelines half of the agents' API (`/api/v1/pipelines`), and the poller the TUI runs.

`PipelinesClient` adds the pipeline routes to `JobsClient` (a step that is a job reads its log through
the jobs routes). `PipelinesPoller` is `JobsPoller` plus on-demand requests the pipelines screen makes
on the poller's thread (through `ThreadedSource`): the fleet's pipelines with their last runs, one run
in full, its previous run, and the actions. Pipelines are not part of every poll: nothing in an
agent's summary counts them, and only the pipelines screen shows them, so it asks after each poll
while it is open.

Like `console.core.client` this imports no Textual and nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import TypeAdapter

from agent.schemas import (
    API_PREFIX,
    PipelineList,
    PipelineRegister,
    PipelineSpec,
    Run,
    RunAction,
    RunCompare,
    RunList,
    RunRequest,
)
from console.core.config import AgentSpec
from console.core.errors import AgentError, capture, why
from console.core.feeds import unless_unavailable
from console.jobs.client import JobsClient, JobsPoller

PIPELINES_PATH = f"{API_PREFIX}/pipelines"
RUNS_PATH = f"{PIPELINES_PATH}/runs"

_SPEC = TypeAdapter(PipelineSpec)
_LIST = TypeAdapter(PipelineList)
_RUN = TypeAdapter(Run)
_RUNS = TypeAdapter(RunList)
_COMPARE = TypeAdapter(RunCompare)


def pipelines_unavailable(exc: AgentError) -> bool:
    """The agent has no pipelines: the route is missing (older agent) or they are off there (503)."""
    if exc.status_code == 404 and exc.error_code in (None, "not_found"):
        return True
    return exc.status_code == 503 and exc.error_code in ("pipelines_unavailable", "unavailable")


class PipelinesClient(JobsClient):
    """`JobsClient` plus the pipeline routes. Refusals carry the agent's reason and the field it names."""

    @staticmethod
    def _run_path(run_id: str, tail: str = "") -> str:
        return f"{RUNS_PATH}/{quote(run_id, safe='')}" + (f"/{tail}" if tail else "")

    async def pipelines(self) -> PipelineList | None:
        """`GET /api/v1/pipelines` (each with its last run); None when the agent has no pipelines."""
        response = await unless_unavailable(self._jobs_request("GET", PIPELINES_PATH), pipelines_unavailable)
        return None if response is None else self.parse(PIPELINES_PATH, _LIST, response)

    async def register_pipeline(self, content: str, path: str | None = None) -> PipelineSpec:
        """`POST /api/v1/pipelines` (operator; audited): 201 with the pipeline as registered."""
        body = PipelineRegister(content=content, path=path).model_dump_json(exclude_none=True).encode()
        return self.parse(PIPELINES_PATH, _SPEC, await self._jobs_request("POST", PIPELINES_PATH, body=body))

    async def pipeline(self, name: str) -> PipelineSpec:
        path = f"{PIPELINES_PATH}/{quote(name, safe='')}"
        return self.parse(path, _SPEC, await self._jobs_request("GET", path))

    async def start_run(self, name: str, request: RunRequest) -> Run:
        """`POST /api/v1/pipelines/{name}/runs` (operator; audited): 202 with the run."""
        path = f"{PIPELINES_PATH}/{quote(name, safe='')}/runs"
        body = request.model_dump_json(exclude_defaults=True).encode()
        return self.parse(path, _RUN, await self._jobs_request("POST", path, body=body))

    async def runs(self, pipeline: str | None = None, state: str | None = None, limit: int | None = None) -> RunList:
        """`GET /api/v1/pipelines/runs[?pipeline=&state=&limit=]`, newest first."""
        params: dict[str, Any] = {k: v for k, v in (("pipeline", pipeline), ("state", state), ("limit", limit)) if v}
        return self.parse(RUNS_PATH, _RUNS, await self._jobs_request("GET", RUNS_PATH, params=params or None))

    async def run(self, run_id: str) -> Run:
        """`GET /api/v1/pipelines/runs/{id}` (404 unknown)."""
        path = self._run_path(run_id)
        return self.parse(path, _RUN, await self._jobs_request("GET", path))

    async def cancel_run(self, run_id: str, reason: str = "") -> Run:
        """`POST /api/v1/pipelines/runs/{id}/cancel` (operator; audited)."""
        path = self._run_path(run_id, "cancel")
        body = RunAction(reason=reason).model_dump_json().encode()
        return self.parse(path, _RUN, await self._jobs_request("POST", path, body=body))

    async def compare(self, a: str, b: str) -> RunCompare:
        """`GET /api/v1/pipelines/runs/compare?a=&b=`: params, metrics and steps side by side."""
        path = f"{RUNS_PATH}/compare"
        return self.parse(path, _COMPARE, await self._jobs_request("GET", path, params={"a": a, "b": b}))


@dataclass(frozen=True)
class AgentPipelines:
    """One agent's pipelines as of the last ask: `pipelines` None with `error` (not read) or without
    an error (the agent has no pipelines)."""

    agent: str
    pipelines: PipelineList | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunDetail:
    """A run in full and the pipeline's run before it (for the metrics side by side; None: first run)."""

    run: Run
    previous: Run | None = None
    clock_offset_s: float = 0.0  # the agent's clock minus ours: a running step's time so far is in its clock


class PipelinesPoller(JobsPoller):
    """`JobsPoller` plus the pipelines screen's on-demand requests (see the module docstring)."""

    def __init__(self, specs: Iterable[AgentSpec], **kwargs: Any) -> None:
        kwargs.setdefault("client_factory", PipelinesClient)
        super().__init__(specs, **kwargs)

    def _pipes(self, name: str) -> PipelinesClient:
        return self.client_with(name, PipelinesClient, "pipelines")

    async def fleet_pipelines(self) -> tuple[AgentPipelines, ...]:
        """Every agent's pipelines with their last runs, asked at once; an agent that fails says why."""
        names = [s.name for s in self.specs]
        answers = await asyncio.gather(*(capture(self._pipes(n).pipelines()) for n in names))
        out = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, Exception):
                out.append(AgentPipelines(name, error=why(answer)))
            else:
                out.append(AgentPipelines(name, pipelines=answer))
        return tuple(out)

    async def run_detail(self, name: str, run_id: str) -> RunDetail:
        """Run `run_id` on agent `name` in full, and the same pipeline's run before it."""
        client = self._pipes(name)
        run = await client.run(run_id)
        listed = await client.runs(pipeline=run.pipeline, limit=50)
        earlier = [r for r in listed.runs if r.id != run.id and r.created_at <= run.created_at]
        previous = await client.run(earlier[0].id) if earlier else None
        return RunDetail(run, previous, client.clock_offset_s)

    async def start_pipeline_run(self, name: str, pipeline: str, reason: str) -> Run:
        """Run `pipeline` on agent `name` with its default parameters."""
        return await self._pipes(name).start_run(pipeline, RunRequest(reason=reason))

    async def cancel_pipeline_run(self, name: str, run_id: str, reason: str) -> Run:
        return await self._pipes(name).cancel_run(run_id, reason)
