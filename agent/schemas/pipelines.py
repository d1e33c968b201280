"""Pipelines and their runs: what `/api/v1/pipelines` accepts and answers (see docs/pipelines.md).

A pipeline is registered from its TOML file's text; its version is the sha256 of that text. A run
records, per step, its state, whether the cache served it, its job (isolated steps are jobs of the
pipeline, under its quota), the content digests of what it read and wrote, and what it logged.
Times are unix seconds; a figure not measured (a step not yet ended) is `None`, never 0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, _Wire

# A parameter's value: TOML scalars only (a list/table parameter would make the cache key depend on
# how it was spelled).
ParamValue = str | int | float | bool

RunState = Literal["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
# UPSTREAM_FAILED: a step it depends on failed or was cancelled, so it never started (its siblings
# run on). SKIPPED: left out by `from`/`only` (its outputs, when needed, come from an earlier run:
# `reused_from`).
StepState = Literal["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "UPSTREAM_FAILED", "SKIPPED"]
FINAL_RUN_STATES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
FINAL_STEP_STATES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "UPSTREAM_FAILED", "SKIPPED"})

TriggerKind = Literal["manual", "cron", "alert", "dataset", "resume"]
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class Resources(_Wire):
    """A step's request when it runs as a job (isolation = "job"): as `POST /api/v1/jobs` takes it."""

    cpu: float | None = None
    mem: int | None = None  # bytes
    gpus: int = 0
    time_limit: float | None = None  # seconds


class StepSpec(_Wire):
    """One step as registered. Exactly one of `call` (`module:function`), `command` (an argv, with
    `{params.NAME}`, `{inputs.NAME}` and `{outputs.NAME}` placeholders filled by the runner) or `action`
    (done by the agent itself: "register" a model from the run, with lineage, and optionally start a
    canary of it; its settings in `config`)."""

    name: str
    call: str | None = None
    command: list[str] | None = None
    action: Literal["register"] | None = None
    config: dict = Field(default_factory=dict)
    # "none": a callable run in the run's one worker process; "job": a job of the pipeline (default);
    # "agent": an action, done in the agent.
    isolation: Literal["job", "none", "agent"] = "job"
    params: list[str] = Field(default_factory=list)  # the pipeline parameters this step reads
    # input name -> "STEP.OUTPUT" (another step's output) or "file:PATH" / "dataset:NAME[@VERSION]"
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)  # the steps whose outputs it reads, plus `after`
    resources: Resources = Field(default_factory=Resources)
    env: dict[str, str] = Field(default_factory=dict)
    retries: int = 0
    cache: bool = True
    code_path: str | None = None  # the file whose content is hashed into the cache key


class TriggerSpec(_Wire):
    """A continuous-training trigger. `cron`: a cron expression (croniter); `alert`: an alert rule's
    name (and optionally an endpoint label) firing; `dataset`: a new version of a registered dataset."""

    kind: Literal["cron", "alert", "dataset"]
    cron: str | None = None
    alert: str | None = None
    endpoint: str | None = None
    dataset: str | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    min_interval_s: float = 0.0


class PipelineSpec(_Wire):
    """A pipeline as registered."""

    name: str
    version: str  # "sha256:<hex>" of the file's text
    description: str = ""
    path: str | None = None  # where the file was read from (relative code paths resolve from its dir)
    workdir: str | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)  # declared parameters with defaults
    steps: list[StepSpec]
    triggers: list[TriggerSpec] = Field(default_factory=list)
    min_interval_s: float = 0.0  # between triggered runs (not by-hand runs)
    registered_at: float
    registered_by: str


class RunSummary(_Wire):
    """A run without its steps (lists)."""

    id: str
    pipeline: str
    pipeline_version: str
    state: RunState
    trigger: TriggerKind = "manual"
    trigger_detail: str = ""  # "alert drift-delays fired (endpoint delays)", "cron 0 3 * * *", "by alice"
    created_by: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    reason: str = ""  # why it failed/was cancelled, naming the step
    steps_total: int = 0
    steps_done: int = 0
    cache_hits: int = 0


class Artifact(_Wire):
    """An input or output by content: `digest` is "sha256:<hex>" of the file (of a directory: of its
    sorted (relative path, file digest) list). Stored content-addressed in the data dir."""

    digest: str
    size: int
    source: str | None = None  # for an external input: the path or dataset it came from (never keyed on)


class StepRun(_Wire):
    step: str
    state: StepState
    reason: str = ""
    isolation: Literal["job", "none", "agent"] = "job"
    cache_hit: bool = False
    cache_key: str | None = None
    reused_from: str | None = None  # the run whose outputs this step reused (cache hit / skipped / resume)
    attempt: int = 0
    job_id: str | None = None  # isolated steps: the job (its logs: GET /api/v1/jobs/{id}/logs)
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    inputs: dict[str, Artifact] = Field(default_factory=dict)
    outputs: dict[str, Artifact] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)  # last value logged per key
    logged_params: dict[str, ParamValue] = Field(default_factory=dict)
    log_tail: str = ""  # the last lines an in-process step printed / its error


class ModelRef(_Wire):
    """A model version a run registered (lineage filled from the run) and the rollout it started."""

    model: str
    version: int
    rollout_id: str | None = None


class Run(RunSummary):
    """`GET /api/v1/pipelines/runs/{id}`: everything recorded about a run."""

    params: dict[str, ParamValue] = Field(default_factory=dict)
    code_commit: str | None = None
    code_dirty: bool | None = None
    host: str = ""
    from_step: str | None = None
    only: list[str] = Field(default_factory=list)
    no_cache: bool = False
    resumed_from: str | None = None
    steps: list[StepRun] = Field(default_factory=list)
    models: list[ModelRef] = Field(default_factory=list)


class PipelineSummary(_Wire):
    spec: PipelineSpec
    last_run: RunSummary | None = None
    active_runs: int = 0


class PipelineList(_Wire):
    pipelines: list[PipelineSummary]


class RunList(_Wire):
    runs: list[RunSummary]
    total: int


class ValueDiff(_Wire):
    key: str  # a parameter name, or "STEP.metric"
    a: ParamValue | None = None
    b: ParamValue | None = None
    changed: bool


class StepDiff(_Wire):
    step: str
    a_state: StepState | None = None
    b_state: StepState | None = None
    a_duration_s: float | None = None
    b_duration_s: float | None = None
    a_cache_hit: bool = False
    b_cache_hit: bool = False
    outputs_changed: bool  # any output digest differs


class RunCompare(_Wire):
    """`GET /api/v1/pipelines/runs/compare?a=RUN&b=RUN`: params and metrics side by side."""

    a: RunSummary
    b: RunSummary
    params: list[ValueDiff]
    metrics: list[ValueDiff]
    steps: list[StepDiff]


# ---- requests ----


class PipelineRegister(_Wire):
    """`POST /api/v1/pipelines`: the file's text (TOML) and, optionally, its path on the agent's host
    (relative code paths and `file:` inputs resolve from its directory; the code file's content is
    part of the cache key)."""

    model_config = STRICT_INPUT

    content: str = Field(min_length=1, max_length=256 * 1024)
    path: str | None = Field(default=None, max_length=4096)


class RunRequest(_Wire):
    """`POST /api/v1/pipelines/{name}/runs`. `from_step`: that step and everything after it run, the
    steps before reuse the latest successful outputs; `only`: just those steps; `resume`: a failed
    run's id: its completed steps are reused, the rest run."""

    model_config = STRICT_INPUT

    params: dict[str, ParamValue] = Field(default_factory=dict)
    from_step: str | None = Field(default=None, pattern=_NAME)
    only: list[str] = Field(default_factory=list, max_length=256)
    no_cache: bool = False
    resume: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="", max_length=1024)


class RunAction(_Wire):
    """`POST /api/v1/pipelines/runs/{id}/cancel`."""

    model_config = STRICT_INPUT

    reason: str = Field(default="", max_length=1024)


class PipelineTrigger(_Wire):
    """`POST /api/v1/pipelines/{name}/trigger`: an external event (dedup'd like the built-in ones:
    while a run is active, or within `min_interval_s`, it starts nothing)."""

    model_config = STRICT_INPUT

    event: str = Field(default="manual", max_length=256)  # an idempotency key: the same event starts one run
    params: dict[str, ParamValue] = Field(default_factory=dict)


class TriggerResult(_Wire):
    started: bool
    run_id: str | None = None  # the run started, or the active/earlier run it was folded into
    reason: str = ""  # why nothing started ("run r-… is active", "min interval 600 s: last run 120 s ago")


__all__ = [
    "FINAL_RUN_STATES",
    "FINAL_STEP_STATES",
    "Artifact",
    "ModelRef",
    "ParamValue",
    "PipelineList",
    "PipelineRegister",
    "PipelineSpec",
    "PipelineSummary",
    "PipelineTrigger",
    "Resources",
    "Run",
    "RunAction",
    "RunCompare",
    "RunList",
    "RunRequest",
    "RunState",
    "RunSummary",
    "StepDiff",
    "StepRun",
    "StepSpec",
    "StepState",
    "TriggerResult",
    "TriggerSpec",
    "ValueDiff",
]
