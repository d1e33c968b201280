"""The keyed audit chain in a real agent process: keyed from the first entry with a key outside the data dir,
said in /readyz, exposed as a head to remember; a rewrite of the stopped agent's data dir without the key is
named by `watchkeeper-agent audit verify` and put on record at the next start. Without a key: warned."""

from __future__ import annotations

import json
import os

import duckdb

from agent.audit import canonical_json, entry_hash
from agent.cli import main as agent_cli

KEY_DIR = "keys"


def _keyed_agent(agent_factory, tmp_path, name: str = "keyed"):
    keys = tmp_path / KEY_DIR
    keys.mkdir(exist_ok=True)
    (keys / "audit.key").write_bytes(os.urandom(32).hex().encode())
    return agent_factory(name, config=f'[audit]\nkey_file = "{keys / "audit.key"}"\n')


def _config_args(a) -> list[str]:
    i = a.args.index("--config")
    return ["--config", a.args[i + 1], "--data-dir", str(a.data_dir)]


def test_a_keyed_agent_names_the_entry_rewritten_without_the_key(agent_factory, tmp_path, capsys):
    a = _keyed_agent(agent_factory, tmp_path)
    with a.client() as c:
        assert c.get("/readyz").json()["checks"]["audit"] == "keyed since entry 1"
        for name in ("ci", "bob", "eve"):
            assert c.post("/api/v1/tokens", json={"name": name, "role": "viewer"}).status_code == 201
        head = c.get("/api/v1/audit/head").json()
        assert head["seq"] == 3 and head["keyed"] is True and head["keyed_since"] == 1
        second = next(e for e in c.get("/api/v1/audit").json() if e["seq"] == 2)
        v = c.get("/api/v1/audit/verify", params={"since_seq": 2, "since_hash": second["hash"]})
        assert v.json()["ok"] is True and v.json()["keyed"] is True and v.json()["extends"] is True, v.text
        r = c.get("/api/v1/audit/verify", params={"since_seq": 2})
        assert r.status_code == 422 and r.json()["field"] == "since_hash"
    a.stop()
    # Someone with the data dir but not the key: bob's token becomes an admin's, links recomputed, head too.
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"))
    cols = ["seq", "ts", "principal", "role", "via", "action", "target", "detail", "client", "prev_hash", "hash"]
    rows = [dict(zip(cols, r, strict=True)) for r in con.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()]
    prev = rows[0]["hash"]
    for r in rows[1:]:
        r["detail"] = json.loads(r["detail"])
        if r["seq"] == 2:
            r["detail"]["role"] = "admin"
        r["prev_hash"] = prev
        r["hash"] = entry_hash(r, prev)
        con.execute("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    [canonical_json(r["detail"]), prev, r["hash"], r["seq"]])  # fmt: skip
        prev = r["hash"]
    con.close()
    (a.data_dir / "audit.head").write_text(f"3 {prev}\n")
    capsys.readouterr()
    assert agent_cli(["audit", "verify", *_config_args(a), "--socket", "/nonexistent"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at entry 2 (token.create token:bob)" in out and "[altered]" in out, out
    assert "without the key" in out
    a.start()
    with a.client() as c:
        check = c.get("/readyz").json()["checks"]["audit"]
        assert "BROKEN at start" in check and "entry 2" in check, check
        v = c.get("/api/v1/audit/verify").json()
        assert v["status"] == "altered" and v["first_bad_seq"] == 2 and v["first_bad_target"] == "token:bob"
        anomaly = [e for e in c.get("/api/v1/audit").json() if e["action"] == "audit.anomaly"]
        assert anomaly and anomaly[0]["principal"] == "watchkeeper-agent" and anomaly[0]["detail"]["first_bad_seq"] == 2


def test_an_unkeyed_agent_says_so_and_a_missing_head_is_reported(agent_factory, capsys):
    a = agent_factory("plain")
    with a.client() as c:
        assert c.get("/readyz").json()["checks"]["audit"].startswith("unkeyed")
        for name in ("ci", "bob"):
            assert c.post("/api/v1/tokens", json={"name": name, "role": "viewer"}).status_code == 201
        v = c.get("/api/v1/audit/verify").json()
        assert v["ok"] is True and v["keyed"] is False and "unkeyed" in v["warnings"][0]
    a.stop()
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"))
    con.execute("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
    con.close()
    (a.data_dir / "audit.head").unlink()
    capsys.readouterr()
    assert agent_cli(["audit", "verify", "--data-dir", str(a.data_dir), "--socket", "/nonexistent"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: " in out and "[head_missing]" in out and "warning: audit chain unkeyed" in out, out
