"""How jobs end, against a real agent and real subprocesses: exit codes, output, memory, time limit, retries."""

from __future__ import annotations

import sys

from tests.jobs.conftest import submit, wait_job

HOG = (
    "import time\n"
    "b = []\n"
    "for _ in range(60):\n"
    "    b.append(b'x' * (10 * 2**20))\n"
    "    time.sleep(0.02)\n"
    "time.sleep(10)\n"
)


def test_exit_codes_output_and_limits(agent_factory, tmp_path) -> None:
    a = agent_factory()
    with a.client() as c:
        ok = submit(c, pipeline="p", command=["sh", "-c", "echo hello; echo oops >&2"], reason="smoke")
        bad = submit(c, pipeline="p", command=["sh", "-c", "exit 3"])
        oom = submit(c, pipeline="p", command=[sys.executable, "-c", HOG], mem="100M")
        slow = submit(c, pipeline="p", command=["sleep", "30"], time_limit="1s")
        missing = submit(c, pipeline="p", command=["/nonexistent/prog"])

        done = wait_job(c, ok["id"])
        assert done["state"] == "COMPLETED" and done["exit_code"] == 0 and done["tier"], done
        assert done["submit_reason"] == "smoke" and done["started_at"] >= done["submitted_at"]
        out = c.get(f"/api/v1/jobs/{ok['id']}/logs", params={"stream": "stdout"}).json()
        assert out["text"] == "hello\n" and out["eof"] and out["next_offset"] == 6
        err = c.get(f"/api/v1/jobs/{ok['id']}/logs", params={"stream": "stderr", "offset": 1}).json()
        assert err["text"] == "ops\n" and err["offset"] == 1

        failed = wait_job(c, bad["id"])
        assert failed["state"] == "FAILED" and failed["exit_code"] == 3 and failed["reason"] == "exit code 3"

        o = wait_job(c, oom["id"])
        assert o["state"] == "OUT_OF_MEMORY", o
        assert o["peak_rss_bytes"] is None or o["peak_rss_bytes"] <= 400 * 2**20

        t = wait_job(c, slow["id"])
        assert t["state"] == "TIMEOUT" and "time limit 1 s" in t["reason"], t
        assert 1.0 <= t["elapsed_s"] < 15

        m = wait_job(c, missing["id"])
        assert m["state"] == "FAILED" and m["exit_code"] == 127

        # The data dir keeps each job's output private.
        d = a.data_dir / "jobs" / ok["id"]
        assert (d.stat().st_mode & 0o777) == 0o700
        assert (d / "stdout").stat().st_mode & 0o777 == 0o600


def test_retries_and_requeue(agent_factory, tmp_path) -> None:
    a = agent_factory()
    counter = tmp_path / "count"
    # Fails on its first run, succeeds on the second.
    flaky = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ "$n" -ge 2 ]'
    with a.client() as c:
        job = submit(c, pipeline="p", command=["sh", "-c", flaky], retry={"max_retries": 2, "backoff_s": 0})
        done = wait_job(c, job["id"])
        assert done["state"] == "COMPLETED" and done["attempt"] == 2, done
        attempts = c.get(f"/api/v1/jobs/{job['id']}/attempts").json()
        assert [x["state"] for x in attempts] == ["FAILED", "COMPLETED"]
        assert "retried as attempt 2" in attempts[0]["reason"]

        # Only the listed exit codes retry.
        other = submit(c, pipeline="p", command=["sh", "-c", "exit 5"],
                       retry={"max_retries": 3, "backoff_s": 0, "on_exit_codes": [3]})  # fmt: skip
        o = wait_job(c, other["id"])
        assert o["state"] == "FAILED" and o["attempt"] == 1 and o["exit_code"] == 5

        # Requeue: the same id as its next attempt; an active job can't be requeued.
        r = c.post(f"/api/v1/jobs/{other['id']}/requeue", json={"reason": "fixed the data"})
        assert r.status_code == 200 and r.json()["attempt"] == 2 and r.json()["state"] == "PENDING", r.text
        assert wait_job(c, other["id"])["attempt"] == 2
        sleeper = submit(c, pipeline="p", command=["sleep", "30"])
        wait_job(c, sleeper["id"], {"RUNNING"})
        r = c.post(f"/api/v1/jobs/{sleeper['id']}/requeue", json={})
        assert r.status_code == 409 and r.json()["field"] == "id"
        r = c.post(f"/api/v1/jobs/{sleeper['id']}/cancel", json={})
        assert r.status_code == 200 and r.json()["state"] in ("CANCELLED", "RUNNING")
        assert wait_job(c, sleeper["id"])["state"] == "CANCELLED"


SMALL_HOG = "b = [b'x' * (10 * 2**20) for _ in range(25)]\nimport time\ntime.sleep(1)\n"


def test_out_of_memory_retries_with_more_memory_up_to_the_quota(agent_factory) -> None:
    a = agent_factory(
        config='[[quotas]]\npipeline = "train"\nmem = "1GiB"\n[[quotas]]\npipeline = "small"\nmem = "256MiB"\n'
    )
    with a.client() as c:
        policy = {"max_retries": 3, "backoff_s": 0, "oom_mem_factor": 4}
        job = submit(c, pipeline="train", command=[sys.executable, "-c", SMALL_HOG], mem="100M", retry=policy)
        done = wait_job(c, job["id"], timeout=60)
        assert done["state"] == "COMPLETED" and done["attempt"] == 2, done
        assert done["mem"] == 400 * 2**20 and done["oom_retry_mem"] == 400 * 2**20
        first = c.get(f"/api/v1/jobs/{job['id']}/attempts").json()[0]
        assert first["state"] == "OUT_OF_MEMORY" and "retried as attempt 2" in first["reason"]
        # At the quota already: another OOM is final (more of the same would end the same way).
        big = submit(c, pipeline="small", command=[sys.executable, "-c", HOG], mem="256M", retry=policy)
        end = wait_job(c, big["id"], timeout=60)
        assert end["state"] == "OUT_OF_MEMORY" and end["attempt"] == 1, end


def test_output_over_the_cap_keeps_its_tail(agent_factory) -> None:
    a = agent_factory(config='[jobs]\nlog_max_bytes = "64KiB"\n')
    with a.client() as c:
        # 200,000 numbered lines (~1.3 MB), the last one known.
        job = submit(c, pipeline="p", command=[sys.executable, "-c", "for i in range(200_000): print(i)"])
        wait_job(c, job["id"])
        first = c.get(f"/api/v1/jobs/{job['id']}/logs", params={"offset": 0, "max_bytes": 1 << 20}).json()
        assert first["dropped_bytes"] > 1_000_000 and first["offset"] == first["dropped_bytes"], first["offset"]
        assert first["text"].endswith("199999\n") and len(first["text"]) <= 64 * 1024
        assert first["eof"] and (a.data_dir / "jobs" / job["id"] / "stdout").stat().st_size <= 64 * 1024
