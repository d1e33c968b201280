"""Runs: isolated steps are jobs of the pipeline; a failed step fails its dependants, not its siblings;
retries; resume from the failed step; --from / --only; cancel; a restart resumes a run through its jobs."""

from __future__ import annotations

import time

from tests.pipelines.conftest import Harness, close_harness, open_harness, steps_by_name

STEPS = """
from pathlib import Path

HERE = Path(__file__).parent


def _count(name):
    with open(HERE / f"{name}.count", "a") as fh:
        fh.write("x\\n")


def ok(ctx):
    _count(ctx.step)
    _write(ctx)


def _write(ctx):
    for name, path in ctx.outputs.items():
        path.write_text(ctx.step + name + "".join(p.read_text() for p in ctx.inputs.values()))


def flaky(ctx):
    _count(ctx.step)
    if not (HERE / "fixed").exists():
        raise RuntimeError("broken until fixed")
    _write(ctx)


def fails_once(ctx):
    _count(ctx.step)
    if len((HERE / f"{ctx.step}.count").read_text().splitlines()) < 2:
        raise RuntimeError("first attempt fails")
    _write(ctx)
"""

DAG = """
name = "dag"
[steps.a]
call = "steps:flaky"
isolation = "none"
outputs = ["out"]
[steps.b]
call = "steps:ok"
isolation = "none"
inputs = { x = "a.out" }
outputs = ["out"]
[steps.c]
call = "steps:ok"
isolation = "none"
outputs = ["out"]
[steps.d]
call = "steps:ok"
isolation = "none"
inputs = { x = "b.out", y = "c.out" }
outputs = ["out"]
"""


def test_a_failure_fails_dependants_not_siblings_and_resume_redoes_only_the_rest(harness: Harness) -> None:
    harness.code("steps.py", STEPS)
    harness.register(DAG)
    r1 = harness.run("dag")
    s = steps_by_name(r1)
    assert r1.state == "FAILED" and "step a failed" in r1.reason and "broken until fixed" in r1.reason
    assert s["a"].state == "FAILED" and "RuntimeError" in s["a"].log_tail
    assert s["b"].state == "UPSTREAM_FAILED" and s["d"].state == "UPSTREAM_FAILED" and "step a" in s["b"].reason
    assert s["c"].state == "COMPLETED"  # the sibling ran on
    assert harness.executions("a") == 1, s["a"]
    (harness.root / "code" / "fixed").write_text("")
    r2 = harness.run("dag", resume=r1.id, no_cache=True)
    s2 = steps_by_name(r2)
    assert r2.state == "COMPLETED" and r2.resumed_from == r1.id and r2.trigger == "resume"
    assert s2["c"].reused_from == r1.id and harness.executions("c") == 1  # not run again, even with no_cache
    assert harness.executions("a") == 2 and harness.executions("b") == 1 and harness.executions("d") == 1


def test_in_process_retries(harness: Harness) -> None:
    harness.code("steps.py", STEPS)
    harness.register('name = "r"\n[steps.a]\ncall = "steps:fails_once"\nisolation = "none"\noutputs = ["o"]\n'
                     "retries = 1\n")  # fmt: skip
    r = harness.run("r")
    assert r.state == "COMPLETED" and steps_by_name(r)["a"].attempt == 2 and harness.executions("a") == 2


def test_from_and_only_reuse_earlier_outputs(harness: Harness) -> None:
    harness.code("steps.py", STEPS)
    (harness.root / "code" / "fixed").write_text("")
    harness.register(DAG)
    r1 = harness.run("dag")
    assert r1.state == "COMPLETED"
    r2 = harness.run("dag", from_step="b", no_cache=True)
    s = steps_by_name(r2)
    assert s["a"].state == "SKIPPED" and s["c"].state == "SKIPPED" and s["a"].reused_from == r1.id
    assert s["b"].state == "COMPLETED" and s["d"].state == "COMPLETED" and r2.state == "COMPLETED"
    assert harness.executions("a") == 1 and harness.executions("b") == 2 and harness.executions("d") == 2
    r3 = harness.run("dag", only=["c"], no_cache=True)
    assert [x.state for x in r3.steps] == ["SKIPPED", "SKIPPED", "COMPLETED", "SKIPPED"]
    assert harness.executions("c") == 2 and harness.executions("d") == 2


def test_from_without_earlier_outputs_is_refused(harness: Harness) -> None:
    import pytest

    from agent.pipelines.service import PipelineError
    from agent.schemas.pipelines import RunRequest

    harness.code("steps.py", STEPS)
    harness.register(DAG)
    with pytest.raises(PipelineError) as e:
        harness.svc.start_run("dag", RunRequest(from_step="b"), "t")
    assert e.value.status == 409 and "step a" in e.value.detail
    with pytest.raises(PipelineError) as e:
        harness.svc.start_run("dag", RunRequest(from_step="zz"), "t")
    assert e.value.field == "from_step"


JOBS = """
name = "jobs"
[params]
n = 3
[steps.shell]
command = ["/bin/sh", "-c", '''seq {params.n} > {outputs.nums}; \
  printf '{"kind":"metric","key":"n","value":%s}\n' {params.n} >> $WK_STEP_LOG''']
outputs = ["nums"]
params = ["n"]
resources = { cpu = 0.5, mem = "256M" }
[steps.callable]
call = "steps:ok"
inputs = { x = "shell.nums" }
outputs = ["out"]
[steps.sibling]
command = ["/bin/sh", "-c", "sleep 3; echo hi > $WK_OUTPUT_O"]
outputs = ["o"]
"""


def test_isolated_steps_are_jobs_of_the_pipeline(harness: Harness) -> None:
    harness.code("steps.py", STEPS)
    harness.register(JOBS)
    r = harness.run("jobs")
    s = steps_by_name(r)
    assert r.state == "COMPLETED", r
    for name in ("shell", "callable", "sibling"):
        job = harness.jobs.get(s[name].job_id or "")
        assert job.pipeline == "jobs" and job.state == "COMPLETED" and job.name == f"jobs/{name}"
    assert s["shell"].metrics == {"n": 3.0} and s["shell"].outputs["nums"].size == len("1\n2\n3\n")
    assert harness.jobs.get(s["shell"].job_id or "").cpu == 0.5
    # the two independent steps overlapped: both jobs were started before either ended
    a, b = harness.jobs.get(s["shell"].job_id or ""), harness.jobs.get(s["sibling"].job_id or "")
    assert a.started_at and b.started_at and b.ended_at and a.started_at < b.ended_at


def test_cancel_stops_running_jobs_and_pending_steps(harness: Harness) -> None:
    harness.register("""
name = "slow"
[steps.sleep]
command = ["/bin/sh", "-c", "sleep 60"]
outputs = ["o"]
[steps.after]
command = ["/bin/true"]
inputs = { x = "sleep.o" }
""")
    from agent.schemas.pipelines import RunRequest

    run = harness.svc.start_run("slow", RunRequest(), "t")
    deadline = time.monotonic() + 30
    while not steps_by_name(harness.svc.get_run(run.id))["sleep"].job_id and time.monotonic() < deadline:
        time.sleep(0.05)
    out = harness.svc.cancel(run.id, "alice", "wrong data")
    s = steps_by_name(out)
    assert out.state == "CANCELLED" and "alice" in out.reason
    assert s["sleep"].state == "CANCELLED" and s["after"].state == "CANCELLED"
    job = harness.jobs.get(s["sleep"].job_id or "")
    deadline = time.monotonic() + 30
    while job.state not in ("CANCELLED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = harness.jobs.get(job.id)
    assert job.state == "CANCELLED"


def test_a_restart_resumes_the_run_through_its_job(tmp_path) -> None:
    h = open_harness(tmp_path)
    h.register("""
name = "long"
[steps.work]
command = ["/bin/sh", "-c", "sleep 2; echo done > $WK_OUTPUT_O"]
outputs = ["o"]
[steps.next]
command = ["/bin/sh", "-c", "cat $WK_INPUT_X > $WK_OUTPUT_O"]
inputs = { x = "work.o" }
outputs = ["o"]
""")
    from agent.schemas.pipelines import RunRequest

    run = h.svc.start_run("long", RunRequest(), "t")
    deadline = time.monotonic() + 30
    while not steps_by_name(h.svc.get_run(run.id))["work"].job_id and time.monotonic() < deadline:
        time.sleep(0.05)
    h.svc.stop()  # the agent stops: the run is left RUNNING, its job keeps running
    assert h.svc.get_run(run.id).state == "RUNNING"
    h.jobs.stop()
    h.writer.stop()
    h.writer._con.close()  # type: ignore[attr-defined]
    h2 = open_harness(tmp_path)
    try:
        done = h2.wait(run.id, 60)
        s = steps_by_name(done)
        assert done.state == "COMPLETED", done
        assert s["work"].attempt == 1 and h2.jobs.get(s["work"].job_id or "").state == "COMPLETED"  # adopted
        assert s["next"].outputs["o"].size == 5
    finally:
        close_harness(h2)


def test_an_isolated_step_is_retried_as_its_job_is(harness: Harness) -> None:
    marker = harness.root / "code" / "tried"
    harness.register(f"""
name = "retry"
[steps.once]
command = ["/bin/sh", "-c", "if [ -e {marker} ]; then echo ok > $WK_OUTPUT_O; else touch {marker}; exit 3; fi"]
outputs = ["o"]
retries = 1
""")
    r = harness.run("retry")
    s = steps_by_name(r)["once"]
    assert r.state == "COMPLETED" and s.attempt == 2, s
    assert len(harness.jobs.attempts(s.job_id or "")) == 2


def test_a_failed_job_step_keeps_the_end_of_its_stderr(harness: Harness) -> None:
    harness.register('name = "err"\n[steps.bad]\ncommand = ["/bin/sh", "-c", "echo boom-42 >&2; exit 2"]\n')
    r = harness.run("err")
    s = steps_by_name(r)["bad"]
    assert r.state == "FAILED" and "exit code 2" in s.reason and "boom-42" in s.log_tail


def test_an_in_process_step_cut_by_a_restart_fails_saying_so_and_resumes(tmp_path) -> None:
    h = open_harness(tmp_path)
    h.code(
        "steps.py",
        STEPS.replace(
            "def ok(ctx):", "def slow(ctx):\n    import time\n    time.sleep(3)\n    _write(ctx)\n\n\ndef ok(ctx):"
        ),
    )
    h.register(
        'name = "cut"\n[steps.s]\ncall = "steps:slow"\nisolation = "none"\noutputs = ["o"]\n'
        '[steps.t]\ncall = "steps:ok"\nisolation = "none"\ninputs = { x = "s.o" }\noutputs = ["o"]\n'
    )
    from agent.schemas.pipelines import RunRequest

    run = h.svc.start_run("cut", RunRequest(), "t")
    deadline = time.monotonic() + 30
    while steps_by_name(h.svc.get_run(run.id))["s"].state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    h.svc.stop()
    h.jobs.stop()
    h.writer.stop()
    h.writer._con.close()  # type: ignore[attr-defined]
    h2 = open_harness(tmp_path)
    try:
        done = h2.wait(run.id)
        s = steps_by_name(done)
        assert done.state == "FAILED" and "agent restarted" in s["s"].reason and s["t"].state == "UPSTREAM_FAILED"
        again = h2.run("cut", resume=run.id)
        assert again.state == "COMPLETED"
    finally:
        close_harness(h2)
