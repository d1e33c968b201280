"""Which agents the console talks to: the fleet file, `--agents`, and token lookup.

Everything here is plain data and validation; a mistake raises `FleetConfigError` with a message
short enough to print as one line (the CLI exits 2 with it).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_S = 2.0
TOKEN_ENV = "WATCHKEEPER_TOKEN"
FLEET_ENV = "WATCHKEEPER_FLEET"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")
_AGENT_KEYS = frozenset({"name", "url", "token", "token_env", "timeout", "verify"})
_TOP_KEYS = frozenset({"agent", "timeout", "prometheus"})


class FleetConfigError(ValueError):
    """A fleet file or `--agents` value that cannot be used (message fits on one line)."""


@dataclass(frozen=True)
class AgentSpec:
    """How to reach one agent.

    `name` is the console's key for the agent (unique within a fleet). `name_from_url` marks names
    the console made up from an address given with `--agents`; the UI then prefers the name the
    agent reports about itself.
    """

    name: str
    url: str
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    verify: bool | str = True
    name_from_url: bool = False

    @property
    def socket_path(self) -> str | None:
        """The Unix socket path for `unix://` addresses, else None."""
        if self.url.startswith("unix://"):
            return self.url[len("unix://") :]
        return None

    def __repr__(self) -> str:  # never leak the token into logs or tracebacks
        token = "***" if self.token else None
        return f"AgentSpec(name={self.name!r}, url={self.url!r}, token={token}, timeout_s={self.timeout_s})"


def validate_url(url: str) -> str:
    """Return `url` normalised (no trailing slash) or raise `FleetConfigError`."""
    url = url.strip()
    if url.startswith("unix://"):
        path = url[len("unix://") :]
        if not path.startswith("/"):
            raise FleetConfigError(f"unix socket address must be absolute (unix:///path/agent.sock): {url!r}")
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FleetConfigError(f"agent address must be http://, https:// or unix:///path: {url!r}")
    if not parts.hostname:
        raise FleetConfigError(f"agent address has no host: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise FleetConfigError(f"agent address has a bad port: {url!r}") from exc
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FleetConfigError(f"agent address must not carry a path or query: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def name_for_url(url: str) -> str:
    """A readable default name for an address given without one (host:port or socket path)."""
    if url.startswith("unix://"):
        return url[len("unix://") :]
    return urlsplit(url).netloc


def parse_agent_urls(value: str, *, env: Mapping[str, str] | None = None) -> list[AgentSpec]:
    """Parse `--agents URL,URL`; every agent gets the token from `WATCHKEEPER_TOKEN` (if set)."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV) or None
    specs: list[AgentSpec] = []
    seen: set[str] = set()
    for raw in value.split(","):
        if not raw.strip():
            continue
        url = validate_url(raw)
        if url in seen:
            raise FleetConfigError(f"agent listed twice in --agents: {url}")
        seen.add(url)
        specs.append(AgentSpec(name=name_for_url(url), url=url, token=token, name_from_url=True))
    if not specs:
        raise FleetConfigError("--agents is empty")
    return specs


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise FleetConfigError(f"{where}: timeout must be a number of seconds in (0, 300]")
    return float(value)


def parse_fleet(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> list[AgentSpec]:
    """Validate a parsed fleet document (the TOML as a dict) into agent specs."""
    env = os.environ if env is None else env
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise FleetConfigError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    default_timeout = _timeout(data["timeout"], "fleet") if "timeout" in data else DEFAULT_TIMEOUT_S
    entries = data.get("agent")
    if entries is None and "prometheus" in data:
        return []  # the fleet is whatever Prometheus scrapes (resolve_prometheus)
    if not isinstance(entries, list) or not entries:
        raise FleetConfigError("no [[agent]] entries")
    specs: list[AgentSpec] = []
    names: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"agent #{number}"
        if not isinstance(entry, dict):
            raise FleetConfigError(f"{where}: must be a table")
        unknown = set(entry) - _AGENT_KEYS
        if unknown:
            raise FleetConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise FleetConfigError(f"{where}: name must be 1-128 characters of [A-Za-z0-9_.:@/-]")
        where = f"agent {name!r}"
        if name in names:
            raise FleetConfigError(f"{where}: duplicate name")
        names.add(name)
        url = entry.get("url")
        if not isinstance(url, str):
            raise FleetConfigError(f"{where}: url is required")
        try:
            url = validate_url(url)
        except FleetConfigError as exc:
            raise FleetConfigError(f"{where}: {exc}") from None
        specs.append(
            AgentSpec(
                name=name,
                url=url,
                token=_token(entry, where, env),
                timeout_s=_timeout(entry["timeout"], where) if "timeout" in entry else default_timeout,
                verify=_verify(entry.get("verify", True), where),
            )
        )
    return specs


def _token(entry: Mapping[str, Any], where: str, env: Mapping[str, str]) -> str | None:
    if "token" in entry and "token_env" in entry:
        raise FleetConfigError(f"{where}: give token or token_env, not both")
    if "token" in entry:
        token = entry["token"]
        if not isinstance(token, str) or not token:
            raise FleetConfigError(f"{where}: token must be a non-empty string")
        return token
    if "token_env" in entry:
        var = entry["token_env"]
        if not isinstance(var, str) or not var:
            raise FleetConfigError(f"{where}: token_env must name an environment variable")
        # A named variable that is unset is a mistake worth stopping for: silently running without
        # a token would only show up later as a fleet full of "401 bad token".
        if not env.get(var):
            raise FleetConfigError(f"{where}: environment variable {var} (token_env) is not set")
        return env[var]
    return env.get(TOKEN_ENV) or None


def _verify(value: Any, where: str) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        return value
    raise FleetConfigError(f"{where}: verify must be true, false or a CA bundle path")


def load_fleet_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> list[AgentSpec]:
    """Read and validate a TOML fleet file."""
    p = Path(path)
    data = _read_toml(p)
    try:
        return parse_fleet(data, env=env)
    except FleetConfigError as exc:
        raise FleetConfigError(f"{p}: {exc}") from None


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise FleetConfigError(f"cannot read fleet file {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FleetConfigError(f"{p}: not valid TOML: {exc}") from None
    return data


def resolve_fleet(
    agents: str | None,
    fleet: str | None,
    *,
    env: Mapping[str, str] | None = None,
) -> list[AgentSpec]:
    """Agents from `--agents` and/or `--fleet` (or `$WATCHKEEPER_FLEET`), one per address.

    Flags beat the environment, as in every CLI: `--agents` replaces the fleet named by
    `$WATCHKEEPER_FLEET` (an address that file lists keeps the file's name and token). Given both as
    flags, `--agents` adds to `--fleet`'s agents, an address listed in both counted once.
    """
    env = os.environ if env is None else env
    path = fleet or env.get(FLEET_ENV) or None
    from_file = load_fleet_file(path, env=env) if path else []
    if not agents:
        specs = from_file
    else:
        by_url = {s.url: s for s in from_file}
        given = [by_url.get(s.url, s) for s in parse_agent_urls(agents, env=env)]
        if fleet:
            seen = {s.url for s in from_file}
            specs = [*from_file, *(s for s in given if s.url not in seen)]
        else:
            specs = given
    if not specs:
        raise FleetConfigError(f"no agents: pass --agents URL,... or --fleet FILE (or set {FLEET_ENV})")
    _check_unique(specs)
    return specs


def resolve_prometheus(
    prometheus: str | None,
    fleet: str | None,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[str | None, list[AgentSpec]]:
    """The Prometheus address from `--prometheus` or the fleet file's `prometheus` key, and the file's agents.

    (None, []) when neither names one: the console then polls its agents directly. The agents the file
    lists keep their names and tokens; Prometheus's other targets join the fleet as it finds them.
    """
    env = os.environ if env is None else env
    path = fleet or env.get(FLEET_ENV) or None
    data = _read_toml(Path(path)) if path else {}
    url = prometheus or data.get("prometheus")
    if url is None:
        return None, []
    where = "--prometheus" if prometheus else f"{path}: prometheus"
    if not isinstance(url, str):
        raise FleetConfigError(f"{where} must be an http(s):// address")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise FleetConfigError(f"{where} must be http(s)://host[:port][/prefix]: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise FleetConfigError(f"{where} has a bad port: {url!r}") from None
    specs: list[AgentSpec] = []
    if data:
        try:
            specs = parse_fleet(data, env=env)
        except FleetConfigError as exc:
            raise FleetConfigError(f"{path}: {exc}") from None
    return url.strip().rstrip("/"), specs


def _check_unique(specs: Sequence[AgentSpec]) -> None:
    names: set[str] = set()
    for spec in specs:
        if spec.name in names:
            raise FleetConfigError(f"agent {spec.name!r} given twice (--agents and --fleet?)")
        names.add(spec.name)
