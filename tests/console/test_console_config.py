"""Fleet file and --agents parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.core.config import AgentSpec, FleetConfigError, load_fleet_file, parse_agent_urls, resolve_fleet


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    return p


def test_fleet_file_tokens_timeouts_and_sockets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
timeout = 3.5
[[agent]]
name = "gpu-01"
url = "http://10.0.0.5:7070/"
token = "abc"

[[agent]]
name = "gpu-02"
url = "https://gpu-02.internal:7443"
token_env = "GPU02_TOKEN"
timeout = 1
verify = false

[[agent]]
name = "local"
url = "unix:///run/watchkeeper/agent.sock"
""",
    )
    specs = load_fleet_file(path, env={"GPU02_TOKEN": "from-env", "WATCHKEEPER_TOKEN": "fallback"})
    assert [s.name for s in specs] == ["gpu-01", "gpu-02", "local"]
    assert specs[0].url == "http://10.0.0.5:7070"  # trailing slash normalised
    assert (specs[0].token, specs[0].timeout_s) == ("abc", 3.5)
    assert (specs[1].token, specs[1].timeout_s, specs[1].verify) == ("from-env", 1.0, False)
    assert specs[2].token == "fallback"  # WATCHKEEPER_TOKEN when the entry names none
    assert specs[2].socket_path == "/run/watchkeeper/agent.sock"
    assert all(not s.name_from_url for s in specs)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[agent]]\nname="a"\nurl="http://h:1"\ncolour="red"', "unknown key(s): colour"),
        ('[[agent]]\nname="a"\nurl="http://h:1"\n[[agent]]\nname="a"\nurl="http://h:2"', "duplicate name"),
        ('[[agent]]\nname="a"', "url is required"),
        ('[[agent]]\nname="a"\nurl="ftp://h"', "must be http://"),
        ('[[agent]]\nname="a"\nurl="unix://relative.sock"', "must be absolute"),
        ('[[agent]]\nname="a"\nurl="http://h:1"\ntoken_env="NOPE_UNSET"', "NOPE_UNSET (token_env) is not set"),
        ('[[agent]]\nname="a"\nurl="http://h:1"\ntoken="x"\ntoken_env="Y"', "not both"),
        ('[[agent]]\nname="a"\nurl="http://h:1"\ntimeout=0', "timeout must be"),
        ('[[agent]]\nname="bad name!"\nurl="http://h:1"', "name must be"),
        ("agents = 1", "unknown top-level key"),
        ("", "no [[agent]] entries"),
        ("[[agent]\nname=", "not valid TOML"),
    ],
)
def test_bad_fleet_files_give_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FleetConfigError) as err:
        load_fleet_file(path, env={})
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="cannot read fleet file"):
        load_fleet_file(tmp_path / "nope.toml")


def test_agents_flag_uses_env_token_and_rejects_duplicates() -> None:
    specs = parse_agent_urls("http://a:1, unix:///tmp/x.sock ,", env={"WATCHKEEPER_TOKEN": "t"})
    assert [(s.name, s.url, s.token, s.name_from_url) for s in specs] == [
        ("a:1", "http://a:1", "t", True),
        ("/tmp/x.sock", "unix:///tmp/x.sock", "t", True),
    ]
    with pytest.raises(FleetConfigError, match="twice"):
        parse_agent_urls("http://a:1,http://a:1/", env={})
    with pytest.raises(FleetConfigError, match="empty"):
        parse_agent_urls(" , ", env={})
    with pytest.raises(FleetConfigError, match="bad port"):
        parse_agent_urls("http://a:99999", env={})


def test_resolve_requires_agents_and_merges_sources(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="no agents"):
        resolve_fleet(None, None, env={})
    path = write(tmp_path, '[[agent]]\nname="x"\nurl="http://h:1"')
    specs = resolve_fleet("http://other:2", str(path), env={})
    assert [s.name for s in specs] == ["x", "other:2"]
    path2 = write(tmp_path, '[[agent]]\nname="h:1"\nurl="http://h:9"')
    with pytest.raises(FleetConfigError, match="given twice"):
        resolve_fleet("http://h:1", str(path2), env={})


def test_agents_flag_replaces_the_fleet_from_the_environment_and_dedupes_by_address(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[[agent]]\nname="gpu-01"\nurl="http://h:1"\ntoken="t1"\n[[agent]]\nname="y"\nurl="http://h:2"'
    )
    env = {"WATCHKEEPER_FLEET": str(path)}
    # A flag beats the environment: only the agent asked for, with the file's name and token for its address.
    (only,) = resolve_fleet("http://h:1/", None, env=env)
    assert (only.name, only.url, only.token) == ("gpu-01", "http://h:1", "t1")
    assert [s.name for s in resolve_fleet("http://h:3", None, env=env)] == ["h:3"]
    # Both as flags: one agent per address.
    assert [s.name for s in resolve_fleet("http://h:2,http://h:3", str(path), env={})] == ["gpu-01", "y", "h:3"]


def test_repr_never_shows_the_token() -> None:
    spec = AgentSpec(name="a", url="http://h:1", token="s3cret-token")
    assert "s3cret" not in repr(spec)
