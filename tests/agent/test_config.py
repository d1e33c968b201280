"""Config: defaults work, every mistake is one clear line naming the key, flags override the file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, bind_listeners, load_config, parse_listen, prepare_data_dir


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_defaults_without_file(tmp_path):
    cfg = load_config(None, {"data_dir": str(tmp_path)})
    assert cfg.sample_interval == 1.0
    assert cfg.retention.raw == 86400
    addrs = [str(a) for a in cfg.listen_addresses()]
    assert addrs == ["127.0.0.1:7070", f"unix:{tmp_path / 'agent.sock'}"]


def test_durations_and_nested_keys(tmp_path):
    cfg = load_config(write(tmp_path, '[retention]\nraw = "2h"\nrollup = "7d"\n'), None)
    assert cfg.retention.raw == 7200 and cfg.retention.rollup == 7 * 86400


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sample_intervall = 1\n", "sample_intervall: unknown key"),
        ("sample_interval = 'fast'\n", "sample_interval"),
        ("[retention]\nraw = -5\n", "retention.raw"),
        ("[auth]\nunix_peers = { alice = 'admin' }\n", "auth.unix_peers"),
        ("[[auth.tokens]]\nname='ci'\nrole='god'\nsha256='" + "a" * 64 + "'\n", "auth.tokens.0.role"),
        ("listen = ['nonsense']\n", "listen"),
        ("this is = not toml = at all\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), None)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_flags_override_file(tmp_path):
    cfg = load_config(write(tmp_path, "sample_interval = 5\nname = 'from-file'\n"), {"name": "from-flag"})
    assert cfg.name == "from-flag" and cfg.sample_interval == 5


def test_parse_listen():
    assert parse_listen("0.0.0.0:80").port == 80
    assert parse_listen("[::1]:7070").host == "::1"
    assert parse_listen("unix:/run/wk.sock").path == "/run/wk.sock"
    with pytest.raises(ValueError):
        parse_listen("host:99999")


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/proc/self").exists(), reason="needs /proc")
def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the directory should be: unwritable even for root
    cfg = load_config(None, {"data_dir": str(blocker / "sub")})
    with pytest.raises(ConfigError, match="not writable"):
        prepare_data_dir(cfg)


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = load_config(None, {"data_dir": str(tmp_path), "listen": [f"127.0.0.1:{port}"]})
        with pytest.raises(ConfigError, match="port in use"):
            bind_listeners(cfg)


def test_stale_socket_file_is_replaced_but_live_one_refused(tmp_path):
    path = tmp_path / "a.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # file remains, nobody listens
    cfg = load_config(None, {"data_dir": str(tmp_path), "listen": [f"unix:{path}"]})
    socks = bind_listeners(cfg)
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        with pytest.raises(ConfigError, match="another process"):
            bind_listeners(cfg)
    finally:
        for s in socks:
            s.close()


def test_cli_exits_nonzero_with_one_line(tmp_path):
    cfg = write(tmp_path, "bogus = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "bogus: unknown key" in r.stderr
    assert not (tmp_path / "d").exists()  # nothing started
