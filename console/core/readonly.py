"""Read-only mode: actions that change something on an agent are marked and refused.

`--readonly` works like k9s': mutating keys disappear from the footer and are disabled, and a
mutating action invoked any other way (command palette, code) refuses to run. Later features
mark their actions with `@mutating`; nothing else needs to know about read-only mode.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def mutating(action: F) -> F:
    """Mark an `action_*` method as mutating: disabled and refused when `app.readonly` is set."""

    @functools.wraps(action)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.app, "readonly", False):
            self.app.notify(
                f"read-only mode: {action.__name__.removeprefix('action_')} is disabled", severity="warning"
            )
            return None
        result = action(self, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    wrapper.mutating = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def is_mutating(node: object, action: str) -> bool:
    """Whether `node.action_<action>` is marked `@mutating`."""
    return bool(getattr(getattr(node, f"action_{action}", None), "mutating", False))


def allowed(node: Any, action: str) -> bool | None:
    """`check_action` result: False (hidden, disabled) for mutating actions in read-only mode."""
    return not (getattr(node.app, "readonly", False) and is_mutating(node, action))
