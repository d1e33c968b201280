"""PromQL answers → fleet rows, on answers recorded from a real Prometheus 2.42 scraping real agents.

`data/prometheus/fleet_up.json`: agents rec-a (real host, 2 simulated GPUs, instance 127.0.0.1:9101)
and rec-b (simulated host, no GPU, 127.0.0.1:9102) up, and a target nobody listens on (127.0.0.1:1);
`agent_killed.json`: the same a few scrapes after rec-a was SIGKILLed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from console.core.config import AgentSpec, FleetConfigError, resolve_prometheus
from console.core.poller import AgentState
from console.fleet.rows import fleet_rows
from console.prometheus.client import PrometheusError, _duration, parse_matrix, parse_targets, parse_vector
from console.prometheus.fleet import (
    QUERIES,
    Answers,
    Memory,
    agent_statuses,
    alert_counts,
    series_query,
    unreachable,
)
from console.prometheus.source import PrometheusSource

DATA = Path(__file__).parent / "data" / "prometheus"
REPO = Path(__file__).resolve().parents[2]
A, B, NOBODY = "127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:1"


def answers(name: str, shift_s: float = 0.0) -> Answers:
    doc = json.loads((DATA / f"{name}.json").read_text())
    columns = {k: parse_vector(doc[k]) for k in QUERIES}
    now = columns["now"][0].value + shift_s
    return Answers(now=now, targets=parse_targets(doc["targets"], now), columns=columns)


def by_name(statuses):
    return {s.name: s for s in statuses}


def test_every_scraped_agent_becomes_a_row_with_its_figures() -> None:
    got = by_name(agent_statuses(answers("fleet_up"), [], Memory(), console_now=1000.0))
    assert list(got) == [NOBODY, A, B]
    a, b, nobody = got[A], got[B], got[NOBODY]
    assert a.state is AgentState.UP and a.label == "rec-a" and a.url == f"http://{A}"
    assert b.state is AgentState.UP and b.label == "rec-b"
    assert a.snapshot is not None and b.snapshot is not None
    assert [g.index for g in a.snapshot.gpus] == [0, 1] and a.snapshot.gpu_status.simulated
    g0 = a.snapshot.gpus[0]
    # DCGM reports MiB; total is used + free.
    recorded = json.loads((DATA / "fleet_up.json").read_text())["gpu_used"]["data"]["result"][0]["value"][1]
    assert g0.memory_used_bytes == int(float(recorded) * 1024 * 1024)
    assert g0.memory_total_bytes is not None and g0.memory_total_bytes > g0.memory_used_bytes
    assert g0.name.startswith("Simulated") and g0.uuid.startswith("GPU-sim-")
    assert not a.snapshot.host_simulated and b.snapshot.host_simulated  # per-CPU counters only on real hosts
    assert 0 < a.snapshot.memory.percent < 100 and a.snapshot.memory.total_bytes > 0
    assert a.sample_age_s is not None and a.sample_age_s < 5
    # The target nobody listens on: down, with Prometheus's reason in the operator's words.
    assert nobody.state is AgentState.DOWN and nobody.reason == "scrape failed: connection refused"
    rows = {r.key: r for r in fleet_rows(_fleet(got))}
    assert rows[A].gpus == 2 and rows[A].text("gpus") == "2 sim" and rows[A].gpu_util is not None
    assert rows[B].text("host") == "rec-b (sim)" and rows[B].gpus == 0
    assert rows[NOBODY].cpu is None and rows[NOBODY].why.startswith("scrape failed")


def _fleet(got):
    from console.core.poller import FleetStatus

    return FleetStatus(polled_at=1000.0, duration_s=0.0, agents=tuple(got.values()))


def test_alert_counts_say_whose_alerts_to_ask_for() -> None:
    assert alert_counts(answers("fleet_up")) == {A: 0.0, B: 0.0}  # alerting runs, nothing firing or pending
    assert A not in alert_counts(answers("agent_killed"))  # a killed agent exports nothing


def test_a_killed_agent_is_down_with_its_last_known_figures() -> None:
    memory = Memory()
    before = by_name(agent_statuses(answers("fleet_up"), [], memory, console_now=1000.0))
    after = by_name(agent_statuses(answers("agent_killed"), [], memory, console_now=1003.0))
    a = after[A]
    assert a.state is AgentState.DOWN and a.reason == "scrape failed: connection refused"
    assert a.snapshot == before[A].snapshot and a.last_seen == 1000.0  # last known, and when
    assert a.label == "rec-a"  # still named: last_over_time keeps watchkeeper_agent_info for an hour
    assert after[B].state is AgentState.UP and after[B].last_seen == 1003.0


def test_a_killed_agent_never_seen_by_this_console_is_down_without_figures() -> None:
    a = by_name(agent_statuses(answers("agent_killed"), [], Memory(), console_now=1.0))[A]
    assert a.state is AgentState.DOWN and a.snapshot is None
    assert fleet_rows(_fleet({A: a}))[0].cpu is None


def test_fleet_file_names_and_tokens_win_and_an_unscraped_agent_is_down() -> None:
    specs = [AgentSpec("alpha", f"http://{A}", token="t"), AgentSpec("ghost", "http://10.0.0.9:9100")]
    got = agent_statuses(answers("fleet_up"), specs, Memory(), console_now=1.0)
    assert [s.name for s in got] == ["alpha", "ghost", NOBODY, B]  # the file's order first
    d = by_name(got)
    assert d["alpha"].state is AgentState.UP and d["alpha"].label == "alpha"
    assert d["ghost"].state is AgentState.DOWN and d["ghost"].reason == "not a Prometheus target"


def test_old_data_is_stale_not_up() -> None:
    got = by_name(agent_statuses(answers("fleet_up", shift_s=60.0), [], Memory(), console_now=1.0))
    assert got[A].state is AgentState.STALE and got[A].reason is not None
    assert got[A].reason.startswith("last scrape ") and got[A].reason.endswith("s old")


def test_targets_of_other_jobs_are_not_agents() -> None:
    base = answers("fleet_up")
    node = replace(
        base.targets[0], labels={"instance": "10.1.1.1:9100", "job": "node"}, scrape_url="http://10.1.1.1:9100/metrics"
    )
    got = agent_statuses(replace(base, targets=[*base.targets, node]), [], Memory(), console_now=1.0)
    assert "10.1.1.1:9100" not in {s.name for s in got}


def test_prometheus_unreachable_makes_known_agents_stale_not_down() -> None:
    known = agent_statuses(answers("fleet_up"), [], Memory(), console_now=1.0)
    got = by_name(unreachable(known, [], "prometheus at http://p:9090: connection refused"))
    assert all(s.state is AgentState.STALE for s in got.values())
    assert got[A].reason == "prometheus at http://p:9090: connection refused" and got[A].snapshot is not None


def test_parse_errors_and_durations() -> None:
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})
    with pytest.raises(PrometheusError, match="expected a vector"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})
    m = parse_matrix(
        {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [{"metric": {"gpu": "1"}, "values": [[10, "1.5"], [11, "NaN"]]}],
            },
        }
    )
    assert m[0].labels == {"gpu": "1"} and m[0].points[0] == (10.0, 1.5)
    assert _duration("1m30s") == 90.0 and _duration("500ms") == 0.5 and _duration("bogus") is None


def test_series_queries_select_one_instance() -> None:
    assert series_query("cpu_percent", A) == f'watchkeeper_cpu_utilization_percent{{instance="{A}"}}'
    assert series_query("gpu_memory_used_bytes", 'x"y') == 'DCGM_FI_DEV_FB_USED{instance="x\\"y"} * 1048576'
    with pytest.raises(KeyError):
        series_query("net_recv_bytes_per_s", A)


async def test_unreachable_prometheus_is_one_down_row_naming_it() -> None:
    async with PrometheusSource("http://127.0.0.1:1") as source:
        status = await source.poll()
    assert len(status.agents) == 1 and status.agents[0].state is AgentState.DOWN
    assert status.agents[0].reason == "prometheus at http://127.0.0.1:1: connection refused"
    assert source.last_error == status.agents[0].reason


def test_fleet_file_prometheus_key(tmp_path: Path) -> None:
    f = tmp_path / "fleet.toml"
    f.write_text('prometheus = "http://prom:9090/"\n[[agent]]\nname = "a"\nurl = "http://h:9100"\ntoken = "t"\n')
    url, specs = resolve_prometheus(None, str(f), env={})
    assert url == "http://prom:9090" and [s.name for s in specs] == ["a"]
    f.write_text('prometheus = "http://prom:9090"\n')  # no [[agent]]: the fleet is what Prometheus scrapes
    assert resolve_prometheus(None, str(f), env={}) == ("http://prom:9090", [])
    assert resolve_prometheus("http://other:1", str(f), env={})[0] == "http://other:1"  # the flag wins
    assert resolve_prometheus(None, None, env={}) == (None, [])
    with pytest.raises(FleetConfigError, match="prometheus must be"):
        f.write_text('prometheus = "prom:9090"\n')
        resolve_prometheus(None, str(f), env={})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--prometheus", "ftp://x"], "--prometheus must be http(s)://"),
        (["status", "--prometheus", "http://127.0.0.1:1"], "prometheus at http://127.0.0.1:1: connection refused"),
        (["status", "--prometheus", "http://p:1", "--agents", "http://h:2"], "--agents and --prometheus"),
    ],
)
def test_cli_bad_prometheus_is_one_line_exit_2(argv: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "console.cli", *argv], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_prometheus_data_layer_does_not_import_textual() -> None:
    from tests.console.wk_pilot import imports_textual

    assert not imports_textual(
        "console.prometheus.client",
        "console.prometheus.fleet",
        "console.prometheus.source",
        "console.prometheus.status_cli",
    )
