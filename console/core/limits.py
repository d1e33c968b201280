"""The open files limit: raised to the hard limit at start, and a clear refusal when a fleet can't fit.

Each agent keeps one keep-alive connection for its summary poll (`console.core.fastget`) and, for a
few seconds after a request asked beside it, one of httpx's (`console.core.client.AGENT_LIMITS`); a
poll adds at most `MAX_IN_FLIGHT` more; a default soft limit of 1,024 would otherwise kill the console mid-poll
with "Too many open files" somewhere around a few hundred agents. No Textual here.
"""

from __future__ import annotations

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX: nothing to raise or check
    resource = None  # type: ignore[assignment]

from console.core.poller import MAX_IN_FLIGHT

# Files the console holds whatever the fleet: the terminal, its own modules, logs, the event loop's pipes.
BASE_FDS = 64


def fds_needed(agents: int, in_flight: int = MAX_IN_FLIGHT) -> int:
    """File descriptors a console polling `agents` agents needs: two connections each (the plain GET
    connection of the summary poll, and httpx's while a feed or the serving status is asked beside it),
    the requests in flight on top, and a base."""
    return 2 * agents + in_flight + BASE_FDS


def fit_open_files(agents: int, in_flight: int = MAX_IN_FLIGHT) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; a one-line refusal when `agents` still can't fit, else None."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    elif hard == resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY:
        # An unlimited hard limit: raise as far as the fleet needs (with room), not to infinity.
        wanted = max(soft, 2 * fds_needed(agents, in_flight))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    needed = fds_needed(agents, in_flight)
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (
            f"{agents} agents need about {needed} open files but this process may open only {soft} "
            f"(hard limit {'unlimited' if hard == resource.RLIM_INFINITY else hard}): raise it "
            f"(`ulimit -n {needed}`, or LimitNOFILE= in a systemd unit) or split the fleet"
        )
    return None
