"""`watchkeeper pipelines …` against a real agent running real pipelines."""

from __future__ import annotations

import json

from console.cli import main
from tests.console.jobs.agents import fleet_file
from tests.console.pipelines.agents import SLOW, TRAIN, wait_run, wait_step, write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_register_run_rerun_cached_show_runs_and_compare(agent_factory, tmp_path, capsys) -> None:
    agent = agent_factory(name="pipes-a")
    fleet = fleet_file(tmp_path, agent)
    rc, out, err = run(capsys, "pipelines", "register", write(tmp_path, "train", TRAIN), "--fleet", fleet)
    assert rc == 0, err
    assert out.startswith("train-demo registered on pipes-a: 2 steps, version sha256:")

    rc, out, err = run(capsys, "pipelines", "run", "train-demo", "--param", "lr=0.2", "--fleet", fleet, "--json")
    assert rc == 0, err
    first = json.loads(out)
    assert first["agent"] == "pipes-a" and first["params"]["lr"] == 0.2  # K=V read as a TOML float
    assert wait_run(agent, first["id"])["state"] == "COMPLETED"

    rc, out, err = run(capsys, "pipelines", "run", "train-demo", "--param", "lr=0.2", "--fleet", fleet)
    assert rc == 0, err
    second = out.split()[0]
    assert out.startswith(f"{second} started on pipes-a: train-demo ")
    done = wait_run(agent, second)
    assert [s["cache_hit"] for s in done["steps"]] == [True, True]

    # show: the steps as a tree (train under prep), both cache hits, the metric beside the previous run's.
    rc, out, err = run(capsys, "pipelines", "show", second, "--fleet", fleet)
    assert rc == 0, err
    lines = out.splitlines()
    prep = next(ln for ln in lines if "✓ prep" in ln)
    train = next(ln for ln in lines if "✓ train" in ln)
    assert "cache hit" in prep and f"from {first['id']}" in prep
    assert train.startswith("  └ ") and not prep.startswith(" ")
    metric = next(ln for ln in lines if ln.startswith("train.auc"))
    assert metric.split()[1:3] == ["0.7", "0.7"]

    rc, out, err = run(capsys, "pipelines", "runs", "train-demo", "--fleet", fleet)
    assert rc == 0, err
    rows = out.splitlines()
    assert rows[0].split()[:4] == ["HOST", "RUN", "PIPELINE", "STATE"]
    assert [r.split()[1] for r in rows[1:]] == [second, first["id"]]  # newest first
    assert "2/2 (2 cached)" in rows[1]

    # A third run with another lr: compare says what changed.
    rc, out, err = run(capsys, "pipelines", "run", "train-demo", "--param", "lr=0.3", "--fleet", fleet, "--json")
    third = json.loads(out)["id"]
    wait_run(agent, third)
    rc, out, err = run(capsys, "pipelines", "compare", first["id"], third, "--fleet", fleet)
    assert rc == 0, err
    lr = next(ln for ln in out.splitlines() if " lr " in f" {ln} ")
    auc = next(ln for ln in out.splitlines() if "train.auc" in ln)
    assert lr.split() == ["*", "lr", "0.2", "0.3"] and auc.split() == ["*", "train.auc", "0.7", "0.8"]
    rc, out, err = run(capsys, "pipelines", "compare", first["id"], third, "--fleet", fleet, "--json")
    doc = json.loads(out)
    assert {d["key"]: d["changed"] for d in doc["params"]}["lr"] is True


def test_cancel_and_one_line_errors(agent_factory, tmp_path, capsys) -> None:
    agent = agent_factory(name="pipes-b")
    fleet = fleet_file(tmp_path, agent)
    assert run(capsys, "pipelines", "register", write(tmp_path, "slow", SLOW), "--fleet", fleet)[0] == 0
    rc, out, err = run(capsys, "pipelines", "run", "slow", "--fleet", fleet, "--json")
    run_id = json.loads(out)["id"]
    wait_step(agent, run_id, "wait", "RUNNING")
    rc, out, err = run(capsys, "pipelines", "cancel", run_id, "--reason", "test", "--fleet", fleet)
    assert rc == 0, err
    assert out.startswith(f"{run_id} on pipes-b: cancelled; now ")
    assert wait_run(agent, run_id)["state"] == "CANCELLED"

    # Errors: one line on stderr, non-zero exit.
    rc, out, err = run(capsys, "pipelines", "run", "nope", "--fleet", fleet)
    assert rc == 1 and err == "watchkeeper pipelines run: no pipeline 'nope' on 1 agent\n"
    rc, out, err = run(capsys, "pipelines", "show", "run-000000000000", "--fleet", fleet)
    assert rc == 1 and err.count("\n") == 1 and "no run 'run-000000000000'" in err
    rc, out, err = run(capsys, "pipelines", "run", "slow", "--param", "oops", "--fleet", fleet)
    assert rc == 2 and err == "watchkeeper: error: --param 'oops': say K=V\n"
    bad = write(tmp_path, "bad", 'name = "bad"\n[steps.a]\ncall = "m:f"\nisolation = "none"\nafter = ["zz"]\n')
    rc, out, err = run(capsys, "pipelines", "register", bad, "--fleet", fleet)
    assert rc == 1 and err.count("\n") == 1 and "not registered" in err and "steps.a" in err
    rc, out, err = run(capsys, "pipelines", "register", str(tmp_path / "missing.toml"), "--fleet", fleet)
    assert rc == 2 and "missing.toml" in err


def test_runs_across_a_fleet_with_a_dead_agent_lists_what_it_can_and_exits_1(agent_factory, tmp_path, capsys) -> None:
    from tests.agentproc import free_port
    from tests.console.pipelines.agents import register, start

    agent = agent_factory(name="pipes-c")
    register(agent, TRAIN)
    done = wait_run(agent, start(agent, "train-demo")["id"])
    fleet = fleet_file(tmp_path, agent, dead=f"http://127.0.0.1:{free_port()}")
    rc, out, err = run(capsys, "pipelines", "runs", "--fleet", fleet)
    assert rc == 1
    assert out.splitlines()[1].split()[:4] == ["pipes-c", done["id"], "train-demo", "COMPLETED"]
    assert err.count("\n") == 1 and "1 of 2 agents not read: gone (" in err
    rc, out, err = run(capsys, "pipelines", "runs", "--fleet", fleet, "--json")
    doc = json.loads(out)
    assert rc == 1 and [r["id"] for r in doc["runs"]] == [done["id"]] and doc["unread"][0].startswith("gone (")
    # A verb that needs one agent says which to name when the fleet has several.
    rc, out, err = run(capsys, "pipelines", "register", write(tmp_path, "t", TRAIN), "--fleet", fleet)
    assert rc == 2 and "say which with --agent" in err
    rc, out, err = run(capsys, "pipelines", "register", write(tmp_path, "t", TRAIN), "--fleet", fleet, "--agent", "x")
    assert rc == 2 and "no agent 'x' in the fleet" in err


def test_no_cache_only_and_from_reach_the_agent(agent_factory, tmp_path, capsys) -> None:
    agent = agent_factory(name="pipes-d")
    fleet = fleet_file(tmp_path, agent)
    assert run(capsys, "pipelines", "register", write(tmp_path, "train", TRAIN), "--fleet", fleet)[0] == 0

    def started(*extra: str) -> dict:
        rc, out, err = run(capsys, "pipelines", "run", "train-demo", *extra, "--fleet", fleet, "--json")
        assert rc == 0, err
        return wait_run(agent, json.loads(out)["id"])

    first = started()
    assert first["state"] == "COMPLETED"
    fresh = started("--no-cache")
    assert fresh["no_cache"] is True and not any(s["cache_hit"] for s in fresh["steps"])
    only = started("--only", "train", "--param", "lr=0.4")
    states = {s["step"]: s["state"] for s in only["steps"]}
    assert only["only"] == ["train"] and states == {"prep": "SKIPPED", "train": "COMPLETED"}
    later = started("--from", "train", "--param", "lr=0.5")
    assert later["from_step"] == "train" and {s["step"]: s["state"] for s in later["steps"]}["prep"] == "SKIPPED"
    rc, _out, err = run(capsys, "pipelines", "run", "train-demo", "--only", "nope", "--fleet", fleet)
    assert rc == 1 and err.count("\n") == 1 and "not started" in err
