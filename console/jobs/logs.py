"""Reading a job's log through the API: `LogTail` keeps the last lines of one stream, `read_on` asks for
what was written since (the CLI's `logs -f` and the jobs screen's log pane). No Textual.

The API reads forward from an offset (`next_offset` says where to ask next) and says `eof` once the
job is over and everything written has been read. A reader that starts at 0 on a long log asks on in
chunks, at most `max_requests` per call, so one refresh never turns into a long stream of requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.schemas import JobLog

TAIL_LINES = 200

Fetch = Callable[[int], Awaitable[JobLog]]  # offset -> the log from there


@dataclass
class LogTail:
    """The last `keep` lines of one stream of one job, and where to read on."""

    job_id: str
    stream: str = "stdout"
    keep: int = TAIL_LINES
    offset: int = 0
    eof: bool = False
    dropped_bytes: int = 0  # cut by the agent's size cap before what we read
    lines: deque[str] = field(default_factory=deque)
    partial: str = ""  # the last line, not ended by a newline yet

    def __post_init__(self) -> None:
        self.lines = deque(self.lines, maxlen=self.keep)

    def add(self, log: JobLog) -> str:
        """Take in one answer; returns its text (what a follower prints)."""
        self.dropped_bytes = max(self.dropped_bytes, log.dropped_bytes)
        self.offset = max(self.offset, log.next_offset)
        self.eof = log.eof
        if log.text:
            parts = (self.partial + log.text).split("\n")
            self.partial = parts.pop()
            self.lines.extend(parts)
        return log.text

    def text(self, last: int | None = None) -> str:
        """The last `last` (default all kept) lines, the unfinished one included."""
        lines = (list(self.lines) + ([self.partial] if self.partial else []))[-self.keep :]
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)


async def read_on(tail: LogTail, fetch: Fetch, max_requests: int = 8) -> str:
    """Ask for what was written since `tail.offset` until caught up (or `max_requests` asked); the new text."""
    out: list[str] = []
    for _ in range(max_requests):
        before = tail.offset
        log = await fetch(tail.offset)
        out.append(tail.add(log))
        if log.eof or tail.offset <= before or not log.text:
            break
    return "".join(out)
