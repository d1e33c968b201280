"""The `/` filter: a regex (smart case), `!` in front inverts it, as in k9s."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RowFilter:
    """A compiled filter; the empty filter matches everything."""

    text: str = ""
    pattern: re.Pattern[str] | None = None
    invert: bool = False

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        """Compile `text`; raises `re.error` for an invalid pattern.

        Matching is case-insensitive unless the pattern has an upper-case letter (smart case).
        A leading `!` inverts; `\\!` matches a literal `!`.
        """
        invert = text.startswith("!")
        body = text[1:] if invert else text
        if body.startswith("\\!"):
            body = body[1:]
        if not body:
            return cls(text=text, pattern=None, invert=False)
        flags = 0 if any(c.isupper() for c in body) else re.IGNORECASE
        return cls(text=text, pattern=re.compile(body, flags), invert=invert)

    @property
    def active(self) -> bool:
        return self.pattern is not None

    def matches(self, haystack: str) -> bool:
        """Whether a row whose searchable text is `haystack` is shown."""
        if self.pattern is None:
            return True
        return (self.pattern.search(haystack) is not None) != self.invert
