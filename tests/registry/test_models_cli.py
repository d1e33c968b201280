"""`watchkeeper models` end to end against a real agent: register, list, show, alias, exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from console.cli import main
from console.models.cli import describe_error, parse_ref
from tests.registry.helpers import FIXTURES, TINY, WIDE, meta, sha256, variant


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"tiny": FIXTURES / "tiny.onnx", "meta": FIXTURES / "tiny.json"}
    for name, data in (("v1", variant(1)), ("v2", variant(2)), ("wide", WIDE)):
        out[name] = tmp_path / f"{name}.onnx"
        out[name].write_bytes(data)
    out["bad_json"] = tmp_path / "bad.json"
    out["bad_json"].write_text("{nope")
    out["no_build"] = tmp_path / "no_build.json"
    doc = meta()
    del doc["lineage"]["build_id"]
    out["no_build"].write_text(json.dumps(doc))
    return out


def wk(capsys, *args: str) -> tuple[int, str, str]:
    """Run `watchkeeper ARGS` in-process; argparse's usage errors exit through SystemExit."""
    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = int(e.code or 0)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_register_list_show_alias(agent_factory, files, capsys, monkeypatch):
    a = agent_factory("cli1")
    monkeypatch.setenv("WATCHKEEPER_TOKEN", a.token)
    monkeypatch.delenv("WATCHKEEPER_AGENT", raising=False)
    monkeypatch.delenv("WATCHKEEPER_FLEET", raising=False)
    ag = ["--agent", a.url]

    rc, out, err = wk(
        capsys, "models", "register", "fraud", "--artifact", str(files["tiny"]), "--metadata", str(files["meta"]), *ag
    )
    assert (rc, err) == (0, "") and out.startswith("registered fraud version 1 on ") and "208 B" in out
    rc, out, _ = wk(
        capsys,
        "models",
        "register",
        "fraud",
        "--artifact",
        str(files["v1"]),
        "--metadata",
        str(files["meta"]),
        "--json",
        *ag,
    )
    assert rc == 0 and json.loads(out)["version"] == 2 and json.loads(out)["digest"] == sha256(variant(1))

    rc, out, _ = wk(capsys, "models", "alias", "fraud", "prod", "1", "--reason", "first", *ag)
    assert (rc, out) == (0, "fraud@prod → version 1\n")
    rc, out, _ = wk(capsys, "models", "alias", "fraud", "prod", "2", *ag)
    assert (rc, out) == (0, "fraud@prod → version 2 (was 1)\n")
    rc, out, _ = wk(capsys, "models", "alias", "fraud", "canary", "1", "--json", *ag)
    assert rc == 0 and json.loads(out)["to_version"] == 1 and json.loads(out)["from_version"] is None

    rc, out, _ = wk(capsys, "models", "list", *ag)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["MODEL", "LATEST", "VERSIONS", "ALIASES", "UPDATED"]
    assert lines[1].split()[:5] == ["fraud", "2", "2", "canary→1,", "prod→2"]
    rc, out, _ = wk(capsys, "models", "list", "--json", *ag)
    assert rc == 0 and json.loads(out)[0]["aliases"] == {"canary": 1, "prod": 2}

    rc, out, _ = wk(capsys, "models", "show", "fraud", *ag)  # the latest version
    assert rc == 0 and out.startswith("fraud version 2   aliases: prod\n")
    assert f"sha256:{sha256(variant(1))}" in out
    assert "build_id       ci-1234" in out and "data_version   flights-2013-01" in out
    assert "signature (2 features, encoded width 3)" in out
    feature_rows = [
        line.split() for line in out.splitlines() if line.startswith("  distance") or line.startswith("  carrier")
    ]
    assert feature_rows == [["distance", "float", "0", "..", "5000", "800"], ["carrier", "category", "AA,", "UA"]]
    assert "output: binary, labels on_time, late, threshold 0.5" in out
    assert "auc      0.71" in out and "versions     1, 2" in out and "aliases      canary→1, prod→2" in out

    rc, out, _ = wk(capsys, "models", "show", "fraud@canary", "--json", *ag)
    assert rc == 0 and json.loads(out)["version"] == 1 and json.loads(out)["aliases"] == ["canary"]
    rc, out, _ = wk(capsys, "models", "show", "fraud:2", "--json", *ag)
    assert rc == 0 and json.loads(out)["version"] == 2

    # failures at the agent: exit 1, one line naming the error and field
    rc, out, err = wk(
        capsys, "models", "register", "fraud", "--artifact", str(files["tiny"]), "--metadata", str(files["meta"]), *ag
    )
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "HTTP 409 duplicate_artifact (artifact)" in err and "version 1" in err
    rc, _, err = wk(
        capsys, "models", "register", "fraud", "--artifact", str(files["wide"]), "--metadata", str(files["meta"]), *ag
    )
    assert rc == 1 and "HTTP 422 invalid_model (artifact)" in err and "takes 5 values" in err
    rc, _, err = wk(
        capsys, "models", "register", "fraud", "--artifact", str(files["v2"]), "--metadata", str(files["no_build"]), *ag
    )
    assert rc == 1 and "(metadata.lineage.build_id)" in err
    rc, _, err = wk(capsys, "models", "show", "nope", *ag)
    assert rc == 1 and "HTTP 404 not_found (name)" in err
    rc, _, err = wk(capsys, "models", "show", "fraud@staging", *ag)
    assert rc == 1 and "no alias 'staging'" in err
    rc, _, err = wk(capsys, "models", "show", "fraud:7", *ag)
    assert rc == 1 and "(version)" in err
    rc, _, err = wk(capsys, "models", "alias", "fraud", "prod", "9", *ag)
    assert rc == 1 and "HTTP 422 unknown_version (version)" in err
    rc, _, err = wk(capsys, "models", "list", "--agent", closed_url())
    assert rc == 1 and "cannot reach agent" in err

    # a viewer may look but not register
    monkeypatch.setenv("VIEWER_TOKEN", json.loads(_admin_post(a, "viewer"))["token"])
    fleet = a.data_dir.parent / "fleet.toml"
    fleet.write_text(f'[[agent]]\nname = "cli1"\nurl = "{a.url}"\ntoken_env = "VIEWER_TOKEN"\n')
    rc, out, _ = wk(capsys, "models", "list", "--fleet", str(fleet))  # the fleet's only agent, its token
    assert rc == 0 and out.startswith("MODEL")
    rc, _, err = wk(
        capsys,
        "models",
        "register",
        "x",
        "--artifact",
        str(files["v2"]),
        "--metadata",
        str(files["meta"]),
        "--agent",
        "cli1",
        "--fleet",
        str(fleet),
    )
    assert rc == 1 and "HTTP 403 forbidden" in err


def _admin_post(a, role: str) -> str:
    with a.client() as c:
        return c.post("/api/v1/tokens", json={"name": f"cli-{role}", "role": role}).text


def test_usage_errors_exit_2(files, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("WATCHKEEPER_AGENT", raising=False)
    monkeypatch.delenv("WATCHKEEPER_FLEET", raising=False)
    url = closed_url()  # never reached: every case fails before a request
    fleet = tmp_path / "two.toml"
    fleet.write_text('[[agent]]\nname = "a"\nurl = "http://h:1"\n[[agent]]\nname = "b"\nurl = "http://h:2"\n')
    cases = [
        (["models"], "required: ACTION"),
        (["models", "list"], "no agent"),
        (["models", "list", "--fleet", str(fleet)], "2 agents configured (a, b)"),
        (["models", "list", "--agent", "ftp://x"], "--agent"),
        (["models", "list", "--agent", "demo-nope", "--fleet", str(fleet)], "no agent named 'demo-nope' in the fleet"),
        (["models", "list", "--agent", "demo-nope"], "no agent named 'demo-nope' in the fleet"),
        (["models", "register", "m", "--metadata", str(files["meta"]), "--agent", url], "--artifact"),
        (
            [
                "models",
                "register",
                "m",
                "--artifact",
                "/nonexistent.onnx",
                "--metadata",
                str(files["meta"]),
                "--agent",
                url,
            ],
            "no such file",
        ),
        (
            [
                "models",
                "register",
                "m",
                "--artifact",
                str(files["tiny"]),
                "--metadata",
                "/nonexistent.json",
                "--agent",
                url,
            ],
            "cannot read",
        ),
        (
            [
                "models",
                "register",
                "m",
                "--artifact",
                str(files["tiny"]),
                "--metadata",
                str(files["bad_json"]),
                "--agent",
                url,
            ],
            "not valid JSON",
        ),
        (["models", "show", "m:x", "--agent", url], "NAME:VERSION"),
        (["models", "show", "m@", "--agent", url], "NAME@ALIAS"),
        (["models", "alias", "m", "prod", "two", "--agent", url], "invalid int value"),
    ]
    for argv, needle in cases:
        rc, out, err = wk(capsys, *argv)
        assert rc == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_agent_from_environment_and_real_entry_point(agent_factory, files, tmp_path):
    a = agent_factory("cli2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHKEEPER_")}
    env.update(WATCHKEEPER_AGENT=a.url, WATCHKEEPER_TOKEN=a.token)
    cmd = [sys.executable, "-m", "console.cli", "models"]
    r = subprocess.run(
        [*cmd, "register", "fraud", "--artifact", str(files["tiny"]), "--metadata", str(files["meta"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and "registered fraud version 1" in r.stdout, r.stderr
    r = subprocess.run([*cmd, "show", "fraud", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["digest"] == sha256(TINY)
    env["WATCHKEEPER_TOKEN"] = "wk_nope_nope"
    r = subprocess.run([*cmd, "list"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "HTTP 401 unauthorized" in r.stderr


def test_parse_ref_and_describe_error():
    assert parse_ref("fraud") == ("fraud", None, None)
    assert parse_ref("fraud:3") == ("fraud", 3, None)
    assert parse_ref("fraud.v2@prod") == ("fraud.v2", None, "prod")
    body = json.dumps({"error": "invalid_request", "field": "x", "detail": [{"field": "x", "message": "bad"}]})
    assert describe_error(422, body.encode()) == "HTTP 422 invalid_request (x): x: bad"
    assert describe_error(502, b"<html>Bad gateway</html>") == "HTTP 502: <html>Bad gateway</html>"
