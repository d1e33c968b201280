"""The console remembers each agent's audit head and says when a later chain no longer extends it (issue 9, item
4) — against a real agent whose whole chain and head were rewritten while it was stopped, a rewrite its own
(unkeyed) verify can't see."""

from __future__ import annotations

import json

import duckdb

from agent.audit import GENESIS, canonical_json, entry_hash
from console.cli import main
from console.core.audit_heads import HeadStore, default_path


def _rewrite_everything(a) -> None:
    """Bob's token becomes an admin's; every link recomputed, the head exported to match."""
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"))
    cols = ["seq", "ts", "principal", "role", "via", "action", "target", "detail", "client", "prev_hash", "hash"]
    prev = GENESIS
    for row in con.execute("SELECT * FROM audit_log ORDER BY seq").fetchall():
        r = dict(zip(cols, row, strict=True))
        r["detail"] = json.loads(r["detail"])
        if r["target"] == "token:bob":
            r["detail"]["role"] = "admin"
        r["prev_hash"] = prev  # (part of what the link hashes)
        r["hash"] = entry_hash(r, prev)
        con.execute("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    [canonical_json(r["detail"]), prev, r["hash"], r["seq"]])  # fmt: skip
        prev = r["hash"]
        last = r["seq"]
    con.close()
    (a.data_dir / "audit.head").write_text(f"{last} {prev}\n")


def test_the_console_catches_a_rewritten_chain_the_agent_itself_cannot(agent_factory, monkeypatch, capsys):
    a = agent_factory("anchored")
    monkeypatch.setenv("WATCHKEEPER_TOKEN", a.token)
    with a.client() as c:
        for name in ("ci", "bob"):
            assert c.post("/api/v1/tokens", json={"name": name, "role": "viewer"}).status_code == 201
    assert main(["status", "--agents", a.url]) == 0
    remembered = HeadStore(default_path()).get(a.url)
    assert remembered is not None and remembered[0] == 2
    # A legitimate new entry: the chain extends what was seen; the console moves on with it.
    with a.client() as c:
        assert c.post("/api/v1/tokens", json={"name": "carol", "role": "viewer"}).status_code == 201
    assert main(["status", "--agents", a.url]) == 0
    assert HeadStore(default_path()).get(a.url)[0] == 3
    capsys.readouterr()

    a.stop()
    _rewrite_everything(a)
    a.start()
    with a.client() as c:
        assert c.get("/api/v1/audit/verify").json()["ok"] is True  # unkeyed: the agent alone is fooled
    assert main(["status", "--agents", a.url]) == 1
    out = capsys.readouterr().out
    assert "!!! anchored: AUDIT CHAIN REWRITTEN: it no longer holds entry 3" in out, out
    assert "AUDIT CHAIN REWRITTEN" in out.splitlines()[1]  # the fleet row's reason says it too
    # It keeps saying so (the remembered head is kept), in JSON as well.
    assert main(["status", "--json", "--agents", a.url]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["audit_ok"] is False and doc["agents"][0]["audit"]["state"] == "broken"
    assert HeadStore(default_path()).get(a.url)[0] == 3


def test_a_log_that_started_over_is_said_as_such_not_as_a_rewrite(agent_factory, monkeypatch, capsys):
    import shutil

    a = agent_factory("wiped")
    monkeypatch.setenv("WATCHKEEPER_TOKEN", a.token)
    with a.client() as c:
        assert c.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).status_code == 201
    assert main(["status", "--agents", a.url]) == 0
    capsys.readouterr()
    # The data dir re-created (a reinstall, a new demo): same address, a new log from entry 1.
    a.stop()
    shutil.rmtree(a.data_dir)
    a.data_dir.mkdir()
    a.start()
    monkeypatch.setenv("WATCHKEEPER_TOKEN", a.token)
    with a.client() as c:
        for name in ("x", "y", "z"):  # longer than before, so only entry 1 tells the logs apart
            assert c.post("/api/v1/tokens", json={"name": name, "role": "viewer"}).status_code == 201
    assert main(["status", "--json", "--agents", a.url]) == 1  # still worth a look: exit 1
    doc = json.loads(capsys.readouterr().out)
    audit = doc["agents"][0]["audit"]
    assert audit["state"] == "restarted" and "AUDIT LOG STARTED OVER" in audit["message"], audit
    assert "REWRITTEN" not in audit["message"]
