"""Sending an operator's action (confirmed in a dialog) to one or more agents.

The requests run concurrently in an App-owned worker: leaving the screen must not cancel a request
the agent may already have applied. Each host's answer comes back as its own notification (failures
through the App's one error sink), with a total when there were several hosts; then the App polls
again so the tables show the result. Read-only mode refuses here too, as the last line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from console.core.errors import why
from console.core.messages import ConsoleError

if TYPE_CHECKING:
    from console.app import WatchkeeperApp


@dataclass(frozen=True)
class HostCall:
    """One request to one agent, and how its notifications name it."""

    source: str  # the error sink's key for a failure, e.g. "alert gpu-01/a1f0"
    what: str  # "flights on gpu-01"
    send: Callable[[], Awaitable[Any]]


def run_on_hosts(
    app: WatchkeeperApp,
    kind: str,
    action: str,
    done: str,
    calls: Sequence[HostCall],
    answered: Callable[[Any], str] = lambda _: "",
) -> None:
    """Send `calls` in a worker of group '`kind`-action'; `done` ("acknowledged") names the success in
    each notification, after which `answered(the agent's answer)` may add more; `action` names the total."""

    async def one(call: HostCall) -> bool:
        try:
            out = await call.send()
        except Exception as exc:
            app.post_message(ConsoleError(call.source, f"{call.what}: not {done}: {why(exc)}"))
            return False
        # Not deduplicated like errors: every action the operator takes deserves its answer.
        app.notify(f"{call.what}: {done}{answered(out)}", severity="information", timeout=8)
        return True

    async def act() -> None:
        if app.readonly:  # the keys and the dialogs refuse already; this is the last line
            app.post_message(ConsoleError("readonly", f"read-only mode: {kind} action refused", severity="warning"))
            return
        results = await asyncio.gather(*(one(c) for c in calls))
        if len(calls) > 1:
            ok = sum(results)
            severity = "information" if ok == len(calls) else "warning"
            app.notify(f"{action}: {ok}/{len(calls)} hosts {done}", severity=severity, timeout=8)
        app.request_poll()

    app.run_worker(act(), group=f"{kind}-action", exit_on_error=False)
