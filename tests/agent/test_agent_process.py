"""Real agent processes over real HTTP and a real Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import duckdb
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.schemas import HostInfo, SeriesResponse, Snapshot

FAST = "flush_interval = 0.2\n"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=timeout)


def wait_for(pred, timeout: float = 10.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_health_is_public_api_is_not(agent_factory):
    a = agent_factory("h1")
    assert httpx.get(f"{a.url}/healthz").json()["status"] == "ok"
    r = httpx.get(f"{a.url}/api/v1/host")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{a.url}/api/v1/host", headers={"Authorization": "Bearer wk_nope_nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    r = httpx.get(f"{a.url}/api/v1/host", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_generated_admin_token_file_is_private_and_digest_only(agent_factory):
    a = agent_factory("t1")
    tok = a.data_dir / "admin.token"
    assert stat.S_IMODE(tok.stat().st_mode) == 0o600
    # The log says where the token is; it never prints the token, and never claims to have shown it.
    assert f"read it from {tok}" in a.log() and a.token not in a.log() and "shown once" not in a.log()
    a.stop()
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"), read_only=True)
    digests = [r[0] for r in con.execute("SELECT digest FROM tokens").fetchall()]
    con.close()
    assert a.token not in digests and len(digests) == 1 and len(digests[0]) == 64


def test_host_snapshot_series_with_simulated_gpus(agent_factory):
    a = agent_factory("g1", simulate_gpus=2, config=FAST)
    with a.client() as c:
        info = HostInfo.model_validate(c.get("/api/v1/host").json())
        assert info.agent_name == "g1" and info.cpu_logical >= 1
        assert info.enforcement.tier in ("systemd", "cgroup-v2", "cgroup-v1", "psutil")
        snap = Snapshot.model_validate(c.get("/api/v1/snapshot").json())
        assert len(snap.gpus) == 2 and snap.gpu_status.simulated and snap.gpu_status.source == "simulated"
        assert 0 <= snap.cpu.percent <= 100 and snap.memory.total_bytes > 0

        def points():
            r = SeriesResponse.model_validate(
                c.get("/api/v1/series", params={"metric": "gpu_utilization_percent", "step": 1}).json()
            )
            return r if len(r.series) == 2 and all(len(s.points) >= 3 for s in r.series) else None

        r = wait_for(points)
        assert {s.labels["gpu"] for s in r.series} == {"0", "1"}
        cpu = c.get("/api/v1/series", params={"metric": "cpu_percent"}).json()
        assert cpu["source"] == "raw" and cpu["series"][0]["points"]


def test_no_gpu_host_reports_reason_not_crash(agent_factory):
    a = agent_factory("n1", config=FAST)  # this machine has no NVIDIA driver
    with a.client() as c:
        snap = c.get("/api/v1/snapshot").json()
        assert snap["gpus"] == [] and snap["gpu_status"]["source"] == "none"
        assert snap["gpu_status"]["reason"]
        alerts = wait_for(lambda: c.get("/api/v1/alerts").json())
        assert any(al["kind"] == "telemetry.gpu_source" for al in alerts)


def test_bad_requests_get_4xx_json_naming_the_field(agent_factory):
    a = agent_factory("b1")
    with a.client() as c:
        r = c.get("/api/v1/series", params={"metric": "nope"})
        assert r.status_code == 422 and r.json()["field"] == "metric"
        r = c.get("/api/v1/series", params={"metric": "cpu_percent", "step": "-1"})
        assert r.status_code == 422 and r.json()["field"] == "step"
        r = c.get("/api/v1/series", params={"metric": "cpu_percent", "start": 10, "end": 5})
        assert r.status_code == 422 and r.json()["field"] == "start"
        r = c.post("/api/v1/tokens", json={"name": "x", "role": "superuser"})
        assert r.status_code == 422 and r.json()["field"] == "role"
        r = c.post("/api/v1/tokens", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/api/v1/tokens", json={"name": "x", "role": "viewer", "extra": 1})
        assert r.status_code == 422 and r.json()["field"] == "extra"
        r = c.get("/api/v1/no/such/route")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        # the agent is still fine
        assert c.get("/api/v1/host").status_code == 200
        assert c.get("/openapi.json").json()["info"]["title"] == "Watchkeeper agent"


def test_roles_tokens_and_audit(agent_factory):
    a = agent_factory("r1")
    with a.client() as admin:
        r = admin.post("/api/v1/tokens", json={"name": "carol", "role": "viewer"})
        assert r.status_code == 201
        viewer_token, accessor = r.json()["token"], r.json()["accessor"]
        assert viewer_token.startswith(f"wk_{accessor}_")
        with a.client(viewer_token) as viewer:
            assert viewer.get("/api/v1/whoami").json() == {"name": "carol", "role": "viewer", "via": "token"}
            assert viewer.get("/api/v1/snapshot").status_code == 200
            r = viewer.post("/api/v1/tokens", json={"name": "evil", "role": "admin"})
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            assert admin.delete(f"/api/v1/tokens/{accessor}").status_code == 200
            assert viewer.get("/api/v1/whoami").status_code == 401
        assert admin.delete(f"/api/v1/tokens/{accessor}").status_code == 404
        entries = admin.get("/api/v1/audit").json()
        assert [e["action"] for e in entries] == ["token.create", "token.revoke"]
        assert entries[0]["principal"] == "admin" and entries[0]["client"].startswith("127.0.0.1:")
        assert entries[1]["prev_hash"] == entries[0]["hash"]
        assert admin.get("/api/v1/audit/verify").json()["ok"] is True
    # the audit entry for the forbidden attempt does not exist: nothing happened
    r = cli("audit", "verify", "--data-dir", str(a.data_dir), "--socket", str(a.socket_path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == 2
    # stopped agent: the CLI reads the file itself; a tampered row is found
    a.stop()
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"))
    con.execute("UPDATE audit_log SET role = 'viewer' WHERE seq = 1")
    con.close()
    r = cli("audit", "verify", "--data-dir", str(a.data_dir))
    assert r.returncode == 1 and "BROKEN at entry 1" in r.stdout


def test_tokens_survive_restart(agent_factory):
    a = agent_factory("s1")
    with a.client() as c:
        tok = c.post("/api/v1/tokens", json={"name": "ops", "role": "operator"}).json()["token"]
    a.stop()
    a.start()
    with a.client(tok) as c:
        assert c.get("/api/v1/whoami").json()["role"] == "operator"


def test_unix_socket_peer_uid_is_identified(agent_factory):
    a = agent_factory("u1")
    assert stat.S_IMODE(a.socket_path.stat().st_mode) == 0o660
    with a.uds_client() as c:
        me = c.get("/api/v1/whoami").json()
        assert me["via"] == "unix-peer" and me["role"] == "admin"
        r = c.post("/api/v1/tokens", json={"name": "sock", "role": "viewer"})
        assert r.status_code == 201
        entry = c.get("/api/v1/audit").json()[-1]
        assert entry["via"] == "unix-peer" and entry["client"].startswith(f"unix:pid={os.getpid()},")


def test_unix_socket_unknown_uid_is_refused(agent_factory):
    # Map our own uid to nothing by listing it as a viewer-only peer, then check a role limit holds.
    uid = os.geteuid()
    a = agent_factory("u2", config=f'[auth.unix_peers]\n"{uid}" = "viewer"\n')
    with a.uds_client() as c:
        assert c.get("/api/v1/whoami").json()["role"] == "viewer"
        assert c.post("/api/v1/tokens", json={"name": "x", "role": "viewer"}).status_code == 403


def test_metrics_parse_as_prometheus(agent_factory):
    a = agent_factory("m1", simulate_gpus=2)
    text = httpx.get(f"{a.url}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "node_cpu_seconds" in fams and "node_memory_MemAvailable_bytes" in fams
    util = fams["DCGM_FI_DEV_GPU_UTIL"].samples
    assert len(util) == 2
    assert {s.labels["gpu"] for s in util} == {"0", "1"}
    assert all(s.labels["source"] == "simulated" and s.labels["UUID"] for s in util)
    modes = {s.labels["mode"] for s in fams["node_cpu_seconds"].samples}
    assert {"user", "system", "idle"} <= modes


def test_metrics_can_require_auth(agent_factory):
    a = agent_factory("m2", config="[auth]\nmetrics_public = false\n")
    assert httpx.get(f"{a.url}/metrics").status_code == 401
    assert httpx.get(f"{a.url}/metrics", headers=a.headers()).status_code == 200


def test_series_includes_samples_not_yet_flushed(agent_factory):
    a = agent_factory("f1", config="flush_interval = 600\n")
    with a.client() as c:
        wait_for(lambda: c.get("/api/v1/snapshot").status_code == 200)
        time.sleep(0.6)
        assert len(cpu_points(c)) >= 2  # without the read-side flush this would be empty for 10 min


def test_sigterm_flushes_checkpoints_and_cleans_up(agent_factory):
    a = agent_factory("q1", config="flush_interval = 60\n")  # nothing flushed before the stop
    with a.client() as c:
        wait_for(lambda: c.get("/api/v1/snapshot").status_code == 200)
        time.sleep(1.0)
    assert a.stop() == 0
    assert not a.socket_path.exists()
    wal = a.data_dir / "watchkeeper.duckdb.wal"
    assert not wal.exists() or wal.stat().st_size == 0
    con = duckdb.connect(str(a.data_dir / "watchkeeper.duckdb"), read_only=True)
    n = con.execute("SELECT count(*) FROM host_samples").fetchone()[0]
    con.close()
    assert n >= 3  # buffered samples were flushed by the graceful stop


def cpu_points(c: httpx.Client) -> list[dict]:
    r = c.get("/api/v1/series", params={"metric": "cpu_percent", "step": 0.2, "start": time.time() - 120}).json()
    return r["series"][0]["points"] if r["series"] else []


def test_kill9_then_restart_keeps_flushed_samples(agent_factory):
    a = agent_factory("k1", config=FAST)
    with a.client() as c:
        before = wait_for(lambda: (p := cpu_points(c)) and len(p) >= 5 and p)
    a.kill()
    a.start()
    with a.client() as c:
        ts_after = {p["ts"] for p in cpu_points(c)}
    assert all(p["ts"] in ts_after for p in before)


def test_corrupt_wal_agent_moves_it_aside_and_runs(agent_factory):
    a = agent_factory("w1", config=FAST)
    time.sleep(1.0)
    a.kill()
    wal = a.data_dir / "watchkeeper.duckdb.wal"
    assert wal.exists()
    data = bytearray(wal.read_bytes())
    for i in range(64, len(data), 5):
        data[i] ^= 0xFF
    wal.write_bytes(bytes(data))
    a.start()
    with a.client() as c:
        alerts = wait_for(lambda: [x for x in c.get("/api/v1/alerts").json() if x["kind"] == "store.wal_replay_failed"])
        assert alerts[0]["severity"] == "critical"
        assert "recovered" in httpx.get(f"{a.url}/readyz").json()["checks"]["store"]
    assert any(p.name.startswith("watchkeeper.duckdb.wal.failed-") for p in a.data_dir.iterdir())


def test_second_agent_on_same_port_fails_cleanly(agent_factory, tmp_path):
    a = agent_factory("p1")
    r = cli("run", "--data-dir", str(tmp_path / "other"), "--listen", f"127.0.0.1:{a.port}")
    assert r.returncode == 2 and f"127.0.0.1:{a.port}: port in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sd_notify_ready_watchdog_stopping(tmp_path):
    from tests.agentproc import make_agent

    path = f"/tmp/wk-notify-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(15)
    a = make_agent(tmp_path, "sd1", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        a.start(wait=False)
        got: list[str] = []
        while not any("READY=1" in m for m in got):
            got.append(srv.recv(4096).decode())
        # readiness is only announced once the API answers
        assert httpx.get(f"{a.url}/readyz").status_code in (200, 503)
        msg = srv.recv(4096).decode()
        assert msg == "WATCHDOG=1"
        a.stop()
        rest = []
        srv.settimeout(2)
        try:
            while True:
                rest.append(srv.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        a.kill()
        srv.close()
        os.unlink(path)


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_config_tokens_by_digest(agent_factory, role):
    from agent.auth.tokens import digest, new_token

    token, _ = new_token()
    a = agent_factory(
        f"c-{role}", config=f'[[auth.tokens]]\nname = "ci"\nrole = "{role}"\nsha256 = "{digest(token)}"\n'
    )
    assert not (a.data_dir / "admin.token").exists()  # tokens configured: no bootstrap token
    with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/v1/whoami").json() == {"name": "ci", "role": role, "via": "token"}
