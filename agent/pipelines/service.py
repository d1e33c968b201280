"""What the API calls: register pipelines, start runs (by hand, resumed, or by a trigger, deduplicated),
read, cancel and compare them; the cache index; restart (re-adopting running steps through their jobs)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.pipelines.actions import register_and_canary
from agent.pipelines.cache import code_state
from agent.pipelines.compare import compare_runs, summary
from agent.pipelines.content import ContentStore, file_digest
from agent.pipelines.runner import RunExecutor, read_steplog
from agent.pipelines.spec import SpecError, check_run_params, order, parse_pipeline
from agent.pipelines.store import PipelineStore
from agent.schemas.jobs import Job, JobSubmit
from agent.schemas.pipelines import (
    FINAL_RUN_STATES,
    PipelineList,
    PipelineSpec,
    PipelineSummary,
    Run,
    RunCompare,
    RunList,
    RunRequest,
    StepLog,
    StepRun,
    TriggerResult,
)

log = logging.getLogger("watchkeeper.pipelines")
# The saver writes a running run at most this often (see `_save_loop`).
SAVE_PACE_S = 0.05


class PipelineError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field


class PipelineService:
    def __init__(self, store: PipelineStore, data_dir: Path, jobs: Any, registry: Any = None, datasets: Any = None,
                 rollouts: Any = None, audit: Any = None, host: str | None = None) -> None:  # fmt: skip
        self.store, self.jobs, self.registry, self.datasets = store, jobs, registry, datasets
        self.rollouts, self.audit = rollouts, audit
        self.host = host or socket.gethostname()
        self.cas = ContentStore(data_dir / "pipelines" / "cas")
        self.runs_dir = data_dir / "pipelines" / "runs"
        self.lock = threading.RLock()
        self.pipelines: dict[str, PipelineSpec] = {}
        self.runs: dict[str, Run] = {}
        self.events: dict[str, str] = {}  # trigger event -> the run it started or was folded into
        self.executors: dict[str, RunExecutor] = {}
        self._cache: dict[str, tuple[str, StepRun]] = {}
        self._inflight: dict[str, str] = {}  # cache key -> the run computing it now
        self._digests: dict[tuple[str, int, int], tuple[str, int]] = {}
        self._orders: dict[str, list[str]] = {}
        self.on_change: Callable[[], None] | None = None
        self.triggers: Any = None  # the TriggerLoop, set by the daemon
        # Step changes are written by one saver thread, newest state per run, so a step costs no commit
        # wait; a run's creation, a job's id and a run's end are written before going on (save(sync=True)).
        self._dirty: dict[str, Run] = {}
        self._dirty_cv = threading.Condition()
        self._write_lock = threading.Lock()
        self._saver = threading.Thread(target=self._save_loop, name="pipeline-saver", daemon=True)
        self._saver.start()
        if jobs is not None and hasattr(jobs, "changed"):
            threading.Thread(target=self._job_watch, name="pipeline-jobwatch", daemon=True).start()

    # ------------------------------------------------------------------ start / stop

    def restore(self) -> tuple[int, int]:
        """Read pipelines and runs back; resume runs that were going: a step that is a job is watched
        again through its job (the JobService re-adopted it or marked it LOST); an in-process or agent
        step that was running is failed, saying so. Returns (runs resumed, steps failed)."""
        for spec in self.store.load_pipelines():
            self.pipelines[spec.name] = spec
        resumed = failed = 0
        for run, event in self.store.load_runs():
            self.runs[run.id] = run
            if event:
                self.events[event] = run.id
            for sr in run.steps:
                if sr.state == "COMPLETED" and sr.cache_key:
                    self._cache[sr.cache_key] = (run.id, sr)
            if run.state in FINAL_RUN_STATES:
                continue
            for sr in run.steps:
                if sr.state == "RUNNING" and not (sr.isolation == "job" and sr.job_id):
                    sr.state, sr.ended_at = "FAILED", time.time()
                    sr.reason = f"the agent restarted while this {sr.isolation} step ran (resume the run to redo it)"
                    failed += 1
            spec = self.pipelines.get(run.pipeline)
            try:
                if spec is None or spec.version != run.pipeline_version:
                    spec = self._spec_of(run)
            except LookupError as e:  # one unreadable run must not keep the others from resuming
                run.state, run.reason, run.ended_at = "FAILED", f"could not resume after a restart: {e}", time.time()
                self.save(run, sync=True)
                continue
            self._launch(spec, run, run.no_cache)
            resumed += 1
        return resumed, failed

    def _spec_of(self, run: Run) -> PipelineSpec:
        for spec in self.store.load_versions(run.pipeline):
            if spec.version == run.pipeline_version:
                return spec
        raise LookupError(f"pipeline {run.pipeline} version {run.pipeline_version} is not stored")

    def stop(self) -> None:
        """Triggers stop; executors stop with the process (jobs keep running, re-adopted at the next start)."""
        if self.triggers is not None:
            self.triggers.stop()
        with self.lock:
            executors = list(self.executors.values())
        for ex in executors:
            ex.halt()
        for ex in executors:
            ex.thread.join(timeout=5)
        self.flush()

    # ------------------------------------------------------------------ pipelines

    def register(self, content: str, path: str | None, principal: str,
                 audit: Callable[[dict], None] | None = None) -> PipelineSpec:  # fmt: skip
        try:
            spec = parse_pipeline(content, path, principal)
        except SpecError as e:
            raise PipelineError(422, "invalid_pipeline", e.detail, e.field) from None
        for s in spec.steps:
            for inp, ref in s.inputs.items():
                if ref.startswith("dataset:"):
                    try:
                        self.dataset(ref[8:])
                    except LookupError as e:
                        raise PipelineError(422, "invalid_pipeline", f"step {s.name}: input {inp}: {e}",
                                            f"steps.{s.name}.inputs.{inp}") from None  # fmt: skip
        if audit is not None:
            audit({"pipeline": spec.name, "version": spec.version, "steps": [s.name for s in spec.steps],
                   "path": path})  # fmt: skip
        self.store.save_pipeline(spec, content)
        with self.lock:
            self.pipelines[spec.name] = spec
        return spec

    def get(self, name: str) -> PipelineSpec:
        spec = self.pipelines.get(name)
        if spec is None:
            raise PipelineError(404, "not_found", f"no pipeline {name!r}", "name")
        return spec

    def list(self) -> PipelineList:
        with self.lock:
            out = []
            for name, spec in sorted(self.pipelines.items()):
                runs = [r for r in self.runs.values() if r.pipeline == name]
                last = max(runs, key=lambda r: r.created_at, default=None)
                out.append(PipelineSummary(spec=spec, last_run=summary(last) if last else None,
                                           active_runs=sum(r.state not in FINAL_RUN_STATES for r in runs)))  # fmt: skip
            return PipelineList(pipelines=out)

    def order(self, spec: PipelineSpec) -> list[str]:
        if spec.version not in self._orders:
            self._orders[spec.version] = order(spec)
        return self._orders[spec.version]

    # ------------------------------------------------------------------ runs

    def start_run(self, name: str, req: RunRequest, principal: str, trigger: str = "manual",
                  trigger_detail: str = "", audit: Callable[[dict], None] | None = None,
                  event: str | None = None) -> Run:  # fmt: skip
        spec = self.get(name)
        try:
            params = check_run_params(spec, req.params)
        except SpecError as e:
            raise PipelineError(422, "invalid_request", e.detail, e.field) from None
        names = [s.name for s in spec.steps]
        for field, val in (("from_step", [req.from_step] if req.from_step else []), ("only", req.only)):
            for v in val:
                if v not in names:
                    raise PipelineError(422, "invalid_request", f"{field}: no step {v!r} in {name}", field)
        selected = self._selected(spec, req)
        prior = self._resume_source(name, req.resume) if req.resume else None
        now = time.time()
        commit, dirty = code_state(Path(spec.workdir) if spec.workdir else None)
        run = Run(
            id="run-" + uuid.uuid4().hex[:12], pipeline=name, pipeline_version=spec.version, state="PENDING",
            trigger="resume" if prior else trigger,  # type: ignore[arg-type]
            trigger_detail=trigger_detail or (f"resume of {prior.id}" if prior else f"by {principal}"),
            created_by=principal, created_at=now, params=params, code_commit=commit, code_dirty=dirty,
            host=self.host, from_step=req.from_step, only=list(req.only), no_cache=req.no_cache,
            resumed_from=prior.id if prior else None, steps_total=len(spec.steps),
        )  # fmt: skip
        earlier = {sr.step: sr for sr in prior.steps} if prior else {}
        for s in spec.steps:
            sr = StepRun(step=s.name, state="PENDING", isolation=s.isolation)
            old = earlier.get(s.name)
            if old is not None and old.state == "COMPLETED" and self._outputs_kept(old):
                sr = old.model_copy(update={"reused_from": old.reused_from or prior.id, "reason": "reused (resume)"})
            elif s.name not in selected:
                src = self._latest_completed(name, s.name)
                sr.state = "SKIPPED"  # type: ignore[assignment]
                if src is not None:
                    sr.outputs, sr.metrics, sr.reused_from = dict(src[1].outputs), dict(src[1].metrics), src[0]
                    sr.reason = f"not selected: outputs of run {src[0]}"
                else:
                    sr.reason = "not selected"
            run.steps.append(sr)
        self._check_skipped_inputs(spec, run)
        if audit is not None:
            audit({"pipeline": name, "run": run.id, "version": spec.version, "params": params,
                   "from_step": req.from_step, "only": req.only, "no_cache": req.no_cache, "resume": req.resume,
                   "trigger": run.trigger, "reason": req.reason})  # fmt: skip
        with self.lock:
            self.runs[run.id] = run
            if event:
                self.events[event] = run.id
        self.store.save_run(run, event)
        self._launch(spec, run, req.no_cache)
        return self.get_run(run.id)

    def _selected(self, spec: PipelineSpec, req: RunRequest) -> set[str]:
        if req.only:
            return set(req.only)
        if req.from_step:
            down = {req.from_step}
            for n in self.order(spec):
                if any(d in down for d in next(s for s in spec.steps if s.name == n).depends_on):
                    down.add(n)
            return down
        return {s.name for s in spec.steps}

    def _check_skipped_inputs(self, spec: PipelineSpec, run: Run) -> None:
        by = {sr.step: sr for sr in run.steps}
        for s in spec.steps:
            if by[s.name].state != "PENDING":
                continue
            for ref in s.inputs.values():
                src, dot, out = ref.partition(".")
                if (
                    dot
                    and not ref.startswith(("file:", "dataset:"))
                    and by[src].state == "SKIPPED"
                    and out not in by[src].outputs
                ):
                    raise PipelineError(409, "conflict", f"step {s.name} needs {ref}, and no earlier run of "
                                        f"{spec.name} completed step {src}: run it too", "from_step")  # fmt: skip

    def _resume_source(self, name: str, run_id: str) -> Run:
        prior = self.runs.get(run_id)
        if prior is None or prior.pipeline != name:
            raise PipelineError(404, "not_found", f"no run {run_id!r} of pipeline {name}", "resume")
        if prior.state not in ("FAILED", "CANCELLED"):
            raise PipelineError(409, "conflict", f"run {run_id} is {prior.state}: only a failed or cancelled run "
                                "resumes", "resume")  # fmt: skip
        return prior

    def _latest_completed(self, pipeline: str, step: str) -> tuple[str, StepRun] | None:
        with self.lock:
            for run in sorted(self.runs.values(), key=lambda r: r.created_at, reverse=True):
                if run.pipeline != pipeline:
                    continue
                for sr in run.steps:
                    if sr.step == step and sr.state == "COMPLETED" and self._outputs_kept(sr):
                        return run.id, sr
        return None

    def _outputs_kept(self, sr: StepRun) -> bool:
        return all(self.cas.has(a.digest) for a in sr.outputs.values())

    def _launch(self, spec: PipelineSpec, run: Run, no_cache: bool) -> None:
        ex = RunExecutor(self, spec, run, no_cache)
        with self.lock:
            self.executors[run.id] = ex
        ex.start()

    def finished(self, ex: RunExecutor) -> None:
        """The executor's last word: the run's final state and reason."""
        with self.lock:
            run = ex.run
            states = [sr.state for sr in run.steps]
            failed = [sr for sr in run.steps if sr.state == "FAILED"]
            if ex.cancelled:
                run.state, run.reason = "CANCELLED", ex.cancelled
            elif failed or "UPSTREAM_FAILED" in states or "CANCELLED" in states:
                run.state = "FAILED"
                run.reason = f"step {failed[0].step} failed: {failed[0].reason}" if failed else "a step did not run"
            else:
                run.state = "COMPLETED"
            run.ended_at = time.time()
            run.duration_s = run.ended_at - (run.started_at or run.created_at)
            self.executors.pop(run.id, None)
        self.save(run, sync=True)

    def save(self, run: Run, sync: bool = False) -> None:
        """Record the run's current state: at once (sync), or by the saver thread soon after."""
        with self.lock:
            run.steps_done = sum(sr.state in ("COMPLETED", "SKIPPED") for sr in run.steps)
            run.cache_hits = sum(sr.cache_hit for sr in run.steps)
        if not sync:
            with self._dirty_cv:
                self._dirty[run.id] = run
                self._dirty_cv.notify()
            return
        with self._dirty_cv:
            self._dirty.pop(run.id, None)
        self._write(run)

    def _write(self, run: Run) -> None:
        with self._write_lock:  # snapshot and commit in one order: an older state never lands last
            with self.lock:
                snap = run.model_copy(deep=True)
            try:
                self.store.save_run(snap)
            except Exception as e:  # the run goes on; the next change tries again
                log.error("pipeline run %s: %s", run.id, e)
        if self.on_change:
            self.on_change()

    def _job_watch(self) -> None:
        """Wake the runs when a job ends (the JobService notifies `changed`), so a step's end is seen at
        once rather than at the run's next poll."""
        while True:
            with self.jobs.changed:
                self.jobs.changed.wait(timeout=1.0)
            with self.lock:
                executors = list(self.executors.values())
            for ex in executors:
                ex.wake.set()

    def _save_loop(self) -> None:
        while True:
            with self._dirty_cv:
                while not self._dirty:
                    self._dirty_cv.wait()
                batch, self._dirty = self._dirty, {}
            for run in batch.values():
                self._write(run)
            # Changes within the next SAVE_PACE_S share one write: a chain of quick steps wrote (deep copy,
            # JSON, commit) twice a step, and the commits took the CPU and GIL the steps wait on. A crash
            # loses at most that much progress: resume runs those steps again (or finds them cached); the
            # final state is written at once (`finished`), and everything pending on stop (`flush`).
            time.sleep(SAVE_PACE_S)

    def flush(self) -> None:
        """Write every pending run state now (the agent is stopping)."""
        with self._dirty_cv:
            batch, self._dirty = self._dirty, {}
        for run in batch.values():
            self._write(run)

    def get_run(self, run_id: str) -> Run:
        """The run; a running step's metrics are read live from its log, so a step can show progress
        (e.g. `log_metric("progress", 0.4)`)."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                raise PipelineError(404, "not_found", f"no run {run_id!r}", "run_id")
            out = run.model_copy(deep=True)
        for sr in out.steps:
            if sr.state == "RUNNING":
                sr.metrics = read_steplog(self.runs_dir / run_id / sr.step / "steplog.jsonl")[0]
        return out

    def step_log(self, run_id: str, step: str, offset: int, max_bytes: int) -> StepLog:
        run = self.get_run(run_id)
        sr = next((s for s in run.steps if s.step == step), None)
        if sr is None:
            raise PipelineError(404, "not_found", f"run {run_id} has no step {step!r}", "step")
        data = b""
        try:
            with open(self.runs_dir / run_id / step / "output.log", "rb") as fh:
                fh.seek(offset)
                data = fh.read(max_bytes)
        except OSError:
            pass
        over = sr.state not in ("PENDING", "RUNNING")
        return StepLog(run_id=run_id, step=step, job_id=sr.job_id, offset=offset, next_offset=offset + len(data),
                       text=data.decode("utf-8", "replace"), eof=over and len(data) < max_bytes)  # fmt: skip

    def list_runs(self, pipeline: str | None, state: str | None, limit: int) -> RunList:
        with self.lock:
            runs = [r for r in self.runs.values() if (pipeline is None or r.pipeline == pipeline)
                    and (state is None or r.state == state)]  # fmt: skip
            runs.sort(key=lambda r: r.created_at, reverse=True)
            return RunList(runs=[summary(r) for r in runs[:limit]], total=len(runs))

    def cancel(self, run_id: str, principal: str, note: str, audit: Callable[[dict], None] | None = None) -> Run:
        run = self.get_run(run_id)
        if run.state in FINAL_RUN_STATES:
            raise PipelineError(409, "conflict", f"run {run_id} is already {run.state}", "run_id")
        if audit is not None:
            audit({"run": run_id, "pipeline": run.pipeline, "reason": note})
        with self.lock:
            ex = self.executors.get(run_id)
        if ex is not None:
            ex.cancel(principal, note)
            ex.thread.join(timeout=15)
        return self.get_run(run_id)

    def active_run(self, pipeline: str) -> Run | None:
        with self.lock:
            return next((r for r in self.runs.values() if r.pipeline == pipeline
                         and r.state not in FINAL_RUN_STATES), None)  # fmt: skip

    def last_triggered(self, pipeline: str) -> float | None:
        with self.lock:
            ts = [r.created_at for r in self.runs.values()
                  if r.pipeline == pipeline and r.trigger in ("cron", "alert", "dataset")]  # fmt: skip
        return max(ts, default=None)

    def trigger(self, pipeline: str, kind: str, event: str, detail: str, params: dict | None = None,
                min_interval_s: float = 0.0) -> TriggerResult:  # fmt: skip
        """One run per trigger episode: a repeated event, an event while a run is active, or one within
        the minimum interval since the last triggered run starts nothing (and says why)."""
        with self.lock:
            if event in self.events:
                return TriggerResult(started=False, run_id=self.events[event], reason=f"event {event} already "
                                     f"started run {self.events[event]}")  # fmt: skip
            active = self.active_run(pipeline)
            if active is not None:
                self.events[event] = active.id
                return TriggerResult(started=False, run_id=active.id, reason=f"run {active.id} is active")
            spec = self.get(pipeline)
            gap = max(min_interval_s, spec.min_interval_s)
            last = self.last_triggered(pipeline)
            if gap and last is not None and time.time() - last < gap:
                return TriggerResult(started=False, reason=f"min interval {gap:.0f} s: the last triggered run "
                                     f"started {time.time() - last:.0f} s ago")  # fmt: skip
            run = self.start_run(pipeline, RunRequest(params=params or {}), "watchkeeper-agent", kind, detail,
                                 audit=self._audit_trigger(pipeline, kind, detail), event=event)  # fmt: skip
        return TriggerResult(started=True, run_id=run.id, reason=detail)

    def _audit_trigger(self, pipeline: str, kind: str, detail: str) -> Callable[[dict], None] | None:
        if self.audit is None:
            return None
        from agent.rollouts.state import AGENT

        return lambda d: self.audit.record(AGENT, "pipeline.run", f"pipeline:{pipeline}",
                                           {**d, "automatic": True, "cause": detail})  # fmt: skip

    # ------------------------------------------------------------------ compare

    def compare(self, a_id: str, b_id: str) -> RunCompare:
        """Two runs side by side (agent/pipelines/compare.py)."""
        return compare_runs(self.get_run(a_id), self.get_run(b_id))

    # ------------------------------------------------------------------ for the executor

    def cache_lookup(self, key: str) -> tuple[str, StepRun] | None:
        with self.lock:
            hit = self._cache.get(key)
        return hit if hit is not None and self._outputs_kept(hit[1]) else None

    def claim(self, key: str, run_id: str) -> str | None:
        """Mark `key` as being computed by `run_id`; returns the other run already computing it, if any."""
        with self.lock:
            holder = self._inflight.setdefault(key, run_id)
        return None if holder == run_id else holder

    def release(self, key: str, run_id: str) -> None:
        with self.lock:
            if self._inflight.get(key) == run_id:
                del self._inflight[key]

    def cache_add(self, run_id: str, sr: StepRun) -> None:
        if sr.cache_key and not sr.cache_hit:
            with self.lock:
                self._cache[sr.cache_key] = (run_id, sr.model_copy(deep=True))

    def digest_file(self, p: Path) -> tuple[str, int]:
        """Content digest of an external input, remembered by (path, size, mtime_ns)."""
        st = p.stat()
        k = (str(p), st.st_size, st.st_mtime_ns)
        if k not in self._digests:
            self._digests[k] = (file_digest(p), st.st_size)
        return self._digests[k]

    def dataset(self, ref: str) -> tuple[Any, Path]:
        if self.datasets is None:
            raise LookupError("datasets are not available on this agent")
        name, _, ver = ref.partition("@")
        try:
            info = self.datasets.get(name, int(ver) if ver else None)
        except Exception as e:
            raise LookupError(str(getattr(e, "detail", e))) from None
        return info, self.datasets.path(info.name, info.version)

    def job(self, job_id: str) -> Job | None:
        try:
            return self.jobs.get(job_id)
        except Exception:
            return None

    def job_stderr_tail(self, job_id: str, n: int = 2000) -> str:
        """The end of a failed job's stderr, for the step's record (the whole log stays with the job)."""
        try:
            return self.jobs.logs(job_id, "stderr", 0, 1 << 20).text[-n:]
        except Exception:
            return ""

    def submits_ahead(self, pipeline: str) -> bool:
        """Whether the pipeline's job steps go to Slurm, where a step can wait for its parents (afterok)."""
        return self.jobs is not None and self.jobs.backend_of(pipeline) == "slurm"

    def jobs_submit(self, body: JobSubmit, principal: str) -> Job:
        if self.jobs is None:
            raise RuntimeError("jobs are not enabled on this agent ([jobs] enabled = false)")
        return self.jobs.submit(body, principal)

    def jobs_cancel(self, job_id: str, principal: str, note: str) -> None:
        if self.jobs is not None:
            self.jobs.cancel(job_id, principal, note, wait_s=5.0)

    def do_action(self, spec: PipelineSpec, run: Run, step: Any, inputs: dict[str, Path]) -> str:
        return register_and_canary(self, spec, run, step, inputs)
