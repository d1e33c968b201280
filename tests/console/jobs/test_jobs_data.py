"""The jobs data layer: the poll asks for jobs only when someone looks or the summary says they moved (real
agents); rows, reasons, bars and the log tail as plain values; no Textual in the data layer."""

from __future__ import annotations

from agent.schemas.jobs import JobLog, SlurmInfo
from console.core.config import AgentSpec
from console.core.feeds import FeedState
from console.jobs.client import JobsClient, JobsPoller, jobs_feed
from console.jobs.logs import LogTail, read_on
from console.jobs.quota_rows import QuotaRow
from console.jobs.rows import JobRow, detail_lines, log_task, state_reason
from tests.console.jobs.agents import submit, wait_job
from tests.console.jobs.fakes import gpu01_quotas, make_job
from tests.console.wk_fakes import FROZEN_NOW
from tests.console.wk_pilot import imports_textual


class CountingClient(JobsClient):
    """The real client, counting the job list requests it sends."""

    calls = 0

    async def jobs(self, *args, **kwargs):
        CountingClient.calls += 1
        return await super().jobs(*args, **kwargs)


async def test_jobs_are_fetched_when_shown_or_when_the_summary_says_they_moved(jobs_agent, agent_factory) -> None:
    bare = agent_factory(name="no-jobs", config="[jobs]\nenabled = false\n")
    CountingClient.calls = 0
    specs = [AgentSpec("a", jobs_agent.url, token=jobs_agent.token), AgentSpec("b", bare.url, token=bare.token)]
    async with JobsPoller(specs, client_factory=CountingClient) as poller:
        poller.want_feeds()  # the fleet screen: no jobs shown
        status = await poller.poll()
        # Nothing runs anywhere: the summaries say so, no job list is asked for; "b" has no jobs at all.
        assert CountingClient.calls == 0
        assert jobs_feed(status.get("b")).state is FeedState.NONE
        assert status.get("a").summary.jobs.running == 0

        job = submit(jobs_agent, pipeline="batch", command=["sleep", "30"])
        wait_job(jobs_agent, job["id"], {"RUNNING"})
        status = await poller.poll()  # the counts moved: fetched once
        assert CountingClient.calls == 1
        feed = jobs_feed(status.get("a"))
        assert feed.state is FeedState.OK and [j.id for j in feed.jobs] == [job["id"]]
        assert feed.quotas is not None and {q.pipeline for q in feed.quotas.quotas} >= {"training", "batch"}

        await poller.poll()  # nothing moved, nobody looks
        assert CountingClient.calls == 1
        poller.want_feeds("jobs")  # the jobs screen opened: every poll
        await poller.poll()
        await poller.poll()
        assert CountingClient.calls == 3
        cancelled = await poller.job_action("a", job["id"], "cancel", "test")
        assert cancelled.state in ("CANCELLED", "RUNNING")
        log = await poller.job_log("a", job["id"], "stdout", 0, 1024)
        assert log.text == "" and log.job_id == job["id"]


def test_reasons_beside_the_state() -> None:
    assert state_reason(make_job("j", "PENDING", reason="QuotaCpu")) == "QuotaCpu"
    assert state_reason(make_job("j", "FAILED", exit_code=3, reason="exit code 3")) == "exit code 3"
    assert state_reason(make_job("j", "FAILED", exit_code=None, signal=9, reason="")) == "signal 9"
    assert state_reason(make_job("j", "CANCELLED", cancelled_by="bob", reason="")) == "by bob"
    lost = make_job("j", "LOST", reason="could not re-adopt: pid 123 is another process")
    assert state_reason(lost) == "could not re-adopt: pid 123 is another process"
    row = JobRow("k", "a", 0, "gpu-01", make_job("j", "RUNNING"), FROZEN_NOW, stale=True)
    assert row.text("state") == "RUNNING?" and "host not answering" in row.text("reason")
    assert row.blocked("cancel") is not None  # not while its host does not answer


def test_an_arrays_log_pane_follows_the_task_that_matters() -> None:
    def array(**tasks: str):
        info = SlurmInfo(job_id=7, tasks={k[1:]: v for k, v in tasks.items()})
        return make_job("j", "RUNNING", backend="slurm", tier="slurm", array=len(tasks), slurm=info)

    assert log_task(make_job("j", "RUNNING")) is None  # not an array: its one output
    assert log_task(array(t0="COMPLETED", t1="PENDING", t2="RUNNING", t10="RUNNING")) == 2
    assert log_task(array(t0="COMPLETED", t1="COMPLETED", t2="FAILED", t3="CANCELLED")) == 2
    assert log_task(array(t0="COMPLETED", t1="COMPLETED")) == 0


def test_the_detail_says_which_cpus_a_job_was_pinned_to() -> None:
    pinned = JobRow("k", "a", 0, "gpu-01", make_job("j", "RUNNING", cpus=[2, 3, 5]), FROZEN_NOW)
    assert "request cpu 2 on CPU 2-3,5  ·  mem 4.0 GiB" in "\n".join(detail_lines(pinned))
    anywhere = JobRow("k", "a", 0, "gpu-01", make_job("j", "RUNNING"), FROZEN_NOW)
    assert "request cpu 2  ·  mem" in "\n".join(detail_lines(anywhere))


def test_quota_bars_say_unlimited_and_never_draw_an_allocation_as_empty() -> None:
    training, batch = sorted(gpu01_quotas().quotas, key=lambda q: q.pipeline != "training")
    t = QuotaRow("k", "a", 0, "gpu-01", training)
    b = QuotaRow("k", "a", 0, "gpu-01", batch)
    assert t.bar_text("cpu") == "██████  95%" and t.near == ["cpu", "mem"]
    assert b.bar_text("gpus") == "unlimited" and b.fraction("gpus") is None
    assert b.bar_text("mem").startswith("█░") and b.bar_text("mem").endswith("6%")  # 1 of 16 GiB: still a mark
    assert t.sort_key() < b.sort_key()
    assert b.cli_text("jobs") == "unlimited (1)"


async def test_log_tail_keeps_the_last_lines_across_reads() -> None:
    text = "".join(f"line {i}\n" for i in range(10)) + "partial"
    tail = LogTail("j", keep=3)

    async def fetch(offset: int) -> JobLog:
        chunk = text[offset : offset + 16]
        return JobLog(
            job_id="j",
            stream="stdout",
            offset=offset,
            next_offset=offset + len(chunk),
            text=chunk,
            eof=offset + len(chunk) >= len(text),
        )

    got = await read_on(tail, fetch, max_requests=100)
    assert got == text and tail.eof and tail.offset == len(text)
    assert tail.text() == "line 8\nline 9\npartial"
    assert tail.text(1) == "partial"


def test_the_jobs_data_layer_does_not_import_textual() -> None:
    assert not imports_textual(
        "console.jobs.client", "console.jobs.rows", "console.jobs.quota_rows", "console.jobs.logs", "console.jobs.cli"
    )
