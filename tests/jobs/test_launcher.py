"""The job launcher (agent/jobs/launcher.py, agent/jobs/spawn.py): each job's wrapper is forked from one warm
process instead of a new interpreter; the launcher comes back after it died; a request it may have acted on
is never retried another way; and what the command inherits is a clean start (SIGPIPE not ignored)."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from agent.jobs.spawn import Launcher
from tests.jobs.conftest import submit, wait_job

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
LAUNCHER_OFF = {"WATCHKEEPER_JOB_LAUNCHER": "0"}


def _launchers_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "launcher.py" in " ".join(p.cmdline())]


def test_a_jobs_wrapper_is_forked_by_the_agents_launcher_and_the_launcher_comes_back(agent_factory) -> None:
    a = agent_factory("launch")  # the default
    with a.client() as c:
        job = wait_job(c, submit(c, pipeline="p", command=SLEEPER, cpu=0.1, mem="64M")["id"], {"RUNNING"})
        try:
            (launcher,) = _launchers_of(a.proc.pid)
            assert psutil.Process(job["pid"]).ppid() == launcher.pid  # forked, not a new interpreter
        finally:
            c.post(f"/api/v1/jobs/{job['id']}/cancel", json={})
        assert wait_job(c, job["id"])["state"] == "CANCELLED"
        launcher.kill()  # gone: the next job starts a new one
        again = wait_job(c, submit(c, pipeline="p", command=["true"], cpu=0.1, mem="64M")["id"])
        assert again["state"] == "COMPLETED", again
        (second,) = _launchers_of(a.proc.pid)
        assert second.pid != launcher.pid


@pytest.mark.parametrize("env", [LAUNCHER_OFF, None], ids=["wrapper", "launcher"])
def test_the_command_does_not_inherit_pythons_ignored_signals(agent_factory, env) -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: a job's command
    must start with them at their defaults (`yes | head -1` must end, killed by SIGPIPE)."""
    a = agent_factory("signals", env=env)
    with a.client() as c:
        job = wait_job(c, submit(c, pipeline="p", command=["sh", "-c", "grep SigIgn /proc/self/status; yes | head -1"],
                                 cpu=0.1, mem="64M")["id"], timeout=20)  # fmt: skip
        assert job["state"] == "COMPLETED", job
        out = c.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "stdout"}).json()["text"]
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), out
    assert out.split()[2] == "y"


def test_a_refused_request_is_an_error_and_a_launch_it_may_have_taken_is_not_retried(tmp_path) -> None:
    launcher = Launcher()
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No such file or directory"):
            launcher.launch(["--rc", str(tmp_path / "rc"), "--", "true"], str(tmp_path / "nowhere"), {}, out, out)
        pid = launcher.launch(
            ["--rc", str(tmp_path / "rc"), "--", "true"], str(tmp_path), {"PATH": os.defpath}, out, out
        )
        deadline = time.monotonic() + 10
        while not (tmp_path / "rc").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "rc").read_text().startswith('{"exit_code": 0') and pid > 0
        # The launcher stalls with a request in hand: that is an error saying the job may have started,
        # never a quiet second start another way; the next request gets a new launcher.
        assert launcher._proc is not None and launcher._sock is not None
        stalled = launcher._proc
        launcher._sock.settimeout(0.3)
        os.kill(stalled.pid, signal.SIGSTOP)
        with pytest.raises(OSError, match="may have started"):
            launcher.launch(["--rc", str(tmp_path / "rc2"), "--", "true"], str(tmp_path), {}, out, out)
        assert stalled.poll() is not None  # killed, not left to act on the request later
        launcher.launch(["--rc", str(tmp_path / "rc3"), "--", "true"], str(tmp_path), {}, out, out)
        assert launcher.starts == 2
    finally:
        os.close(out)
        launcher.close()


def test_with_the_launcher_off_the_wrapper_is_its_own_interpreter(agent_factory) -> None:
    a = agent_factory("nolauncher", env=LAUNCHER_OFF)
    with a.client() as c:
        job = wait_job(c, submit(c, pipeline="p", command=SLEEPER, cpu=0.1, mem="64M")["id"], {"RUNNING"})
        try:
            assert psutil.Process(job["pid"]).ppid() == a.proc.pid and not _launchers_of(a.proc.pid)
        finally:
            c.post(f"/api/v1/jobs/{job['id']}/cancel", json={})
        assert wait_job(c, job["id"])["state"] == "CANCELLED"


def test_jobs_run_as_the_configured_account_in_a_work_dir_of_their_own(agent_factory) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching accounts needs root")
    a = agent_factory("runas", config='[jobs]\nrun_as = "nobody"\n')
    script = "id -u; id -g; pwd; touch mine && echo wrote; touch ../forged 2>/dev/null || echo refused"
    with a.client() as c:
        job = wait_job(c, submit(c, pipeline="p", command=["sh", "-c", script], cpu=0.1, mem="64M")["id"])
        out = c.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "stdout"}).json()["text"].split()
    assert job["state"] == "COMPLETED", job
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert out[:2] == [str(nobody.pw_uid), str(nobody.pw_gid)]
    assert out[2].endswith(f"/{job['id']}/work") and out[3:] == ["wrote", "refused"]  # its dir, not the agent's


def test_an_account_that_does_not_exist_stops_the_agent_at_start(tmp_path) -> None:
    from tests.agentproc import make_agent

    a = make_agent(tmp_path, name="noacct", config='[jobs]\nrun_as = "no-such-account-wk"\n')
    with pytest.raises((RuntimeError, TimeoutError)):
        a.start(timeout=20)
    a.kill()
    assert "jobs.run_as: no account 'no-such-account-wk'" in a.log_path.read_text()
