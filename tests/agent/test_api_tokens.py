"""Token administration over HTTP against a real agent: the last admin token cannot be revoked."""

from __future__ import annotations


def test_revoking_the_last_admin_token_is_refused_and_changes_nothing(agent_factory):
    a = agent_factory("tok")
    with a.client() as c:
        me = next(t for t in c.get("/api/v1/tokens").json() if t["role"] == "admin")
        audit_before = len(c.get("/api/v1/audit").json())
        r = c.delete(f"/api/v1/tokens/{me['accessor']}")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "last_admin_token" and r.json()["field"] == "accessor"
        assert "create another admin token" in r.json()["detail"]
        assert c.get("/api/v1/whoami").status_code == 200  # still valid
        assert len(c.get("/api/v1/audit").json()) == audit_before  # nothing happened, nothing recorded
        # A viewer token is no admin: revoking it is fine, and does not make the admin revocable.
        viewer = c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()
        assert c.delete(f"/api/v1/tokens/{viewer['accessor']}").status_code == 200
        assert c.delete(f"/api/v1/tokens/{me['accessor']}").status_code == 409
        # With a second admin, the first can go; then the second is the last one.
        second = c.post("/api/v1/tokens", json={"name": "admin2", "role": "admin"}).json()
    with a.client(second["token"]) as c2:
        assert c2.delete(f"/api/v1/tokens/{me['accessor']}").status_code == 200
        r = c2.delete(f"/api/v1/tokens/{second['accessor']}")
        assert r.status_code == 409 and r.json()["error"] == "last_admin_token"
        assert c2.get("/api/v1/whoami").json()["role"] == "admin"
