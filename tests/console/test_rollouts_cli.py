"""`watchkeeper deploy`, `watchkeeper rollouts` and the rollout actions against fake agents over HTTP."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from console.cli import main
from console.rollouts.deploy_cli import parse_gate
from tests.console.wk_fakes import RolloutAgent, ThreadedFakeAgent, agent_routes, make_rollout

FLIGHTS = ["--model", "flights:3", "--strategy", "canary"]


class Fleet:
    """Fake agents on their own threads, and a fleet file naming them (token "tok")."""

    def __init__(self, tmp_path: Path, *agents: RolloutAgent | str) -> None:
        self.tmp_path = tmp_path
        self.agents = agents
        self._stack = ExitStack()

    def __enter__(self) -> str:
        lines = []
        for agent in self.agents:
            if isinstance(agent, str):  # an older agent: no rollout routes
                name, routes = agent, agent_routes(agent, token="tok")
            else:
                name, routes = agent.name, agent.routes()
            server = self._stack.enter_context(ThreadedFakeAgent(routes))
            lines.append(f'[[agent]]\nname = "{name}"\nurl = "{server.url}"\ntoken = "tok"\n')
        path = self.tmp_path / "fleet.toml"
        path.write_text("".join(lines))
        return str(path)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def awaiting(rollout_id: str, step_index: int = 1, **kw) -> object:
    return make_rollout(rollout_id, state="awaiting_approval", step_index=step_index, now=time.time(), **kw)


# --------------------------------------------------------------------------- deploy


def test_deploy_fans_out_to_agents_with_the_endpoint_and_reports_each_host(tmp_path, capsys) -> None:
    one, two = RolloutAgent("gpu-01", token="tok"), RolloutAgent("gpu-02", token="tok")
    bare = RolloutAgent("cpu-03", token="tok", has_endpoint=False)
    with Fleet(tmp_path, one, two, bare) as fleet:
        rc = main(["deploy", "flights", *FLIGHTS, "--gate", "auc:0.75,log_loss:+0.01", "--gate", "f1:+5%",
                   "--reason", "weekly retrain", "--fleet", fleet])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    for agent in (one, two):
        ((path, body),) = agent.posts
        assert path == "/api/v1/endpoints/flights/rollouts"
        assert body["candidate_version"] == 3 and body["strategy"] == "canary" and body["reason"] == "weekly retrain"
        assert body["gate"] == [
            {"metric": "auc", "threshold": 0.75},
            {"metric": "log_loss", "min_absolute_change": 0.01},
            {"metric": "f1", "min_relative_change": 0.05},
        ]
        assert "steps" not in body  # the strategy's default plan
    assert bare.posts == []
    lines = out.out.splitlines()
    assert "gpu-01: started r-gpu-01-01 (canary, flights v2→v3)" in lines
    assert "  gpu-02 flights: progressing, step 1/7 weight 5%, weight 5%" in lines
    assert "cpu-03: skipped: no endpoint 'flights'" in lines
    assert lines[-1] == "deploy flights flights v3: started on 2 of 3 agents, 1 without the endpoint"


def test_deploy_exits_3_when_the_gate_rejects_on_one_host_and_shows_the_gate(tmp_path, capsys) -> None:
    ok, bad = RolloutAgent("gpu-01", token="tok"), RolloutAgent("gpu-02", token="tok", gate_fails=True)
    with Fleet(tmp_path, ok, bad) as fleet:
        rc = main(["deploy", "flights", *FLIGHTS, "--gate", "auc:0.75", "--dataset", "flights-val", "--fleet", fleet])
    out = capsys.readouterr().out
    assert rc == 3
    assert "gpu-02: REJECTED: HTTP 422: validation gate failed (auc)" in out
    assert "  gate  FAILED on flights-val (sha256 4f2a9c0d1e8b, 5000 rows)" in out
    assert "auc       candidate 0.71  stable 0.792  (threshold 0.75)  FAIL  0.71 < threshold 0.75" in out
    assert "started on 1 of 2 agents, 1 rejected" in out
    assert ok.posts[0][1]["validation_dataset"] == "flights-val"


def test_deploy_json_reports_hosts_and_a_conflict_is_a_failure(tmp_path, capsys) -> None:
    busy = RolloutAgent("gpu-01", token="tok", rollouts=[awaiting("r-busy")])
    free = RolloutAgent("gpu-02", token="tok")
    with Fleet(tmp_path, busy, free, "old-03") as fleet:
        rc = main(["deploy", "flights", *FLIGHTS, "--json", "--fleet", fleet])
    captured = capsys.readouterr()
    assert rc == 1
    doc = json.loads(captured.out)
    assert doc["endpoint"] == "flights" and doc["candidate_version"] == 3 and doc["strategy"] == "canary"
    hosts = {h["agent"]: h for h in doc["hosts"]}
    assert hosts["gpu-01"]["status"] == "failed" and "already has an active rollout" in hosts["gpu-01"]["error"]
    assert hosts["gpu-02"]["status"] == "started" and hosts["gpu-02"]["rollout"]["id"] == "r-gpu-02-01"
    assert hosts["old-03"]["status"] == "skipped"  # an older agent: GET /endpoints/flights is 404 there too
    assert "watchkeeper deploy: gpu-01: HTTP 409: conflict: 'flights' already has an active rollout" in captured.err


def test_deploy_with_a_plan_file_json_or_toml(tmp_path, capsys) -> None:
    agent = RolloutAgent("gpu-01", token="tok")
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([{"set_weight": 10}, {"approval": True}, {"set_weight": 100}]))
    full = tmp_path / "plan.toml"
    full.write_text(
        'two_person_rule = false\nab_min_samples = 500\n[guards]\nmax_error_rate = 0.01\n'
        '[[steps]]\nshadow = 0.5\n[[steps]]\nanalysis_s = 60\n[[gate]]\nmetric = "auc"\nthreshold = 0.7\n'
    )  # fmt: skip
    with Fleet(tmp_path, agent) as fleet:
        assert main(["deploy", "flights", *FLIGHTS, "--plan", str(steps), "--fleet", fleet]) == 0
        agent.rollouts.clear()
        args = ["deploy", "flights", "--model", "flights:4", "--strategy", "bluegreen", "--plan", str(full)]
        assert main([*args, "--gate", "f1:0.6", "--fleet", fleet]) == 0
    first, second = (body for _, body in agent.posts)
    assert first["steps"] == [{"set_weight": 10.0}, {"approval": True}, {"set_weight": 100.0}]
    assert second["strategy"] == "bluegreen" and second["candidate_version"] == 4
    assert second["steps"] == [{"shadow": 0.5}, {"analysis_s": 60.0}] and second["two_person_rule"] is False
    assert second["guards"]["max_error_rate"] == 0.01 and second["ab_min_samples"] == 500
    assert second["gate"] == [{"metric": "auc", "threshold": 0.7}, {"metric": "f1", "threshold": 0.6}]
    capsys.readouterr()


def test_deploy_wait_prints_progress_and_exits_3_when_a_rollout_aborts(tmp_path, capsys) -> None:
    aborting = RolloutAgent("gpu-01", token="tok", script=[
        {"step_index": 1, "state": "progressing"},
        {"step_index": 2, "weight": 25.0},
        {"state": "aborted", "weight": 0.0, "ended_at": time.time(), "end_reason": "guard error_rate breached for 30s"},
    ])  # fmt: skip
    waiting = RolloutAgent("gpu-02", token="tok", script=[{"state": "awaiting_approval", "step_index": 1,
                                                           "awaiting_approval_for": 1}])  # fmt: skip
    with Fleet(tmp_path, aborting, waiting) as fleet:
        rc = main(["deploy", "flights", *FLIGHTS, "--wait", "--poll", "0.05", "--wait-timeout", "20", "--fleet", fleet])
    out = capsys.readouterr().out
    assert rc == 3
    lines = out.splitlines()
    assert "gpu-01 flights: progressing, step 3/7 weight 25%, weight 25%" in lines
    assert any(line.startswith("gpu-01 flights: aborted, step 3/7") for line in lines)
    assert (
        "gpu-02 flights: awaiting approval, step 2/7 approval, weight 5% "
        "(approve step 2: watchkeeper approve r-gpu-02-01)"
    ) in lines
    assert "gpu-01: aborted (guard error_rate breached for 30s)" in lines
    assert "gpu-02: awaiting approval" in lines


def test_deploy_wait_ending_awaiting_approval_everywhere_exits_0_and_json_progress_goes_to_stderr(
    tmp_path, capsys
) -> None:
    agent = RolloutAgent("gpu-01", token="tok", script=[{"state": "awaiting_approval", "step_index": 1,
                                                         "awaiting_approval_for": 1}])  # fmt: skip
    with Fleet(tmp_path, agent) as fleet:
        rc = main(["deploy", "flights", *FLIGHTS, "--wait", "--poll", "0.05", "--json", "--fleet", fleet])
    out = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out.out)
    assert doc["waited"] is True and doc["finished"] is True
    assert doc["hosts"][0]["rollout"]["state"] == "awaiting_approval"
    assert "gpu-01 flights: awaiting approval" in out.err


def test_deploy_usage_errors_are_one_line_exit_2(tmp_path, capsys) -> None:
    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text('[{"set_weight": 500}]')
    cases = [
        (["--model", "flights", "--strategy", "canary"], "expected NAME:VERSION"),
        ([*FLIGHTS, "--gate", "auc>0.8"], "--gate 'auc>0.8': expected METRIC:THRESHOLD"),
        ([*FLIGHTS, "--plan", str(tmp_path / "nope.json")], "cannot read"),
        ([*FLIGHTS, "--plan", str(bad_plan)], "invalid rollout: steps.0.set_weight: Input should be less than"),
    ]
    for extra, message in cases:
        assert main(["deploy", "flights", *extra, "--agents", "http://127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert parse_gate("log_loss:-0.5") == {"metric": "log_loss", "threshold": -0.5}


def test_deploy_where_no_agent_has_the_endpoint_exits_1(tmp_path, capsys) -> None:
    with Fleet(tmp_path, RolloutAgent("gpu-01", token="tok", has_endpoint=False)) as fleet:
        assert main(["deploy", "flights", *FLIGHTS, "--fleet", fleet]) == 1
    assert "no agent has endpoint 'flights'" in capsys.readouterr().err


# --------------------------------------------------------------------------- rollouts


def test_rollouts_lists_active_ones_across_the_fleet_and_json_shape(tmp_path, capsys) -> None:
    now = time.time()
    one = RolloutAgent("gpu-01", token="tok", rollouts=[
        awaiting("r-1"), make_rollout("r-0", state="promoted", step_index=6, ended_ago=60, now=now),
    ])  # fmt: skip
    two = RolloutAgent("gpu-02", token="tok", rollouts=[make_rollout("r-2", "fraud", model="fraud", now=now)])
    with Fleet(tmp_path, one, two, "old-03") as fleet:
        assert main(["rollouts", "--fleet", fleet]) == 0
        text = capsys.readouterr()
        assert main(["rollouts", "--json", "--all", "--fleet", fleet]) == 0
        doc = json.loads(capsys.readouterr().out)
    lines = text.out.splitlines()
    assert lines[0].split()[:3] == ["HOST", "ENDPOINT", "STRATEGY"]
    assert lines[1].split()[:2] == ["gpu-01", "flights"] and "AWAITING APPROVAL (step 2)" in lines[1]
    assert lines[2].split()[:2] == ["gpu-02", "fraud"] and len(lines) == 3  # the promoted one only with --all
    assert "no rollouts on old-03" in text.err
    assert doc["all"] is True
    assert [(r["agent"], r["id"], r["state"]) for r in doc["rollouts"]] == [
        ("gpu-01", "r-1", "awaiting_approval"), ("gpu-02", "r-2", "progressing"), ("gpu-01", "r-0", "promoted"),
    ]  # fmt: skip
    assert doc["rollouts"][0]["awaiting_approval_for"] == 1 and doc["rollouts"][0]["steps"][1]["approval"] is True
    assert [(a["name"], a["rollouts"]) for a in doc["agents"]] == [
        ("gpu-01", "ok"), ("gpu-02", "ok"), ("old-03", "none"),
    ]  # fmt: skip


def test_rollouts_with_an_unreachable_agent_exits_1(tmp_path, capsys) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[agent]]\nname = "gone"\nurl = "http://127.0.0.1:9"\ntimeout = 0.5\n')
    assert main(["rollouts", "--fleet", str(fleet)]) == 1
    out = capsys.readouterr()
    # Never an empty answer for an agent that did not answer: stdout says the rollouts are unknown.
    assert out.out.strip() == "rollouts unknown: 1 of 1 agents not read: gone (connection refused)"
    assert "1 of 1 agents not read: gone (connection refused)" in out.err


def test_rollouts_with_one_of_two_agents_unreachable_says_what_was_read(tmp_path, capsys) -> None:
    with Fleet(tmp_path, RolloutAgent("gpu-01", token="tok")) as fleet:
        with open(fleet, "a") as f:
            f.write('[[agent]]\nname = "gone"\nurl = "http://127.0.0.1:9"\ntimeout = 0.5\n')
        assert main(["rollouts", "--fleet", fleet]) == 1
    out = capsys.readouterr().out.strip()
    assert out == "no active rollouts on 1 of 2 agents; 1 not read: gone (connection refused)"


# --------------------------------------------------------------------------- actions


def test_approve_by_endpoint_sends_each_agents_awaiting_step(tmp_path, capsys) -> None:
    one = RolloutAgent("gpu-01", token="tok", rollouts=[awaiting("r-1", 1)])
    two = RolloutAgent("gpu-02", token="tok", rollouts=[awaiting("r-2", 5)])
    other = RolloutAgent("gpu-03", token="tok", rollouts=[awaiting("r-3", 1, endpoint="fraud", model="fraud")])
    with Fleet(tmp_path, one, two, other, "old-04") as fleet:
        rc = main(["approve", "flights", "--reason", "guards green", "--fleet", fleet])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert one.posts == [("/api/v1/rollouts/r-1/approve", {"step_index": 1, "reason": "guards green"})]
    assert two.posts == [("/api/v1/rollouts/r-2/approve", {"step_index": 5, "reason": "guards green"})]
    assert other.posts == []
    lines = out.out.splitlines()
    assert "gpu-01 flights r-1: approved; now progressing, step 3/7 weight 25%, weight 25%" in lines
    assert "gpu-02 flights r-2: approved; now progressing, step 7/7 weight 100%, weight 100%" in lines


def test_action_by_id_json_shape_and_refusals(tmp_path, capsys) -> None:
    one = RolloutAgent("gpu-01", token="tok", principal="alice", rollouts=[awaiting("r-1")])  # alice started it
    two = RolloutAgent("gpu-02", token="tok", rollouts=[awaiting("r-2"), awaiting("r-9", endpoint="fraud")])
    with Fleet(tmp_path, one, two) as fleet:
        assert main(["pause", "r-2", "--json", "--fleet", fleet]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert main(["approve", "flights", "--fleet", fleet]) == 1
        refused = capsys.readouterr()
        assert main(["resume", "fraud", "--fleet", fleet]) == 1
        not_paused = capsys.readouterr()
        assert main(["abort", "nothing-here", "--fleet", fleet]) == 1
        missing = capsys.readouterr()
    assert doc["action"] == "pause" and doc["target"] == "r-2" and doc["unreachable"] == []
    (result,) = doc["results"]
    assert result["agent"] == "gpu-02" and result["status"] == "done" and result["error"] is None
    assert result["rollout_id"] == "r-2" and result["endpoint"] == "flights" and result["step_index"] is None
    assert result["rollout"]["state"] == "paused"
    assert two.posts[0] == ("/api/v1/rollouts/r-2/pause", {"reason": ""})
    # gpu-01: alice may not approve her own rollout; gpu-02's is paused now: refused before asking.
    assert "gpu-01 flights r-1: not approved: 403 forbidden: two_person_rule: alice started rollout r-1" in refused.out
    assert "gpu-02 flights r-2: not approved: nothing awaits approval: it is paused at step 2" in refused.out
    assert "watchkeeper approve: gpu-01: 403 forbidden: two_person_rule" in refused.err
    assert "fraud r-9: not resumed: it is awaiting approval, not paused" in not_paused.out
    assert "no rollout 'nothing-here' and no active rollout of endpoint 'nothing-here' on 2 of 2 agents" in missing.err


def test_rollback_by_endpoint_takes_the_newest_promoted_rollout(tmp_path, capsys) -> None:
    now = time.time()
    agent = RolloutAgent("gpu-01", token="tok", rollouts=[
        make_rollout("r-old", state="promoted", step_index=6, ended_ago=3600, now=now),
        make_rollout("r-new", state="promoted", step_index=6, ended_ago=60, now=now),
    ])  # fmt: skip
    with Fleet(tmp_path, agent) as fleet:
        assert main(["rollback", "flights", "--reason", "bad scores", "--fleet", fleet]) == 0
    assert agent.posts == [("/api/v1/rollouts/r-new/rollback", {"reason": "bad scores"})]
    assert "gpu-01 flights r-new: rolled back; now rolled back" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["approve", "reject", "promote", "pause", "resume", "abort", "rollback"])
def test_every_action_is_a_subcommand(action, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([action, "--help"])
    assert exit_info.value.code == 0
    assert "ID|ENDPOINT" in capsys.readouterr().out


# --------------------------------------------------------------------------- a real agent


def test_deploy_list_and_abort_against_a_real_agent(agent_factory, tmp_path, capsys) -> None:
    from tests.serving.test_serving_agent import FAST, endpoint, register, wait_loaded

    agent = agent_factory("roll-01", config=FAST)
    with agent.client() as c:
        if c.get("/api/v1/rollouts").status_code == 404:
            pytest.skip("this agent has no rollout routes")
        register(c)
        register(c, doc=b"v2")  # version 2: the same weights under a new digest
        endpoint(c, "delays", version=1)
        wait_loaded(c, "delays")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[agent]]\nname = "roll-01"\nurl = "{agent.url}"\ntoken = "{agent.token}"\n')
    args = ["--fleet", str(fleet)]
    rc = main(["deploy", "delays", "--model", "flights:2", "--strategy", "canary", "--reason", "cli test", *args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "roll-01: started r-" in out.out and "(canary, flights v1→v2)" in out.out
    assert main(["rollouts", "--json", *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["rollouts"]
    assert (r["agent"], r["endpoint"], r["strategy"], r["stable_version"], r["candidate_version"]) == (
        "roll-01", "delays", "canary", 1, 2,
    )  # fmt: skip
    assert r["state"] in ("validating", "progressing", "awaiting_approval") and r["started_by"]
    assert r["steps"][1]["approval"] is True and doc["agents"] == [
        {"name": "roll-01", "url": agent.url, "rollouts": "ok", "error": None}
    ]
    # A second deploy of the same endpoint is refused (one active rollout per endpoint).
    assert main(["deploy", "delays", "--model", "flights:2", "--strategy", "canary", *args]) == 1
    assert "409" in capsys.readouterr().err
    assert main(["abort", "delays", "--reason", "done testing", "--json", *args]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "done" and result["rollout"]["state"] == "aborted"
    assert main(["rollouts", *args]) == 0
    assert capsys.readouterr().out.strip() == "no active rollouts"
