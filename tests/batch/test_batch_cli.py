"""`watchkeeper batch …` against a real agent: run with a progress bar, status, cancel/resume, refusals."""

from __future__ import annotations

import json

from console.batch.progress import progress_line
from console.cli import main
from tests.batch.conftest import flights, read_output
from tests.console.jobs.agents import fleet_file


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_follows_with_progress_then_status_and_refusals(served, tmp_path, capsys) -> None:
    a, _c = served
    fleet = fleet_file(tmp_path, a)
    flights(3000).write_parquet(tmp_path / "in.parquet")
    rc, out, err = run(capsys, "batch", "run", "flights:1", "--fleet", fleet, "--input", str(tmp_path / "in.parquet"),
                       "--output", str(tmp_path / "out"), "--id-column", "row_id", "--keep", "carrier,origin",
                       "--rows-per-batch", "1000", "--missing-policy", "impute", "--json")  # fmt: skip
    assert rc == 0, err
    b = json.loads(out)
    assert b["state"] == "succeeded" and b["progress"]["rows_done"] == 3000
    assert "3,000/3,000 rows" in err and "succeeded" in err  # the progress bar (plain lines: not a terminal)
    assert read_output(tmp_path / "out").columns == ["row_id", "carrier", "origin", "score", "label"]
    rc, out, err = run(capsys, "batch", "status", b["id"], "--fleet", fleet)
    assert rc == 0 and b["id"] in out and "100%" in out
    rc, out, err = run(capsys, "batch", "list", "--fleet", fleet)
    assert rc == 0 and b["id"] in out
    # refusals: the agent's reason naming the field, exit 3; usage errors exit 2
    rc, out, err = run(capsys, "batch", "run", "delays", "--fleet", fleet, "--input", str(tmp_path / "nope"),
                       "--output", str(tmp_path / "o2"))  # fmt: skip
    assert rc == 3 and "(input)" in err, err
    rc, out, err = run(capsys, "batch", "run", "flights:x", "--fleet", fleet, "--input", "i", "--output", "o")
    assert rc == 2 and "MODEL:VERSION" in err
    rc, out, err = run(capsys, "batch", "resume", b["id"], "--fleet", fleet)
    assert rc == 3 and "complete" in err
    rc, out, err = run(capsys, "batch", "status", "b-0000000000", "--fleet", fleet)
    assert rc == 1


def test_progress_line() -> None:
    from agent.schemas.batch import Batch, BatchProgress

    p = BatchProgress(rows_done=412_000, rows_total=1_000_000, rows_rejected=3, rows_per_s=85210.4, eta_s=6.9)
    b = Batch(id="b-1", state="running", job_id="j", job_state="RUNNING", model="m", version=1, endpoint=None,
              input="i", output="o", rejects="o/_rejects", progress=p, files=[], failed_files=[], submitted_by="x",
              submitted_at=0)  # fmt: skip
    line = progress_line(b)
    assert line.startswith("[###########.................]  41% 412,000/1,000,000 rows  85,210 rows/s  ETA 0:06")
    assert line.endswith("running  3 rejected")


def test_jobs_screen_reason_shows_a_batch_jobs_progress() -> None:
    from agent.schemas.jobs import Job, JobProgress
    from console.jobs.rows import state_reason

    p = JobProgress(done=412_000, total=1_000_000, rate_per_s=85_210, eta_s=69)
    job = Job(id="j-1", pipeline="batch", state="RUNNING", command=["x"], cpu=1, mem=1, submitted_by="o",
              submitted_at=0, progress=p)  # fmt: skip
    assert state_reason(job) == "41% 412,000 rows 85k rows/s ETA 1:09"
    job.progress = None
    assert state_reason(job) == ""
