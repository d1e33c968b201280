"""The two-person rule through the CLI, against a real agent: the author's `watchkeeper approve` is refused, a
second approver's goes through (the API's side is tests/rollouts/test_rollouts_agent.py)."""

from __future__ import annotations

import json

from console.cli import main
from tests.rollouts.test_rollouts_agent import tokens, wait_for
from tests.serving.test_serving_agent import FAST, endpoint, register, wait_loaded


def _fleet(tmp_path, agent, token: str, name: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[[agent]]\nname = "{agent.name}"\nurl = "{agent.url}"\ntoken = "{token}"\n')
    return ["--fleet", str(path)]


def test_the_author_cannot_approve_from_the_cli_and_another_approver_can(agent_factory, tmp_path, capsys):
    agent = agent_factory("two-person", config=FAST)
    with agent.client() as c:
        register(c)
        register(c, doc=b"v2")
        endpoint(c, "delays", version=1)
        wait_loaded(c, "delays")
        t = tokens(c, dave="approver")
    author = _fleet(tmp_path, agent, agent.token, "admin")  # the author: admin may start and (but for the rule) approve
    dave = _fleet(tmp_path, agent, t["dave"], "dave")
    plan = ["--plan", str(tmp_path / "plan.json")]
    (tmp_path / "plan.json").write_text(json.dumps([{"set_weight": 10}, {"approval": True}, {"set_weight": 100}]))
    assert main(["deploy", "delays", "--model", "flights:2", "--strategy", "canary", *plan, *author]) == 0
    capsys.readouterr()

    def awaiting():
        assert main(["rollouts", "--json", *author]) == 0
        (r,) = json.loads(capsys.readouterr().out)["rollouts"]
        return r if r["state"] == "awaiting_approval" else None

    r = wait_for(awaiting, timeout=20)
    assert r["started_by"] == "admin" and r["awaiting_approval_for"] == 1
    # the author approving their own step: refused by the agent, said in one line, non-zero exit
    rc = main(["approve", "delays", "--reason", "lgtm", *author])
    err = capsys.readouterr().err
    assert rc != 0 and "two" in err.lower() and "person" in err.lower(), err
    assert awaiting()["awaiting_approval_for"] == 1  # nothing moved
    # another approver: accepted, the rollout moves past the approval
    assert main(["approve", "delays", "--reason", "flat error rate", "--json", *dave]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "done" and result["rollout"]["step_index"] >= 2
    approvals = result["rollout"]["approvals"]
    assert [(a["principal"], a["decision"], a["step_index"]) for a in approvals] == [("dave", "approved", 1)]
