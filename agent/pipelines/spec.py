"""A pipeline file (TOML) read into a `PipelineSpec`, refused with the step and field named when it
cannot run: a cycle, an input no step writes, a parameter nobody declared, an unknown key."""

from __future__ import annotations

import hashlib
import re
import time
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.schemas.jobs import Duration, Size
from agent.schemas.pipelines import ParamValue, PipelineSpec, Resources, StepSpec, TriggerSpec

_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_PLACEHOLDER = re.compile(r"\{(params|inputs|outputs)\.([A-Za-z0-9_-]+)\}")
_CALL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_FORBID = ConfigDict(extra="forbid")


class SpecError(Exception):
    """A pipeline file that can't be registered; `field` names where (e.g. `steps.train.inputs.data`)."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.field = detail, field


class _Res(BaseModel):
    model_config = _FORBID
    cpu: float | None = Field(default=None, gt=0, le=4096)
    mem: Size | None = None
    gpus: int = Field(default=0, ge=0, le=64)
    time_limit: Duration | None = None


class _Step(BaseModel):
    model_config = _FORBID
    call: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    action: str | None = None
    config: dict = Field(default_factory=dict)
    isolation: str | None = None
    params: list[str] = Field(default_factory=list)
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list)
    resources: _Res = Field(default_factory=_Res)
    env: dict[str, str] = Field(default_factory=dict)
    retries: int = Field(default=0, ge=0, le=20)
    cache: bool = True
    code: str | None = None  # the file hashed into the cache key for a command step


class _Trigger(BaseModel):
    model_config = _FORBID
    kind: str
    cron: str | None = None
    alert: str | None = None
    endpoint: str | None = None
    dataset: str | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    min_interval: Duration | None = None


class _File(BaseModel):
    model_config = _FORBID
    name: str = Field(pattern=_NAME)
    description: str = ""
    workdir: str = "."
    min_interval: Duration | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    steps: dict[str, _Step] = Field(min_length=1)
    triggers: list[_Trigger] = Field(default_factory=list)


def file_version(content: str) -> str:
    """The pipeline's version: the digest of its file's text."""
    return "sha256:" + hashlib.sha256(content.encode()).hexdigest()


def parse_pipeline(content: str, path: str | None, principal: str, now: float | None = None) -> PipelineSpec:
    """Read and check a pipeline file. Raises SpecError naming the step and field."""
    try:
        raw = tomllib.loads(content)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"not TOML: {e}", "content") from None
    try:
        f = _File.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SpecError(f"{loc}: {err['msg']}", loc) from None
    base = Path(path).parent if path else None
    workdir = (base / f.workdir).resolve() if base else (Path(f.workdir) if Path(f.workdir).is_absolute() else None)
    if f.name == "runs":
        raise SpecError("'runs' is not a pipeline name (it is a path of the API)", "name")
    steps = [_step(name, s, f, workdir) for name, s in f.steps.items()]
    _check_graph(steps)
    triggers = [_trigger(i, t, f) for i, t in enumerate(f.triggers)]
    return PipelineSpec(
        name=f.name, version=file_version(content), description=f.description, path=path,
        workdir=str(workdir) if workdir else None, params=dict(f.params), steps=steps, triggers=triggers,
        min_interval_s=f.min_interval or 0.0, registered_at=now or time.time(), registered_by=principal,
    )  # fmt: skip


def _step(name: str, s: _Step, f: _File, workdir: Path | None) -> StepSpec:
    at = f"steps.{name}"
    if not re.match(_NAME, name):
        raise SpecError(f"step name {name!r}: letters, digits, '_' and '-' only", at)
    kinds = [k for k in ("call", "command", "action") if getattr(s, k) is not None]
    if len(kinds) != 1:
        raise SpecError(f"step {name}: give exactly one of call, command, action", f"{at}.call")
    if s.call is not None and not _CALL.match(s.call):
        raise SpecError(f"step {name}: call must be 'module:function', not {s.call!r}", f"{at}.call")
    if s.action is not None and s.action != "register":
        raise SpecError(f"step {name}: unknown action {s.action!r} (known: register)", f"{at}.action")
    iso = s.isolation or ("agent" if s.action else "job")
    if s.action and iso != "agent":
        raise SpecError(f"step {name}: an action runs in the agent (isolation = 'agent')", f"{at}.isolation")
    if iso not in ("job", "none", "agent") or (iso == "agent" and not s.action):
        raise SpecError(f"step {name}: isolation must be 'job' or 'none'", f"{at}.isolation")
    if iso == "none" and s.call is None:
        raise SpecError(f"step {name}: isolation = 'none' runs a callable: give call", f"{at}.isolation")
    for p in s.params:
        if p not in f.params:
            raise SpecError(f"step {name}: unknown parameter {p!r} (declared: {sorted(f.params)})", f"{at}.params")
    for arg in s.command or []:
        for kind, key in _PLACEHOLDER.findall(arg):
            known = f.params if kind == "params" else s.inputs if kind == "inputs" else s.outputs
            if key not in known:
                raise SpecError(f"step {name}: command names unknown {kind[:-1]} {key!r}", f"{at}.command")
    for out in s.outputs:
        if not re.match(_NAME, out):
            raise SpecError(f"step {name}: output name {out!r}", f"{at}.outputs")
    deps: list[str] = []
    for inp, ref in s.inputs.items():
        deps += _input_dep(name, inp, ref, f, workdir)
    for a in s.after:
        if a not in f.steps:
            raise SpecError(f"step {name}: after names no step {a!r}", f"{at}.after")
        deps.append(a)
    code = None
    if s.code:
        code = str((workdir / s.code) if workdir and not Path(s.code).is_absolute() else Path(s.code))
        if workdir and not Path(code).is_file():
            raise SpecError(f"step {name}: code file {code} does not exist", f"{at}.code")
    r = s.resources
    return StepSpec(
        name=name, call=s.call, command=s.command, action=s.action, config=s.config, isolation=iso,
        params=s.params, inputs=s.inputs, outputs=s.outputs, depends_on=sorted(set(deps)),
        resources=Resources(cpu=r.cpu, mem=r.mem, gpus=r.gpus, time_limit=r.time_limit), env=s.env,
        retries=s.retries, cache=s.cache and not s.action, code_path=code,
    )  # fmt: skip


def _input_dep(step: str, inp: str, ref: str, f: _File, workdir: Path | None) -> list[str]:
    at = f"steps.{step}.inputs.{inp}"
    if ref.startswith("file:"):
        p = Path(ref[5:])
        if workdir is not None and not (p if p.is_absolute() else workdir / p).exists():
            raise SpecError(f"step {step}: input {inp}: no file {ref[5:]!r} (from {workdir})", at)
        return []
    if ref.startswith("dataset:"):
        return []  # checked against the registry by the service
    src, dot, out = ref.partition(".")
    if not dot:
        raise SpecError(f"step {step}: input {inp}: say 'STEP.OUTPUT', 'file:PATH' or 'dataset:NAME'", at)
    if src not in f.steps:
        raise SpecError(f"step {step}: input {inp}: no step {src!r} writes it", at)
    if out not in f.steps[src].outputs:
        raise SpecError(f"step {step}: input {inp}: step {src} has no output {out!r}", at)
    return [src]


def _check_graph(steps: list[StepSpec]) -> None:
    deps = {s.name: s.depends_on for s in steps}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in deps[n]:
            if state.get(d) == 1:
                cyc = [*path[path.index(d) :], d] if d in path else [n, d]
                raise SpecError(f"cycle: {' -> '.join(cyc)}", f"steps.{n}.inputs")
            if d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for s in steps:
        if s.name not in state:
            visit(s.name, [s.name])


def _trigger(i: int, t: _Trigger, f: _File) -> TriggerSpec:
    at = f"triggers.{i}"
    if t.kind == "cron":
        from croniter import croniter  # the one cron parser (docs/pipelines.md)

        if not t.cron or not croniter.is_valid(t.cron):
            raise SpecError(f"trigger {i}: not a cron expression: {t.cron!r}", f"{at}.cron")
    elif t.kind == "alert":
        if not t.alert:
            raise SpecError(f"trigger {i}: an alert trigger names the alert rule", f"{at}.alert")
    elif t.kind == "dataset":
        if not t.dataset:
            raise SpecError(f"trigger {i}: a dataset trigger names the dataset", f"{at}.dataset")
    else:
        raise SpecError(f"trigger {i}: kind must be cron, alert or dataset, not {t.kind!r}", f"{at}.kind")
    for p in t.params:
        if p not in f.params:
            raise SpecError(f"trigger {i}: unknown parameter {p!r}", f"{at}.params")
    return TriggerSpec(kind=t.kind, cron=t.cron, alert=t.alert, endpoint=t.endpoint, dataset=t.dataset,
                       params=t.params, min_interval_s=t.min_interval or 0.0)  # fmt: skip


def order(spec: PipelineSpec) -> list[str]:
    """Steps in a dependency order (the file's order among equals)."""
    done: list[str] = []
    deps = {s.name: s.depends_on for s in spec.steps}
    while len(done) < len(deps):
        for s in spec.steps:
            if s.name not in done and all(d in done for d in deps[s.name]):
                done.append(s.name)
    return done


def check_run_params(spec: PipelineSpec, params: dict[str, ParamValue]) -> dict[str, ParamValue]:
    """The run's parameters: the declared defaults with `params` over them. Raises SpecError naming
    an unknown parameter or one of another type than its default."""
    out = dict(spec.params)
    for k, v in params.items():
        if k not in spec.params:
            raise SpecError(f"unknown parameter {k!r} (declared: {sorted(spec.params)})", f"params.{k}")
        d = spec.params[k]
        if type(v) is not type(d) and not (isinstance(d, float) and type(v) is int):
            raise SpecError(f"parameter {k}: {type(d).__name__} expected, got {v!r}", f"params.{k}")
        out[k] = v
    return out
