"""`watchkeeper`: the console's command line.

    watchkeeper [--agents URL,...] [--fleet FILE] [--readonly] [--refresh S]   the TUI
    watchkeeper --prometheus URL [--fleet FILE]                                the TUI, table from PromQL
    watchkeeper status [--json] [--agents ...] [--fleet ...]                    headless table
    watchkeeper alerts [--json] [--state firing|pending|resolved]               alerts across the fleet
    watchkeeper demo                                                            3 local agents + TUI
    watchkeeper jobs submit|list|show|logs|cancel|requeue …, watchkeeper quotas     jobs and quotas
    watchkeeper pipelines register|run|runs|show|cancel|compare …                pipelines and runs
    watchkeeper batch run|list|status|resume|cancel …                                batch transform

Exit codes: 0 fine (status: all up), 1 status: some agent stale/down, 2 usage or config error
(one line on stderr). New subcommands are `Command`s added to `COMMANDS`: a name, a help line, a
function adding its options, and a function running it.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from console import __version__
from console.batch import cli as batch_cli
from console.core.config import AgentSpec, FleetConfigError, resolve_fleet, resolve_prometheus
from console.jobs import cli as jobs_cli
from console.models import cli as models_cli
from console.pipelines import cli as pipelines_cli
from console.rollouts import cli as rollouts_cli
from console.serving import async_cli

EXIT_OK = 0
EXIT_USAGE = 2


class UsageError(Exception):
    """A usage or configuration problem: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; scripts and humans both want one line.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class Command:
    """A subcommand: `configure` adds its options, `run` returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- shared options


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.2 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.2 and 3600 seconds")
    return seconds


def _add_fleet_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On subcommands the defaults are SUPPRESSed so `watchkeeper --agents X status` keeps X
    # (argparse would otherwise overwrite it with the subparser's default None).
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--agents",
        metavar="URL,...",
        default=default,
        help="comma-separated agent addresses (http://, https://, unix:///path); token from $WATCHKEEPER_TOKEN",
    )
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        default=default,
        help="TOML fleet file ([[agent]] name, url, token or token_env); default $WATCHKEEPER_FLEET",
    )


def _add_prometheus_option(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        default=argparse.SUPPRESS if suppress else None,
        help="read the fleet table from this Prometheus (PromQL); agents are asked only on drill-down and"
        " actions (fleet-file key: prometheus)",
    )


def _prometheus(args: argparse.Namespace) -> tuple[str | None, list[AgentSpec]]:
    """The Prometheus address (flag or fleet file) and the fleet file's agents; (None, []) without one."""
    try:
        url, specs = resolve_prometheus(getattr(args, "prometheus", None), getattr(args, "fleet", None))
    except FleetConfigError as exc:
        raise UsageError(str(exc)) from None
    if url is not None and getattr(args, "agents", None):
        raise UsageError("--agents and --prometheus: give one (with --prometheus, name agents in --fleet)")
    return url, specs


def _add_tui_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    parser.add_argument(
        "--readonly",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="disable every action that changes an agent",
    )
    parser.add_argument(
        "--refresh",
        type=_positive_seconds,
        metavar="S",
        default=argparse.SUPPRESS if suppress else 2.0,
        help="the longest a row waits for fresh data, in seconds (default 2)",
    )
    parser.add_argument(
        "--theme",
        metavar="NAME",
        default=argparse.SUPPRESS if suppress else None,
        help="Textual theme, e.g. textual-dark, nord; ansi-dark/ansi-light use the terminal's palette",
    )
    parser.add_argument(
        "--ansi",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="use the terminal's own palette (same as --theme ansi-dark)",
    )


def _specs(args: argparse.Namespace) -> list[AgentSpec]:
    try:
        specs = resolve_fleet(getattr(args, "agents", None), getattr(args, "fleet", None))
    except FleetConfigError as exc:
        raise UsageError(str(exc)) from None
    from console.core.limits import fit_open_files

    # Raised to the hard limit before the first connection; a fleet that still can't fit is refused
    # here, in one line, rather than dying mid-poll with "Too many open files".
    refusal = fit_open_files(len(specs))
    if refusal is not None:
        raise UsageError(refusal)
    return specs


def _theme(args: argparse.Namespace) -> str | None:
    from textual.theme import BUILTIN_THEMES

    theme = "ansi-dark" if getattr(args, "ansi", False) else getattr(args, "theme", None)
    if theme is not None and theme not in BUILTIN_THEMES:
        raise UsageError(f"unknown theme {theme!r} (choose from {', '.join(sorted(BUILTIN_THEMES))})")
    return theme


# --------------------------------------------------------------------------- commands


# Young-generation and older-generation thresholds of the cyclic collector (Python's are 700, 10, 10).
GC_THRESHOLDS = (5_000, 20, 100)


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full passes short and rare in the TUI.

    A full collection walks every tracked object while holding the GIL, so it freezes the screen
    and the poller alike. What start-up made (imported modules, ~150k objects) lives as long as the
    process: it leaves the collector's sight. A poll's answers live one refresh interval (pydantic
    models, ~100 objects per agent), long enough to reach the oldest generation, so with Python's
    thresholds a 1,000-agent console ran a full pass every second or two (measured: 100-400 ms
    each, more on a loaded machine); these thresholds make it one every few tens of seconds. Cycles
    are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_tui(args: argparse.Namespace, specs: Sequence[AgentSpec] | None = None) -> int:
    """Open the fleet console on the given (or configured) agents."""
    from console.app import WatchkeeperApp
    from console.core.audit_heads import HeadStore
    from console.core.poll_thread import ThreadedSource
    from console.pipelines.client import PipelinesPoller
    from console.rollouts.client import RolloutsPoller

    theme = _theme(args)
    source: Any  # a FleetSource on its own thread: the agents' poller, or Prometheus
    prometheus, file_specs = _prometheus(args) if specs is None else (None, [])
    if prometheus is not None:
        from console.prometheus.source import PrometheusSource

        # The table from PromQL; drill-down and actions through a RolloutsPoller over the agents found.
        # On its own thread too: parsing a 1,000-agent fleet's answers is CPU the screen must not wait on.
        heads = HeadStore()
        source = ThreadedSource(
            PrometheusSource(prometheus, file_specs, agents=lambda s: RolloutsPoller(s, audit_heads=heads))
        )
    else:
        specs = specs if specs is not None else _specs(args)
        # Remembers each agent's audit head; serving status and audit checks spread over the first 30 s;
        # polling on its own thread and loop, so a big fleet's poll never freezes the screen.
        poller = PipelinesPoller(specs, audit_heads=HeadStore(), first_spread_s=30.0)
        source = ThreadedSource(poller)
    app = WatchkeeperApp(source, refresh_s=args.refresh, readonly=args.readonly, theme=theme)
    settle_garbage_collector()
    rc = app.run()
    return app.return_code if app.return_code is not None else (rc or EXIT_OK)


def _configure_status(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p, suppress=True)
    _add_prometheus_option(p, suppress=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_status(args: argparse.Namespace) -> int:
    prometheus, file_specs = _prometheus(args)
    if prometheus is not None:
        from console.prometheus.client import PrometheusError
        from console.prometheus.status_cli import run_status as run_prometheus_status

        try:
            return run_prometheus_status(prometheus, file_specs, as_json=args.json, out=sys.stdout)
        except PrometheusError as exc:
            raise UsageError(str(exc)) from None
    from console.fleet.status_cli import run_status

    return run_status(_specs(args), as_json=args.json, out=sys.stdout)


def _configure_alerts(p: argparse.ArgumentParser) -> None:
    from console.monitoring.alert_rows import STATES

    _add_fleet_options(p, suppress=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--state", choices=STATES, help="only alerts in this state")


def _run_alerts(args: argparse.Namespace) -> int:
    from console.monitoring.alerts_cli import run_alerts

    return run_alerts(_specs(args), state=args.state, as_json=args.json, out=sys.stdout, err=sys.stderr)


def _configure_demo(p: argparse.ArgumentParser) -> None:
    _add_tui_options(p, suppress=True)
    p.add_argument("--data-dir", metavar="DIR", help="where the demo agents keep their data (default ./.demo)")
    p.add_argument(
        "--agent-command",
        metavar="CMD",
        help="command that starts an agent (default: this Python's watchkeeper agent)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from console.core.audit_heads import STATE_ENV
    from console.demo.fleet import DemoError, DemoFleet, demo_dir, exit_on_signals, parse_agent_command

    theme = _theme(args)  # validate before starting anything
    fleet = DemoFleet(demo_dir(args.data_dir), agent_command=parse_agent_command(args.agent_command))
    # The demo's agents are new each time their dir is: their audit heads are remembered beside them, not
    # in the user's state, where a re-created demo would read as a log that started over.
    os.environ.setdefault(STATE_ENV, str(fleet.base_dir.resolve() / "console-state"))
    # exit_on_signals spans the whole run: the TUI swaps in its own handlers while it runs and
    # puts these back when it stops, so a SIGTERM during start-up or clean-up also cleans up.
    with exit_on_signals(), fleet:
        try:
            fleet.claim()  # refused before anything is said or started
            print(f"watchkeeper demo: starting {len(fleet.plan)} agents in {fleet.base_dir} …", file=sys.stderr)
            specs = fleet.start()
        except DemoError as exc:
            raise UsageError(f"demo: {exc}") from None
        print(
            f"watchkeeper demo: attach another console or the CLI with: watchkeeper --fleet {fleet.fleet_file}"
            f"  (e.g. watchkeeper status --fleet {fleet.fleet_file})",
            file=sys.stderr,
        )
        args.theme = theme
        args.ansi = False
        traffic = _demo_traffic(fleet)
        jobs = _demo_jobs(fleet)
        try:
            return run_tui(args, specs)
        finally:
            if traffic is not None:
                traffic.stop()
            if jobs is not None:
                jobs.stop()  # cancels its jobs while the agents still run: jobs outlive their agent


def _demo_traffic(fleet):
    """Serve the sample model on the first demo agent and replay flights at it (if the data is here)."""
    from console.demo.traffic import DemoTraffic

    agent = fleet.agents[0]
    if agent.token is None:
        return None
    traffic = DemoTraffic(agent.http_url, agent.token, state_dir=agent.data_dir)
    if not traffic.available():
        print("watchkeeper demo: sample_data/flights not found; no model traffic", file=sys.stderr)
        return None
    try:
        traffic.setup()
    except Exception as exc:  # the fleet view is still worth showing
        print(f"watchkeeper demo: could not set up model serving: {exc}", file=sys.stderr)
        return None
    traffic.start()
    return traffic


def _demo_jobs(fleet):
    """Run the demo's jobs (a training run, a failing validation, a greedy job at its memory limit, one
    that outgrows it) on the first demo agent, if it runs jobs."""
    from console.demo.jobs import DemoJobs

    agent = fleet.agents[0]
    if agent.token is None:
        return None
    jobs = DemoJobs(agent.http_url, agent.token, state_dir=agent.data_dir)
    if not jobs.available():
        print("watchkeeper demo: the agent runs no jobs; no demo jobs", file=sys.stderr)
        return None
    jobs.start()
    return jobs


def _configure_timeline(p: argparse.ArgumentParser) -> None:
    from console.timeline.cli import configure

    configure(p)


def _run_timeline(args: argparse.Namespace) -> int:
    from console.timeline.cli import run

    return run(args)


def _configure_loadtest(p: argparse.ArgumentParser) -> None:
    from console.serving.loadtest.options import configure

    configure(p)


def _run_loadtest(args: argparse.Namespace) -> int:
    from console.serving.loadtest.run import main_from_args

    return main_from_args(args)


COMMANDS: tuple[Command, ...] = (
    Command(
        "status",
        "print the fleet table without the TUI (exit 1 unless all agents are up)",
        _configure_status,
        _run_status,
    ),
    Command(
        "alerts",
        "list the alerts of every agent, firing first (exit 1 if some agent could not be read)",
        _configure_alerts,
        _run_alerts,
    ),
    Command("demo", "start three local agents and open the console on them", _configure_demo, _run_demo),
    Command(
        "loadtest",
        "drive an endpoint's predict route (bounded) and report latency, status codes, fallbacks, agent CPU",
        _configure_loadtest,
        _run_loadtest,
    ),
    Command("models", models_cli.HELP, models_cli.configure, models_cli.run),
    Command("jobs", jobs_cli.HELP, jobs_cli.configure, jobs_cli.run),
    Command("batch", batch_cli.HELP, batch_cli.configure, batch_cli.run),
    Command("quotas", jobs_cli.QUOTAS_HELP, jobs_cli.configure_quotas, jobs_cli.run_quotas),
    Command(
        "timeline",
        "one endpoint's incident timeline across the fleet: changes, who made them, signals, series (--markdown)",
        _configure_timeline,
        _run_timeline,
    ),
    Command("pipelines", pipelines_cli.HELP, pipelines_cli.configure, pipelines_cli.run),
    Command("async", async_cli.HELP, async_cli.configure, async_cli.run),
    *(Command(*spec) for spec in rollouts_cli.COMMANDS),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (top level opens the TUI; subcommands from `COMMANDS`)."""
    parser = _Parser(prog="watchkeeper", description="Watchkeeper fleet console for ML hosts.")
    parser.add_argument("--version", action="version", version=f"watchkeeper {__version__}")
    _add_fleet_options(parser, suppress=False)
    _add_prometheus_option(parser, suppress=False)
    _add_tui_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(handler=command.run)
    parser.set_defaults(handler=run_tui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `watchkeeper`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"watchkeeper: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
