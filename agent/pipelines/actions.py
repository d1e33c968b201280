"""The `register` action, done by the agent: the model a run produced becomes a registry version whose
lineage comes from the run (no hand-written lineage), and, when the step names an endpoint, a canary
of it starts there with the validation gate against the version the endpoint serves — which then
waits for a person's approval like any rollout (docs/rollouts.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.schemas.auth import Principal
from agent.schemas.pipelines import ModelRef, PipelineSpec, Run, StepSpec
from agent.schemas.registry import ModelVersionCreate
from agent.schemas.rollouts import RolloutCreate

if TYPE_CHECKING:
    from agent.pipelines.service import PipelineService

# What the agent does on a run's behalf is on record as the agent's, with the run and its cause.
PIPELINE_AGENT = Principal(name="watchkeeper-agent", role="operator", via="anonymous")


class ActionError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def data_version(run: Run) -> str:
    """The content digests of what the run read from outside (files, datasets): one digest as it is,
    several as the digest of their sorted list."""
    ext = sorted({a.digest for sr in run.steps for a in sr.inputs.values() if a.source})
    if len(ext) == 1:
        return ext[0]
    return "sha256:" + hashlib.sha256("\n".join(ext).encode()).hexdigest() if ext else "none"


def _producer_job(spec: PipelineSpec, run: Run, step: StepSpec, inp: str) -> str | None:
    """The job nearest upstream of the artifact: its producer's, or (an in-process export of a trained
    model) the closest step before it that was a job — the training."""
    deps = {s.name: s.depends_on for s in spec.steps}
    jobs = {sr.step: sr.job_id for sr in run.steps}
    todo = [step.inputs.get(inp, "").partition(".")[0]]
    seen: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in seen or name not in deps:
            continue
        seen.add(name)
        if jobs.get(name):
            return jobs[name]
        todo += deps[name]
    return None


def register_and_canary(svc: PipelineService, spec: PipelineSpec, run: Run, step: StepSpec,
                        inputs: dict[str, Path]) -> str:  # fmt: skip
    """Register the artifact input as the next version of `config.model`; start a canary when
    `config.endpoint` is set. Returns what was done (the step's reason)."""
    cfg: dict[str, Any] = dict(step.config)
    if svc.registry is None:
        raise ActionError("the model registry is not available on this agent")
    model = cfg.get("model")
    if not isinstance(model, str):
        raise ActionError(f"step {step.name}: config.model names the model to register")
    art_in, meta_in = cfg.get("artifact", "model"), cfg.get("metadata", "metadata")
    if art_in not in inputs or meta_in not in inputs:
        raise ActionError(
            f"step {step.name}: inputs {art_in!r} (the artifact) and {meta_in!r} (its metadata) are needed"
        )
    meta = json.loads(inputs[meta_in].read_text())
    endpoint = cfg.get("endpoint")
    parent = None
    if endpoint and svc.rollouts is not None:
        ep = svc.rollouts.serving.endpoints.get(endpoint)
        parent = ep.version.version if ep is not None and ep.version is not None else None
    if parent is None:
        try:
            parent = max((v.version for v in svc.registry.list_versions(model)), default=None)
        except Exception:
            parent = None
    from agent.pipelines.service import params_hash

    meta["lineage"] = {
        "build_id": run.id, "code_commit": run.code_commit or "unknown (not in a git repo)",
        "code_dirty": bool(run.code_dirty), "data_version": data_version(run), "params_hash": params_hash(run.params),
        "parent_version": parent, "job_id": _producer_job(spec, run, step, art_in),
    }  # fmt: skip
    meta.setdefault("tags", {}).update({"pipeline": spec.name, "pipeline_run": run.id})
    body = ModelVersionCreate.model_validate(meta)
    tmp = svc.registry.tmp_dir / f"pipeline-{uuid.uuid4().hex}"  # the registry moves it into place
    shutil.copyfile(inputs[art_in], tmp)
    audit = _audit(svc, run, "model.register", f"model:{model}")
    try:
        mv = svc.registry.register(model, body, tmp, PIPELINE_AGENT.name, audit=audit)
    finally:
        tmp.unlink(missing_ok=True)
    ref = ModelRef(model=model, version=mv.version)
    with svc.lock:
        run.models.append(ref)
    note = f"registered {model} v{mv.version} (parent v{parent})"
    if not endpoint:
        return note
    if svc.rollouts is None:
        raise ActionError(f"{note}; rollouts are not running on this agent")
    rc = {"strategy": "canary", **cfg.get("rollout", {}), "candidate_version": mv.version}
    rc.setdefault("reason", f"pipeline {spec.name} run {run.id} ({run.trigger_detail})"[:500])
    try:
        out = svc.rollouts.create(endpoint, RolloutCreate.model_validate(rc), PIPELINE_AGENT,
                                  audit=_audit(svc, run, "rollout.create", f"endpoint:{endpoint}"))  # fmt: skip
    except Exception as e:
        raise ActionError(f"{note}; the rollout on {endpoint} did not start: {_why(e)}") from None
    with svc.lock:
        ref.rollout_id = out.id
    return f"{note}; rollout {out.id} on {endpoint}: {out.state}"


def _why(e: Exception) -> str:
    d = getattr(e, "detail", None)
    return json.dumps(d)[:1500] if isinstance(d, dict | list) else str(d or e)


def _audit(svc: PipelineService, run: Run, action: str, target: str):  # type: ignore[no-untyped-def]
    if svc.audit is None:
        return None

    def record(detail: dict) -> None:
        svc.audit.record(PIPELINE_AGENT, action, target, {**detail, "automatic": True, "pipeline_run": run.id,
                                                          "cause": run.trigger_detail})  # fmt: skip

    return record
