"""While a rollout is active, what its endpoint serves changes only through the rollout (issue 9, item 1).

Real agent processes, real HTTP, two tokens: the rollout's author (an operator) can't bypass the two-person
rule by re-pointing the endpoint, the alias it follows, or deleting it (409 naming the rollout, the rollout
keeps waiting); once the rollout has ended the same changes go through. Automatic transitions are on
record on behalf of the human whose action caused them.
"""

from __future__ import annotations

import time

from tests.rollouts.test_rollouts_agent import FAST, LENIENT, act, get, tokens, wait_for
from tests.serving.test_serving_agent import FALLBACK, endpoint, register, wait_loaded

BASE = {"model": "flights", "fallback": FALLBACK, "missing_policy": "impute"}


def _audit(c, action: str) -> list[dict]:
    return [e for e in c.get("/api/v1/audit", params={"limit": 1000}).json() if e["action"] == action]


def _start(c, name: str, plan: list[dict], version: int = 2):
    body = {"candidate_version": version, "strategy": "canary", "guards": LENIENT, "steps": plan}
    return c.post(f"/api/v1/endpoints/{name}/rollouts", json=body)


def _conflict(r, rid: str, field: str) -> None:
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "conflict" and body["field"] == field, body
    assert rid in body["detail"] and "use the rollout's verbs" in body["detail"], body


def test_the_author_cannot_bypass_the_two_person_rule_through_the_endpoint_or_its_alias(agent_factory):
    a = agent_factory("lock", config=FAST)
    with a.client() as admin:
        register(admin)
        register(admin, doc=b"v2")
        assert admin.put("/api/v1/models/flights/aliases/prod", json={"version": 1}).status_code == 200
        endpoint(admin, "delays", version=1)  # pinned to a version
        endpoint(admin, "follows", version=None, alias="prod")  # follows an alias
        wait_loaded(admin, "delays")
        wait_loaded(admin, "follows")
        t = tokens(admin, olga="operator", alice="approver")
    plan = [{"set_weight": 10}, {"approval": True}, {"set_weight": 100}]
    with a.client(t["olga"]) as olga, a.client(t["alice"]) as alice:
        r = _start(olga, "delays", plan)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert r.json()["state"] == "awaiting_approval"
        # The bypass of the issue: the author points the endpoint at the candidate.
        _conflict(olga.put("/api/v1/endpoints/delays", json={**BASE, "version": 2}), rid, "version")
        _conflict(olga.put("/api/v1/endpoints/delays", json={**BASE, "alias": "prod"}), rid, "version")
        _conflict(olga.delete("/api/v1/endpoints/delays"), rid, "name")
        time.sleep(1.5)  # several ticks: nothing promotes it behind the approver's back
        ro = get(olga, rid)
        assert ro["state"] == "awaiting_approval" and ro["awaiting_approval_for"] == 1 and ro["weight"] == 10
        assert olga.get("/api/v1/endpoints/delays").json()["version"] == 1
        # A change that keeps what it serves (a timeout) is not the rollout's business.
        r = olga.put("/api/v1/endpoints/delays", json={**BASE, "version": 1, "timeout_ms": 900})
        assert r.status_code == 200 and r.json()["config"]["timeout_ms"] == 900, r.text
        assert get(olga, rid)["state"] == "awaiting_approval"

        # The same through an alias: a rollout on the endpoint that follows prod.
        r = _start(olga, "follows", plan)
        assert r.status_code == 201, r.text
        fid = r.json()["id"]
        _conflict(olga.put("/api/v1/models/flights/aliases/prod", json={"version": 2}), fid, "alias")
        _conflict(olga.put("/api/v1/endpoints/follows", json={**BASE, "alias": "canary"}), fid, "alias")
        assert olga.get("/api/v1/models/flights/aliases").json()["prod"] == 1
        # Another alias of the model, followed by no endpoint under a rollout, moves freely.
        assert olga.put("/api/v1/models/flights/aliases/staging", json={"version": 2}).status_code == 200
        assert get(olga, fid)["state"] == "awaiting_approval"
        refused = [e for e in _audit(olga, "endpoint.put") if e["principal"] == "olga"]
        assert [e["detail"]["timeout_ms"] for e in refused] == [900]  # refused changes left no entry

        # The rollout's own verbs: the approver promotes delays; the author aborts follows.
        r = act(alice, rid, "approve", step_index=1, reason="canary clean")
        assert r.status_code == 200 and r.json()["state"] == "promoted", r.text
        assert act(olga, fid, "abort", reason="not today").json()["state"] == "aborted"
        # After the rollouts ended the changes go through again.
        r = olga.put("/api/v1/endpoints/delays", json={**BASE, "version": 1})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        assert olga.put("/api/v1/models/flights/aliases/prod", json={"version": 2}).status_code == 200
        assert olga.delete("/api/v1/endpoints/follows").status_code == 204
        assert olga.get("/api/v1/audit/verify").json()["ok"] is True


def test_automatic_transitions_are_on_behalf_of_the_human_who_caused_them(agent_factory):
    a = agent_factory("behalf", config=FAST)
    with a.client() as admin:
        register(admin)
        register(admin, doc=b"v2")
        endpoint(admin)
        wait_loaded(admin)
        t = tokens(admin, olga="operator", alice="approver")
    with a.client(t["olga"]) as olga, a.client(t["alice"]) as alice:
        # The last approval is followed by a pause: the agent promotes when it is over, on alice's behalf.
        plan = [{"set_weight": 10}, {"approval": True}, {"pause_s": 1}, {"set_weight": 100}]
        r = _start(olga, "delays", plan)
        rid = r.json()["id"]
        assert act(alice, rid, "approve", step_index=1).json()["state"] == "progressing"
        wait_for(lambda: get(olga, rid)["state"] == "promoted", timeout=20)
        (promote,) = _audit(olga, "rollout.promote")
        assert promote["principal"] == "watchkeeper-agent" and promote["detail"]["automatic"] is True
        assert promote["detail"]["on_behalf_of"] == "alice" and "approved" in promote["detail"]["cause"]
        # A plan without approvals, started by olga, promotes on olga's behalf.
        r = _start(olga, "delays", [{"set_weight": 10}, {"pause_s": 1}, {"set_weight": 100}], version=1)
        rid2 = r.json()["id"]
        wait_for(lambda: get(olga, rid2)["state"] == "promoted", timeout=20)
        second = [e for e in _audit(olga, "rollout.promote") if e["target"] == f"rollout:{rid2}"]
        assert [e["detail"]["on_behalf_of"] for e in second] == ["olga"]
        assert "started" in second[0]["detail"]["cause"]
