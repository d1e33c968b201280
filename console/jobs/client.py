"""The jobs half of the agents' API (`/api/v1/jobs`, `/api/v1/quotas`), and jobs in the fleet poll.

`JobsClient` adds the job and quota routes to `RolloutsClient`; `JobsPoller` is the poller the TUI runs:
besides what `RolloutsPoller` asks, each agent's jobs (`GET /api/v1/jobs?limit=`, active ones first) and
quotas (`GET /api/v1/quotas`) come in the same round trip while the jobs or quotas screen is open, and
otherwise only when the agent's summary says its job counts moved (or every `FEED_REFRESH_S`). An agent
without jobs (404: older agent; 503: jobs not running there; or a summary whose `jobs` is None) counts
as having none and is asked again every `jobs_idle_s`.

Fleet statuses carry the jobs in `JobsAgentStatus.jobs` (a subclass of `RolloutAgentStatus`, so every
screen that knows nothing of jobs keeps working); read them with `jobs_feed(agent)`.

Like `console.core.client` this imports no Textual and nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.schemas import API_PREFIX, ErrorBody, Job, JobAction, JobList, JobLog, JobSubmit, QuotaList, QuotaUsage
from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, capture, classify_response
from console.core.feeds import FeedState, FeedTrack, beside, unless_unavailable
from console.core.poller import AgentStatus
from console.rollouts.client import RolloutAgentStatus, RolloutsClient, RolloutSource, RolloutsPoller

if TYPE_CHECKING:
    from console.core.poller import AgentTrack

JOBS_PATH = f"{API_PREFIX}/jobs"
QUOTAS_PATH = f"{API_PREFIX}/quotas"
# An agent without jobs is asked again this often.
JOBS_IDLE_S = 120.0
# Jobs per agent in a poll: the active ones come first, then the newest that ended.
POLL_LIMIT = 200
# A log read asks for at most this much at once (the agent caps it too).
LOG_CHUNK = 256 * 1024

_JOB = TypeAdapter(Job)
_JOBS = TypeAdapter(JobList)
_LOG = TypeAdapter(JobLog)
_QUOTAS = TypeAdapter(QuotaList)
_QUOTA = TypeAdapter(QuotaUsage)
_ERROR = TypeAdapter(ErrorBody)


class JobRefused(AgentError):
    """An agent refused a job request; the message carries its whole reason and the field it names."""

    def __init__(self, base: AgentError, body: ErrorBody | None) -> None:
        message = base.message
        if body is not None:
            detail = body.detail if isinstance(body.detail, str) else ""
            field = f" ({body.field})" if body.field else ""
            if detail:
                # classify_response keeps 120 characters; a refusal's reason is worth printing whole.
                message = f"HTTP {base.status_code}: {body.error}{field}: {' '.join(detail.split())}"
            elif field:
                message = f"{message}{field}"
        super().__init__(base.kind, message, status_code=base.status_code, error_code=base.error_code)
        self.body = body


def jobs_unavailable(exc: AgentError) -> bool:
    """The agent has no jobs: the route is missing (older agent) or jobs are not running there (503)."""
    if exc.status_code == 404 and exc.error_code in (None, "not_found"):
        return True
    return exc.status_code == 503 and exc.error_code in ("jobs_unavailable", "unavailable")


# --------------------------------------------------------------------------- the client


class JobsClient(RolloutsClient):
    """`RolloutsClient` plus the job and quota routes."""

    async def _jobs_request(self, method: str, path: str, **options: Any) -> httpx.Response:
        return await self.request(method, path, refusal=self._job_refused, **options)

    def _job_refused(self, response: httpx.Response) -> JobRefused:
        base = classify_response(response, has_token=bool(self.spec.token))
        try:
            body: ErrorBody | None = _ERROR.validate_json(response.content)
        except ValidationError:
            body = None
        return JobRefused(base, body)

    @staticmethod
    def _job_path(job_id: str, tail: str = "") -> str:
        return f"{JOBS_PATH}/{quote(job_id, safe='')}" + (f"/{tail}" if tail else "")

    async def jobs(
        self, state: str | None = None, pipeline: str | None = None, limit: int | None = None
    ) -> JobList | None:
        """`GET /api/v1/jobs[?state=&pipeline=&limit=]` (active first, newest first); None without jobs."""
        params: dict[str, Any] = {}
        if state:
            params["state"] = state
        if pipeline:
            params["pipeline"] = pipeline
        if limit is not None:
            params["limit"] = limit
        response = await unless_unavailable(
            self._jobs_request("GET", JOBS_PATH, params=params or None), jobs_unavailable
        )
        return None if response is None else self.parse(JOBS_PATH, _JOBS, response)

    async def job(self, job_id: str) -> Job:
        """`GET /api/v1/jobs/{id}` (404 unknown)."""
        path = self._job_path(job_id)
        return self.parse(path, _JOB, await self._jobs_request("GET", path))

    async def submit_job(self, submit: JobSubmit) -> Job:
        """`POST /api/v1/jobs` (operator; audited): 201 with the job."""
        body = submit.model_dump_json(exclude_none=True).encode()
        return self.parse(JOBS_PATH, _JOB, await self._jobs_request("POST", JOBS_PATH, body=body))

    async def job_log(self, job_id: str, stream: str = "stdout", offset: int = 0, max_bytes: int = LOG_CHUNK,
                      task: int | None = None) -> JobLog:  # fmt: skip
        """`GET /api/v1/jobs/{id}/logs?stream=&offset=&max_bytes=[&task=]`: bytes from `offset`; ask on at
        `next_offset`. `task`: a job array's task (each writes its own output)."""
        path = self._job_path(job_id, "logs")
        params: dict[str, Any] = {"stream": stream, "offset": offset, "max_bytes": max_bytes}
        if task is not None:
            params["task"] = task
        return self.parse(path, _LOG, await self._jobs_request("GET", path, params=params))

    async def job_action(self, job_id: str, action: str, reason: str = "") -> Job:
        """`POST /api/v1/jobs/{id}/cancel|requeue` (operator; audited)."""
        if action not in ("cancel", "requeue"):
            raise ValueError(f"unknown job action {action!r}")
        path = self._job_path(job_id, action)
        body = JobAction(reason=reason).model_dump_json().encode()
        return self.parse(path, _JOB, await self._jobs_request("POST", path, body=body))

    async def quotas(self) -> QuotaList | None:
        """`GET /api/v1/quotas`; None when the agent has no jobs."""
        response = await unless_unavailable(self._jobs_request("GET", QUOTAS_PATH), jobs_unavailable)
        return None if response is None else self.parse(QUOTAS_PATH, _QUOTAS, response)

    async def quota(self, pipeline: str) -> QuotaUsage:
        """`GET /api/v1/quotas/{pipeline}`."""
        path = f"{QUOTAS_PATH}/{quote(pipeline, safe='')}"
        return self.parse(path, _QUOTA, await self._jobs_request("GET", path))


# --------------------------------------------------------------------------- poll results


@dataclass(frozen=True)
class JobsFeed:
    """One agent's jobs and quotas as of its last poll. Times are console-clock unix seconds."""

    state: FeedState = FeedState.UNKNOWN
    jobs: tuple[Job, ...] = ()
    total: int = 0  # jobs the agent holds (of which `jobs` has up to POLL_LIMIT)
    quotas: QuotaList | None = None
    error: str | None = None
    fetched_at: float | None = None  # the last good answer


@dataclass(frozen=True)
class JobsAgentStatus(RolloutAgentStatus):
    """`RolloutAgentStatus` with the agent's jobs (None: not asked)."""

    jobs: JobsFeed | None = None


def jobs_feed(agent: AgentStatus) -> JobsFeed | None:
    """The jobs of `agent` (None for statuses from a poller that does not ask for them)."""
    return getattr(agent, "jobs", None)


def with_jobs(agent: AgentStatus, feed: JobsFeed | None) -> JobsAgentStatus:
    """`agent` carrying `feed`."""
    if isinstance(agent, JobsAgentStatus):
        return replace(agent, jobs=feed)
    values = {f.name: getattr(agent, f.name) for f in fields(agent)}
    return JobsAgentStatus(**values, jobs=feed)


class JobsSource(RolloutSource, Protocol):
    """What the jobs and quotas screens need from the data layer (JobsPoller, or a test fake)."""

    async def job_action(self, name: str, job_id: str, action: str, reason: str) -> Job: ...

    async def job_log(self, name: str, job_id: str, stream: str, offset: int, max_bytes: int,
                      task: int | None = None) -> JobLog: ...  # fmt: skip


def job_counts(track: AgentTrack) -> object:
    """What the agent's summary says of its jobs; None without a summary, "none" without jobs."""
    summary = track.summary
    if summary is None:
        return None
    jobs = summary.jobs
    if jobs is None:
        return "none"
    return (jobs.running, jobs.pending, jobs.failed_recent, jobs.quotas_near_limit)


def jobs_quiet(counts: object) -> bool:
    """The summary counts no running or pending job and no quota near its limit (or there are no jobs)."""
    if counts == "none":
        return True
    return isinstance(counts, tuple) and not counts[0] and not counts[1] and not counts[3]


class JobsPoller(RolloutsPoller):
    """`RolloutsPoller` that also fetches every agent's jobs and quotas (see the module docstring)."""

    def __init__(
        self,
        specs: Iterable[AgentSpec],
        *,
        jobs_idle_s: float = JOBS_IDLE_S,
        jobs_limit: int = POLL_LIMIT,
        client_factory: Callable[[AgentSpec], AgentClient] = JobsClient,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs, client_factory=client_factory, **kwargs)
        self.jobs_idle_s = jobs_idle_s
        self.jobs_limit = jobs_limit
        self._job_tracks = {s.name: FeedTrack(JobsFeed()) for s in self.specs}

    def _jobs_client(self, name: str) -> JobsClient:
        return self.client_with(name, JobsClient, "jobs")

    async def poll_agent(self, track: AgentTrack) -> None:
        jt = self._job_tracks[track.spec.name]
        now = self.now()
        wanted = self.feed_wanted("jobs")
        # An agent whose last summary said it runs no jobs is not asked for them until its summary changes.
        no_jobs = job_counts(track) == "none"
        if no_jobs or jt.may_wait(track, now, wanted=wanted):
            # The summary (this poll's one request) says whether there are jobs and whether they changed.
            await super().poll_agent(track)
            counts = job_counts(track)
            if counts == "none":
                jt.based_on(counts, True)
                jt.feed = JobsFeed(state=FeedState.NONE, fetched_at=self.now())
                return
            if not wanted and jt.settled(counts, quiet=jobs_quiet(counts)):
                return
            jt.attempt_at = now
            result = await capture(self._fetch_jobs(track.spec.name))
        elif not jt.due(now, self.jobs_idle_s):
            await super().poll_agent(track)
            return
        else:
            result = await beside(super().poll_agent(track), self._fetch_jobs(track.spec.name))
        counts = job_counts(track)
        jt.based_on(counts, jobs_quiet(counts))
        if isinstance(result, tuple):
            jobs, quotas = result
            jt.feed = JobsFeed(
                state=FeedState.OK, jobs=tuple(jobs.jobs), total=jobs.total, quotas=quotas, fetched_at=self.now()
            )
        elif result is None:
            jt.feed = JobsFeed(state=FeedState.NONE, fetched_at=self.now())
        else:
            jt.failed(result)

    async def _fetch_jobs(self, name: str) -> tuple[JobList, QuotaList | None] | None:
        client = self._jobs_client(name)
        jobs, quotas = await asyncio.gather(client.jobs(limit=self.jobs_limit), client.quotas())
        return None if jobs is None else (jobs, quotas)

    status_type: type[AgentStatus] = JobsAgentStatus

    def status_extras(self, track: AgentTrack) -> dict[str, Any]:
        return {**super().status_extras(track), "jobs": self._job_tracks[track.spec.name].feed}

    # ------------------------------------------------------------------ on demand (JobsSource)

    async def job_action(self, name: str, job_id: str, action: str, reason: str) -> Job:
        """Cancel or requeue job `job_id` on agent `name`; the next poll fetches its jobs again."""
        try:
            return await self._jobs_client(name).job_action(job_id, action, reason)
        finally:
            # Whatever the summary says next, fetch this agent's jobs on the next poll.
            track = self._job_tracks[name]
            track.attempt_at = None
            track.based_on(object(), quiet=False)

    async def job_log(self, name: str, job_id: str, stream: str, offset: int, max_bytes: int,
                      task: int | None = None) -> JobLog:  # fmt: skip
        """A piece of job `job_id`'s log on agent `name` (a job array's: of task `task`)."""
        return await self._jobs_client(name).job_log(job_id, stream, offset, max_bytes, task)
