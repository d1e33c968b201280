"""One run of a pipeline: a thread that starts steps as their inputs are ready — isolated steps as jobs
of the pipeline (the JobService queues them under its quota, so parallel steps run as far as it
allows), callables with `isolation = "none"` in the run's one worker process, actions in the agent —
serves cache hits, fails a failed step's dependants (never its siblings) and records everything."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import agent
from agent.pipelines import steplog
from agent.pipelines.cache import cache_key, code_digest, env_spec
from agent.schemas.jobs import JobSubmit, RetryPolicy
from agent.schemas.pipelines import FINAL_STEP_STATES, Artifact, PipelineSpec, Run, StepRun, StepSpec

if TYPE_CHECKING:
    from agent.pipelines.service import PipelineService

log = logging.getLogger("watchkeeper.pipelines")

_PLACEHOLDER = re.compile(r"\{(params|inputs|outputs)\.([A-Za-z0-9_-]+)\}")
_AGENT_ROOT = str(Path(agent.__file__).resolve().parents[1])  # so a job's python finds agent.pipelines.worker
_BAD = {"FAILED", "CANCELLED", "UPSTREAM_FAILED"}


class RunExecutor:
    """Drives one run to its end. Everything it changes is saved (committed) as it changes."""

    def __init__(self, svc: PipelineService, spec: PipelineSpec, run: Run, no_cache: bool) -> None:
        self.svc, self.spec, self.run, self.no_cache = svc, spec, run, no_cache
        self.steps = {s.name: s for s in spec.steps}
        self.by_name = {sr.step: sr for sr in run.steps}
        self.workdir = Path(spec.workdir) if spec.workdir else None
        self.dir = svc.runs_dir / run.id
        self.cancelled: str | None = None
        self.halted = False  # the agent is stopping: leave the run as it is, to be resumed at the next start
        self.wake = threading.Event()
        self.done: queue.Queue[tuple[str, bool, str]] = queue.Queue()  # (step, ok, error) from workers
        self._inproc: queue.Queue[str | None] = queue.Queue()
        self._worker: subprocess.Popen | None = None
        self._memo: dict[str, str | None] = {}
        # The pipeline's jobs go to Slurm: a job step is submitted as soon as its parents are submitted, queued
        # behind them there (--dependency=afterok), instead of after they end (a Slurm start takes seconds).
        self.ahead = svc.submits_ahead(spec.name)
        self.thread = threading.Thread(target=self._main, name=f"pipeline-run-{run.id}", daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self.thread.start()

    def halt(self) -> None:
        self.halted = True
        self.wake.set()

    def cancel(self, who: str, note: str) -> None:
        self.cancelled = f"cancelled by {who}" + (f": {note}" if note else "")
        self.wake.set()

    # ------------------------------------------------------------------ the loop

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug must end the run visibly, not leave it RUNNING forever
            log.exception("pipeline run %s", self.run.id)
            with self.svc.lock:
                for sr in self.run.steps:
                    if sr.state in ("PENDING", "RUNNING") and not self.halted:
                        self._end(sr, "FAILED", f"internal error: {e}")
        finally:
            self._stop_worker()
            if not self.halted:
                self.svc.finished(self)

    def _loop(self) -> None:
        threading.Thread(target=self._inproc_loop, name=f"pipeline-worker-{self.run.id}", daemon=True).start()
        with self.svc.lock:
            if self.run.state == "PENDING":
                self.run.state, self.run.started_at = "RUNNING", time.time()
        self.svc.save(self.run)
        while not self.halted:
            if self.cancelled:
                self._cancel_all()
                return
            changed = self._drain_done() | self._settle_ahead() | self._poll_jobs() | self._schedule()
            if changed:
                self.svc.save(self.run)
            if all(sr.state in FINAL_STEP_STATES for sr in self.run.steps):
                return
            if not changed:
                self.wake.wait(0.2 if any(self._running_jobs()) else 0.5)  # job ends wake it at once
                self.wake.clear()

    def _schedule(self) -> bool:
        changed = False
        for name in self.svc.order(self.spec):
            sr = self.by_name[name]
            if sr.state != "PENDING":
                continue
            deps = [self.by_name[d] for d in self.steps[name].depends_on]
            bad = [d for d in deps if d.state in _BAD]
            if bad:
                with self.svc.lock:
                    self._end(sr, "UPSTREAM_FAILED", f"step {bad[0].step} {bad[0].state.lower()}")
                changed = True
            elif all(d.state in ("COMPLETED", "SKIPPED") for d in deps):
                self._start(self.steps[name], sr)
                changed = changed or sr.state != "PENDING"
            elif self.ahead and self._can_queue_behind(self.steps[name], deps):
                self._start_ahead(self.steps[name], sr, deps)
                changed = True
        return changed

    # ------------------------------------------------------------------ steps queued in Slurm behind their parents

    def _can_queue_behind(self, step: StepSpec, deps: list[StepRun]) -> bool:
        """A job step whose parents are done or are job steps already in Slurm. Not behind a parent that may be
        retried: its retry is a new Slurm job, and the afterok on the old one would never be satisfied."""
        if step.isolation != "job":
            return False
        for d in deps:
            if d.state in ("COMPLETED", "SKIPPED"):
                continue
            if d.state != "RUNNING" or d.isolation != "job" or not d.job_id or self.steps[d.step].retries:
                return False
        return True

    def _start_ahead(self, step: StepSpec, sr: StepRun, deps: list[StepRun]) -> None:
        """Submit the step now, waiting in Slurm for its running parents; its inputs are their outputs' paths in
        this run's directory. Its cache key is known once they end (`_settle_ahead`)."""
        now = time.time()
        ins = self._inputs_or_fail(step, sr, ahead=True)
        if ins is None:
            return
        params = {p: self.run.params[p] for p in step.params}
        waits = [d for d in deps if d.state == "RUNNING"]
        with self.svc.lock:
            sr.cache_key, sr.started_at, sr.state, sr.attempt = None, now, "RUNNING", sr.attempt + 1
            sr.reason = "queued in Slurm behind step " + ", ".join(d.step for d in waits) + " (afterok)"
        sdir = self.dir / step.name
        shutil.rmtree(sdir, ignore_errors=True)
        (sdir / "out").mkdir(parents=True)
        env = self._env(step, sr, params, ins, sdir)
        self._submit(step, sr, params, ins, env, sdir, after=[d.job_id or "" for d in waits])

    def _settle_ahead(self) -> bool:
        """Steps submitted ahead whose parents have ended: a parent that failed cancels them (UPSTREAM_FAILED);
        once all completed, the step's cache key is computed, and a cache hit cancels its job and takes the
        cached outputs (the early cut-off a step submitted after its parents gets)."""
        changed = False
        for sr in self._running_jobs():
            if sr.cache_key is not None:
                continue
            deps = [self.by_name[d] for d in self.steps[sr.step].depends_on]
            bad = [d for d in deps if d.state in _BAD]
            if bad:
                self._cancel_job(sr, f"step {bad[0].step} {bad[0].state.lower()}")
                with self.svc.lock:
                    self._end(sr, "UPSTREAM_FAILED", f"step {bad[0].step} {bad[0].state.lower()}")
                changed = True
            elif all(d.state in ("COMPLETED", "SKIPPED") for d in deps):
                changed = self._settle(sr) or changed
        return changed

    def _settle(self, sr: StepRun) -> bool:
        """The cache key of a step submitted ahead, now that its parents completed; True if it ended here."""
        step = self.steps[sr.step]
        ins = self._inputs_or_fail(step, sr)
        if ins is None:
            self._cancel_job(sr, sr.reason)
            return True
        key = self._key(step, {p: self.run.params[p] for p in step.params}, ins)
        hit = self.svc.cache_lookup(key) if not self.no_cache and step.cache else None
        with self.svc.lock:
            sr.inputs, sr.cache_key = {k: a for k, (a, _) in ins.items()}, key
        if hit is None:
            return False
        job = self.svc.job(sr.job_id or "")
        if job is not None and job.state == "COMPLETED":
            return False  # it ran anyway: its own outputs are collected
        self._cancel_job(sr, f"cache hit: run {hit[0]}")
        with self.svc.lock:
            self._reuse(sr, hit, " (its queued job cancelled)")
        return True

    def _inputs_or_fail(self, step: StepSpec, sr: StepRun, ahead: bool = False) -> dict | None:
        """The step's inputs; None once the step is FAILED saying which one could not be had."""
        try:
            return self._inputs(step, ahead)
        except (OSError, RuntimeError, LookupError) as e:
            with self.svc.lock:
                sr.started_at = sr.started_at or time.time()
                self._end(sr, "FAILED", f"input: {e}")
            return None

    def _key(self, step: StepSpec, params: dict, ins: dict) -> str:
        return cache_key(code_digest(step, self.workdir, self._memo), params, env_spec(step),
                         {k: a.digest for k, (a, _) in ins.items()})  # fmt: skip

    def _reuse(self, sr: StepRun, hit: tuple[str, StepRun], note: str = "") -> None:
        """(under the lock) The step is a cache hit: the outputs, metrics and params of run `hit[0]`'s step."""
        sr.cache_hit, sr.reused_from = True, hit[0]
        sr.outputs, sr.metrics, sr.logged_params = (
            dict(hit[1].outputs), dict(hit[1].metrics), dict(hit[1].logged_params))  # fmt: skip
        self._end(sr, "COMPLETED", f"cache hit: run {hit[0]}{note}")

    def _cancel_job(self, sr: StepRun, why: str) -> None:
        try:
            self.svc.jobs_cancel(sr.job_id or "", self.run.created_by, why)
        except Exception as e:  # ended meanwhile: nothing to stop
            log.info("run %s: cancel job %s: %s", self.run.id, sr.job_id, getattr(e, "detail", e))

    # ------------------------------------------------------------------ one step

    def _inputs(self, step: StepSpec, ahead: bool = False) -> dict[str, tuple[Artifact, Path]]:
        """Each input's artifact and path. `ahead`: a parent still running gives the path its output will have
        in this run's directory (the artifact's digest unknown yet)."""
        out: dict[str, tuple[Artifact, Path]] = {}
        for inp, ref in step.inputs.items():
            if ref.startswith("file:"):
                p = Path(ref[5:])
                p = p if p.is_absolute() or self.workdir is None else self.workdir / p
                digest, size = self.svc.digest_file(p)
                out[inp] = (Artifact(digest=digest, size=size, source=str(p)), p)
            elif ref.startswith("dataset:"):
                info, p = self.svc.dataset(ref[8:])
                out[inp] = (
                    Artifact(
                        digest=info.digest if ":" in info.digest else "sha256:" + info.digest,
                        size=info.size_bytes,
                        source=f"dataset {info.name}:{info.version}",
                    ),
                    p,
                )
            else:
                src, _, name = ref.partition(".")
                if ahead and self.by_name[src].state == "RUNNING":
                    out[inp] = (Artifact(digest="", size=0), self.dir / src / "out" / name)
                    continue
                art = self.by_name[src].outputs.get(name)
                if art is None:
                    raise RuntimeError(f"input {inp}: step {src} left no output {name!r}")
                out[inp] = (art, self.svc.cas.path(art.digest))
        return out

    def _start(self, step: StepSpec, sr: StepRun) -> None:
        now = time.time()
        ins = self._inputs_or_fail(step, sr)
        if ins is None:
            return
        params = {p: self.run.params[p] for p in step.params}
        key = self._key(step, params, ins)
        cacheable = not self.no_cache and step.cache
        if cacheable and (other := self.svc.claim(key, self.run.id)) is not None:
            # The same work (same key) is running in another run: wait for it and reuse it, so shared
            # preprocessing runs once even when two runs need it at the same moment.
            sr.reason = f"waiting for the identical step in run {other}"
            return
        with self.svc.lock:
            sr.inputs = {k: a for k, (a, _) in ins.items()}
            sr.cache_key, sr.started_at, sr.state, sr.attempt = key, now, "RUNNING", sr.attempt + 1
            sr.reason = ""
        hit = self.svc.cache_lookup(key) if cacheable else None
        if hit is not None:
            with self.svc.lock:
                self._reuse(sr, hit)
            return
        sdir = self.dir / step.name
        shutil.rmtree(sdir, ignore_errors=True)
        (sdir / "out").mkdir(parents=True)
        env = self._env(step, sr, params, ins, sdir)
        if step.isolation == "none":
            self._inproc.put(step.name)
        elif step.isolation == "agent":
            threading.Thread(target=self._action, args=(step, sr, ins), daemon=True).start()
        else:
            self._submit(step, sr, params, ins, env, sdir)

    def _env(self, step: StepSpec, sr: StepRun, params: dict, ins: dict, sdir: Path) -> dict[str, str]:
        env = dict(step.env)
        env[steplog.ENV_LOG] = str(sdir / "steplog.jsonl")
        env[steplog.ENV_PARAMS] = json.dumps(params)
        env[steplog.ENV_RUN], env[steplog.ENV_STEP] = self.run.id, step.name
        for k, (_, p) in ins.items():
            env[steplog.ENV_INPUT + steplog.env_name(k)] = str(p)
        for o in step.outputs:
            env[steplog.ENV_OUTPUT + steplog.env_name(o)] = str(sdir / "out" / o)
        paths = [str(self.workdir)] if self.workdir else []
        env["PYTHONPATH"] = os.pathsep.join([*paths, _AGENT_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        sr.log_tail = ""
        return env

    def _render(self, arg: str, params: dict, ins: dict, sdir: Path) -> str:
        def sub(m: re.Match) -> str:
            kind, key = m.groups()
            if kind == "params":
                return str(params.get(key, self.run.params.get(key)))
            return str(ins[key][1]) if kind == "inputs" else str(sdir / "out" / key)

        return _PLACEHOLDER.sub(sub, arg)

    def _submit(self, step: StepSpec, sr: StepRun, params: dict, ins: dict, env: dict, sdir: Path,
                after: list[str] | None = None) -> None:  # fmt: skip
        if step.command:
            argv = [self._render(a, self.run.params, ins, sdir) for a in step.command]
        else:
            argv = [sys.executable, "-m", "agent.pipelines.worker", "--call", str(step.call)]
        r = step.resources
        body = JobSubmit(
            pipeline=self.spec.name, command=argv, cpu=r.cpu, mem=r.mem, gpus=r.gpus or None,
            time_limit=r.time_limit, env=env, workdir=str(self.workdir or sdir),
            retry=RetryPolicy(max_retries=step.retries, backoff_s=1.0),
            reason=f"pipeline {self.spec.name} run {self.run.id} step {step.name}",
            name=f"{self.spec.name}/{step.name}", depends_on=list(after or []), kill_on_invalid_dep=True,
        )  # fmt: skip
        try:
            job = self.svc.jobs_submit(body, self.run.created_by)
        except Exception as e:  # never fits the quota, jobs off, store down: the step fails, saying why
            with self.svc.lock:
                self._end(sr, "FAILED", f"could not submit its job: {getattr(e, 'detail', e)}")
            return
        with self.svc.lock:
            sr.job_id = job.id
        self.svc.save(self.run, sync=True)  # a restart must find the job to watch it again

    def _running_jobs(self) -> list[StepRun]:
        return [sr for sr in self.run.steps if sr.state == "RUNNING" and sr.job_id and sr.isolation == "job"]

    def _poll_jobs(self) -> bool:
        changed = False
        for sr in self._running_jobs():
            job = self.svc.job(sr.job_id or "")
            if job is None:
                with self.svc.lock:
                    self._end(sr, "FAILED", f"job {sr.job_id} is gone")
                changed = True
            elif job.state == "COMPLETED":
                sr.attempt = job.attempt
                if sr.cache_key is None:  # submitted ahead: its parents' ends are recorded, and its key, first
                    deps = [self.by_name[d] for d in self.steps[sr.step].depends_on]
                    if not all(d.state in ("COMPLETED", "SKIPPED") for d in deps):
                        continue
                    if self._settle(sr):
                        changed = True
                        continue
                self._collect(self.steps[sr.step], sr, "")
                changed = True
            elif job.state not in ("PENDING", "RUNNING", "REQUEUED"):
                bad = [d for d in self.steps[sr.step].depends_on if self.by_name[d].state in _BAD]
                if bad and sr.cache_key is None:  # submitted ahead; Slurm cancelled it when its parent failed
                    with self.svc.lock:
                        self._end(sr, "UPSTREAM_FAILED", f"step {bad[0]} {self.by_name[bad[0]].state.lower()}")
                    changed = True
                    continue
                tail = self.svc.job_stderr_tail(job.id)
                with self.svc.lock:
                    sr.attempt = job.attempt  # the job's retries are the step's
                    sr.log_tail = tail
                    self._end(sr, "FAILED", f"job {job.id} {job.state}: {job.reason}")
                changed = True
        return changed

    def _drain_done(self) -> bool:
        changed = False
        while True:
            try:
                name, ok, err = self.done.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            step, sr = self.steps[name], self.by_name[name]
            if ok:
                self._collect(step, sr, "")
            elif step.isolation == "none" and sr.attempt <= step.retries and not self.cancelled:
                with self.svc.lock:
                    sr.attempt += 1
                    sr.reason = f"attempt {sr.attempt - 1} failed: {err}; retrying"
                self._inproc.put(name)
            else:
                with self.svc.lock:
                    self._end(sr, "FAILED", err)

    def _collect(self, step: StepSpec, sr: StepRun, _: str) -> None:
        """A step ended well: its outputs into the content store, what it logged into its record."""
        sdir = self.dir / step.name
        missing = [o for o in step.outputs if not (sdir / "out" / o).is_file()]
        if missing:
            with self.svc.lock:
                self._end(sr, "FAILED", f"output {missing[0]} was not written ({steplog.ENV_OUTPUT}"
                                        f"{steplog.env_name(missing[0])})")  # fmt: skip
            return
        outputs = {}
        for o in step.outputs:
            digest, size = self.svc.cas.put(sdir / "out" / o, keep=self.ahead)
            outputs[o] = Artifact(digest=digest, size=size)
        metrics, params, problem = read_steplog(sdir / "steplog.jsonl")
        for key, path in params.pop("\0artifacts", {}).items():  # type: ignore[union-attr]
            try:
                tmp = sdir / f"artifact-{len(outputs)}"
                shutil.copyfile(path, tmp)
                digest, size = self.svc.cas.put(tmp)
                outputs.setdefault(key, Artifact(digest=digest, size=size, source=str(path)))
            except OSError as e:
                problem = problem or f"artifact {key}: {e}"
        with self.svc.lock:
            sr.outputs, sr.metrics, sr.logged_params = outputs, metrics, params
            if problem:
                self._end(sr, "FAILED", problem)
            else:
                sr.state = "COMPLETED"
                self.svc.cache_add(self.run.id, sr)  # before the claim is released: a waiter finds it
                self._end(sr, "COMPLETED", "")

    def _end(self, sr: StepRun, state: str, reason: str) -> None:
        """(under the lock)"""
        if sr.cache_key:
            self.svc.release(sr.cache_key, self.run.id)
        now = time.time()
        sr.state, sr.reason, sr.ended_at = state, reason, now  # type: ignore[assignment]
        sr.duration_s = now - sr.started_at if sr.started_at else None
        if state in ("FAILED", "CANCELLED") and not sr.log_tail:
            sr.log_tail = self._tail(sr.step)
        self.wake.set()

    def _tail(self, step: str) -> str:
        try:
            data = (self.dir / step / "output.log").read_bytes()[-2000:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    # ------------------------------------------------------------------ in-process and agent steps

    def _inproc_loop(self) -> None:
        while (name := self._inproc.get()) is not None:
            step, sr = self.steps[name], self.by_name[name]
            sdir = self.dir / name
            params = {p: self.run.params[p] for p in step.params}
            try:
                ins = self._inputs(step)
                env = self._env(step, sr, params, ins, sdir)
                ok, err = self._call_worker(step, env, sdir)
            except Exception as e:
                ok, err = False, f"worker: {e}"
            self.done.put((name, ok, err))
            self.wake.set()

    def _call_worker(self, step: StepSpec, env: dict, sdir: Path) -> tuple[bool, str]:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "agent.pipelines.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                cwd=str(self.workdir or self.dir), text=True, start_new_session=True,
                env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]},
            )  # fmt: skip
        req = {"call": step.call, "workdir": str(self.workdir) if self.workdir else None, "env": env,
               "log": str(sdir / "output.log")}  # fmt: skip
        assert self._worker.stdin and self._worker.stdout
        self._worker.stdin.write(json.dumps(req) + "\n")
        self._worker.stdin.flush()
        line = self._worker.stdout.readline()
        if not line:
            return False, f"the run's worker process died (exit {self._worker.wait()})"
        ans = json.loads(line)
        return bool(ans["ok"]), ans.get("error") or ""

    def _stop_worker(self) -> None:
        self._inproc.put(None)
        w = self._worker
        if w is not None and w.poll() is None:
            try:
                os.killpg(w.pid, 9)
            except OSError:
                pass
            w.wait()

    def _action(self, step: StepSpec, sr: StepRun, ins: dict) -> None:
        try:
            note = self.svc.do_action(self.spec, self.run, step, {k: p for k, (_, p) in ins.items()})
            with self.svc.lock:
                self._end(sr, "COMPLETED", note)
        except Exception as e:
            with self.svc.lock:
                self._end(sr, "FAILED", str(getattr(e, "detail", None) or e))

    # ------------------------------------------------------------------ cancel

    def _cancel_all(self) -> None:
        why = self.cancelled or "cancelled"
        for sr in self._running_jobs():
            try:
                self.svc.jobs_cancel(sr.job_id or "", self.run.created_by, why)
            except Exception as e:
                log.warning("run %s: cancel job %s: %s", self.run.id, sr.job_id, e)
        self._stop_worker()
        with self.svc.lock:
            for sr in self.run.steps:
                if sr.state in ("PENDING", "RUNNING"):
                    self._end(sr, "CANCELLED", why)
        self.svc.save(self.run, sync=True)


def read_steplog(path: Path) -> tuple[dict[str, float], dict, str]:
    """(metrics, params, problem) from a step's JSON lines; artifacts under params["\\0artifacts"].
    A param logged twice with different values is a problem (it describes the run; it doesn't change)."""
    metrics: dict[str, float] = {}
    params: dict = {}
    arts: dict[str, str] = {}
    problem = ""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            kind, key, value = rec["kind"], str(rec["key"]), rec["value"]
        except (ValueError, KeyError, TypeError):
            problem = problem or f"{steplog.ENV_LOG} line {n} is not a log record: {line[:80]!r}"
            continue
        if kind == "metric" and isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
        elif kind == "param" and isinstance(value, str | int | float | bool):
            if key in params and params[key] != value:
                problem = problem or f"param {key} logged as {params[key]!r}, then {value!r}"
            params[key] = value
        elif kind == "artifact" and isinstance(value, str):
            arts[key] = value
        else:
            problem = problem or f"{steplog.ENV_LOG} line {n}: unknown record kind {kind!r}"
    params["\0artifacts"] = arts
    return metrics, params, problem
