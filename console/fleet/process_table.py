"""Small keyed tables of processes (top by CPU, top by RSS, processes on GPUs)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from agent.schemas import GpuSample, ProcessSample
from console.core.rows import MISSING, fmt_bytes
from console.core.widgets.keyed_table import Cell, KeyedTable

_PROC_COLUMNS = (("pid", "PID"), ("name", "NAME"), ("user", "USER"), ("cpu", "CPU%"), ("rss", "RSS"))
_GPU_COLUMNS = (("pid", "PID"), ("gpu", "GPU"), ("name", "NAME"), ("mem", "GPU MEM"))


def _right(text: str) -> Text:
    return Text(text, justify="right")


class ProcessTable(KeyedTable):
    """Processes keyed by pid, in the order the agent ranked them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(_PROC_COLUMNS, cursor_type="row", **kwargs)

    def show(self, processes: Sequence[ProcessSample]) -> None:
        """Display the agent's process list (already sorted by the agent)."""
        rows: list[tuple[str, Sequence[Cell]]] = []
        for p in processes:
            rows.append(
                (
                    str(p.pid),
                    (
                        _right(str(p.pid)),
                        p.name,
                        p.username or MISSING,
                        _right(f"{p.cpu_percent:.1f}"),
                        _right(fmt_bytes(p.rss_bytes)),
                    ),
                )
            )
        self.sync(rows)


class GpuProcessTable(KeyedTable):
    """Processes using GPUs, keyed by (gpu, pid), biggest memory user first."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(_GPU_COLUMNS, cursor_type="row", **kwargs)

    def show(self, gpus: Sequence[GpuSample]) -> None:
        """Display every GPU's processes."""
        entries = [(g.index, p) for g in gpus for p in g.processes]
        entries.sort(key=lambda e: (-(e[1].used_memory_bytes or 0), e[0], e[1].pid))
        self.sync(
            [
                (
                    f"{gpu}:{p.pid}",
                    (
                        _right(str(p.pid)),
                        _right(str(gpu)),
                        p.name or MISSING,
                        _right(fmt_bytes(p.used_memory_bytes)),
                    ),
                )
                for gpu, p in entries
            ]
        )
