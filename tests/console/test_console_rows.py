"""Row values, sorting, formatting and the filter."""

from __future__ import annotations

import re

import pytest

from console.core.filtering import RowFilter
from console.core.poller import AgentState, AgentStatus
from console.core.rows import fmt_age, fmt_bytes, fmt_bytes_pair
from console.fleet.rows import fleet_rows, render_table, sort_rows
from tests.console.wk_fakes import FROZEN_NOW, down, fleet, stale, up


def rows():
    return fleet_rows(
        fleet(
            up("gpu-01", 0, cpu=9.5, gpu_utils=(10.0, 30.0)),
            down("gpu-02", 1),
            up("gpu-03", 2, cpu=10.0, gpu_utils=()),
            stale("cpu-04", 3),
        )
    )


def test_row_values() -> None:
    r = {row.key: row for row in rows()}
    assert r["gpu-01"].gpu_util == pytest.approx(20.0) and r["gpu-01"].gpus == 2
    assert r["gpu-01"].text("gpu_mem") == "20.0/160.0 GiB"
    assert r["gpu-03"].gpus == 0 and r["gpu-03"].gpu_util is None and r["gpu-03"].text("gpu_util") == "-"
    d = r["gpu-02"]
    assert d.state is AgentState.DOWN and d.cpu is None and d.text("cpu") == "-"
    assert d.why == "connection refused (retry in 8s)"
    assert r["cpu-04"].state is AgentState.STALE and r["cpu-04"].text("age") == "45s"


def test_numeric_sort_missing_last_both_ways_ties_in_fleet_order() -> None:
    asc = [r.key for r in sort_rows(rows(), "cpu")]
    assert asc == ["cpu-04", "gpu-01", "gpu-03", "gpu-02"]  # 3.0, 9.5, 10.0 (not "10" < "9.5"), None
    desc = [r.key for r in sort_rows(rows(), "cpu", reverse=True)]
    assert desc == ["gpu-03", "gpu-01", "cpu-04", "gpu-02"]
    assert [r.key for r in sort_rows(rows(), "state")] == ["gpu-02", "cpu-04", "gpu-01", "gpu-03"]
    assert [r.key for r in sort_rows(rows(), None)] == ["gpu-01", "gpu-02", "gpu-03", "cpu-04"]


def test_json_form() -> None:
    data = {r.key: r.as_json() for r in rows()}
    assert data["gpu-02"]["state"] == "down" and data["gpu-02"]["cpu_percent"] is None
    assert data["gpu-01"]["gpu_count"] == 2 and data["gpu-01"]["sample_age_s"] == pytest.approx(1.0)
    assert data["gpu-01"]["reason"] is None


def test_formatting() -> None:
    assert fmt_age(None) == "-" and fmt_age(0.84) == "0.8s" and fmt_age(42.2) == "42s"
    assert fmt_age(600) == "10m" and fmt_age(3 * 3600) == "3h" and fmt_age(3 * 86400) == "3d"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(3 * 2**30) == "3.0 GiB"
    assert fmt_bytes_pair(None, 10) == "-" and fmt_bytes_pair(2**30, 0) == "1.0 GiB"


def test_plain_table_is_aligned() -> None:
    text = render_table(rows())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["HOST", "STATE", "CPU%"]
    cpu_end = lines[0].index("CPU%") + len("CPU%")
    # Numbers are right-aligned under their header.
    assert lines[1][cpu_end - 3 : cpu_end] == "9.5"
    assert lines[3][cpu_end - 4 : cpu_end] == "10.0"
    assert "connection refused" in lines[2]
    assert FROZEN_NOW  # data is frozen; nothing time-dependent in the text
    assert render_table(rows()) == text


@pytest.mark.parametrize(
    ("text", "hay", "shown"),
    [
        ("", "anything", True),
        ("gpu-0[12]", "gpu-01 up", True),
        ("gpu-0[12]", "gpu-03 up", False),
        ("!down", "gpu-02 down", False),
        ("!down", "gpu-01 up", True),
        ("GPU", "gpu-01", False),  # an upper-case letter makes it case-sensitive
        ("gpu", "GPU-01", True),  # otherwise case-insensitive
        ("\\!x", "a!x", True),
    ],
)
def test_filter(text: str, hay: str, shown: bool) -> None:
    assert RowFilter.parse(text).matches(hay) is shown


def test_invalid_filter_raises() -> None:
    with pytest.raises(re.error):
        RowFilter.parse("gpu-(")


def test_simulated_sources_are_labelled() -> None:
    from console.fleet.rows import row_for
    from tests.console.wk_fakes import make_snapshot

    snap = make_snapshot("demo")
    real = row_for(AgentStatus(name="demo", url="u", state=AgentState.UP, snapshot=snap), 0, 0.0)
    assert real.text("gpus") == "2" and real.text("host") == "demo"
    sim = snap.model_copy(
        update={"host_simulated": True, "gpu_status": snap.gpu_status.model_copy(update={"simulated": True})}
    )
    row = row_for(AgentStatus(name="demo", url="u", state=AgentState.UP, snapshot=sim), 0, 0.0)
    assert row.text("gpus") == "2 sim" and row.text("host") == "demo (sim)"
    assert row.sort_value("gpus") == 2  # the label is display only


def test_the_endpoint_row_shows_its_async_queue_on_the_current_row_only() -> None:
    from agent.schemas import AsyncQueueStats
    from console.serving.rows import endpoint_rows, fmt_queue
    from tests.console.wk_fakes import serving_fleet

    rows = {(r.agent, r.endpoint, r.version): r for r in endpoint_rows(serving_fleet())}
    assert rows[("gpu-01", "flights", 3)].text("async") == "120+8 (42s)"
    assert rows[("gpu-01", "flights", 2)].text("async") == "-"  # an older version: the queue is the endpoint's
    assert rows[("gpu-02", "flights", 3)].text("async") == "-"  # an agent without async (or an older one)
    assert fmt_queue(AsyncQueueStats(capacity=10)) == "0"
