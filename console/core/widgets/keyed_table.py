"""A DataTable whose rows are synchronised by key: cells update in place, never a rebuild.

Rebuilding a DataTable every refresh loses the cursor and scroll position and gets slow at a few
hundred rows; here each refresh removes rows that went away, adds new ones, updates only cells
whose content changed, and reorders only when the order changed.

`FilteredRowsTable.show` is incremental as well (a fleet of 1,000 agents refreshes in small batches,
issue 12): a row model equal to the one shown is skipped without building its cells; the filter is
re-run on changed rows only, and the display order is recomputed only when a row appeared, left,
entered or left the filter, or changed its `order_key` (its sort value). Cells are compared as plain
`Styled` (text, style, justify) tuples and turned into Rich `Text` only when they differ: building a
`Text` costs ~8 µs (it strips control codes), 9,000 of them were most of a 1,000-row refresh.

A burst (the first poll, a Prometheus poll that moves every row, a new sort over 1,000 rows) is drawn
in slices (updates of `SLICE_ROWS` rows for up to `SLICE_BUDGET_S` per turn of the event loop), so the
screen keeps drawing and reading keys meanwhile (one 1,000-row update froze it for 100-500 ms); the
order is settled with the last slice, and `FilteredRowsTable.Settled` then tells the screen (its status
line counts the rows shown).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import islice
from typing import ClassVar, Generic, NamedTuple, Protocol, TypeVar

from rich.text import Text
from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowKey

from console.core.filtering import RowFilter
from console.core.rows import Column


class Styled(NamedTuple):
    """A cell as plain values, cheap to build and compare; drawn as a Rich `Text`."""

    text: str
    style: str = ""
    justify: str = "left"


Cell = str | Text | Styled


class RowModel(Protocol):
    """What a FilteredRowsTable needs of a row: its table key and the text the `/` filter searches."""

    @property
    def key(self) -> str: ...

    def matches_text(self) -> str: ...


R = TypeVar("R", bound=RowModel)
# When many rows changed at once: rows per update (~0.1-0.2 ms each), the time one turn of the event loop
# may spend on them (well under the 100 ms a person notices, with the repaint after it), and the pause
# between two turns.
SLICE_ROWS = 150
SLICE_BUDGET_S = 0.03
SLICE_GAP_S = 0.005


def column_cell(text: str, column: Column, style: str = "") -> Styled:
    """A cell of `column`, styled; numeric columns right-aligned."""
    return Styled(text, style, "right" if column.numeric else "left")


def _plain(cell: Cell) -> Styled | Text:
    # What is compared between refreshes: a str is a Styled without style (no markup, as before).
    return Styled(cell) if isinstance(cell, str) else cell


def _text(cell: Styled | Text, key: str | None = None) -> Text:
    text = Text(cell.text, style=cell.style, justify=cell.justify) if isinstance(cell, Styled) else cell  # type: ignore[arg-type]
    if key is None:
        return text
    keyed = _KeyedText(
        text.plain,
        style=text.style,
        justify=text.justify,
        overflow=text.overflow,
        no_wrap=text.no_wrap,
        end="",
        spans=list(text.spans),
    )
    keyed.row_key = key
    return keyed


def _same(before: Styled | Text, after: Styled | Text) -> bool:
    if type(before) is not type(after):
        return False
    if isinstance(before, Styled):
        return before == after
    # Text equality ignores the base style; a cell that only changes colour must still update.
    return before == after and before.style == after.style  # type: ignore[union-attr]


class _KeyedText(Text):
    """The first cell of each row, carrying its row key so `sort()` can order rows by key."""

    row_key: str = ""


class KeyedTable(DataTable):
    """DataTable with `sync(rows)` / `apply(...)`; the cursor follows its row (not its index) across reorders."""

    def __init__(self, columns: Sequence[tuple[str, str | Text]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        # DataTable caches rendered cells, rows and lines keyed by its update count, room for 10,000
        # cells: a table updated several times a second fills them with dead entries, at 1,000 rows
        # most of the objects a full garbage collection walks (pauses of 100-400 ms on the UI thread).
        # What one screen shows (~100 rows of ~10 cells) fits these.
        for cache, size in ((self._cell_render_cache, 2000), (self._row_render_cache, 300), (self._line_cache, 300)):
            cache.maxsize = size
        self._column_spec = tuple(columns)
        self._column_keys = [key for key, _ in self._column_spec]
        self._cells: dict[str, tuple[Styled | Text, ...]] = {}
        self._order: list[str] = []
        self.sync_count = 0
        self.last_sync_changes = 0
        self.last_sync_reordered = False

    def on_mount(self) -> None:
        for key, label in self._column_spec:
            self.add_column(label, key=key)

    async def _on_idle(self, event: events.Idle) -> None:
        # DataTable measures column widths when idle but caches rendered cells by update count,
        # not width: a row drawn before the widths settled (rows added while the screen mounts)
        # stays clipped. Drop the render caches when the widths change. DataTable's own handler
        # runs again after this one and then finds nothing to do.
        before = [c.content_width for c in self.columns.values()]
        await DataTable._on_idle(self, event)
        if [c.content_width for c in self.columns.values()] != before:
            self._clear_caches()

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    def sync(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> int:
        """Make the table show exactly `rows` (key, cells) in this order; return cells changed."""
        wanted = {key for key, _ in rows}
        return self.apply([k for k in self._cells if k not in wanted], dict(rows), [key for key, _ in rows])

    def apply(self, removed: Iterable[str], cells: Mapping[str, Sequence[Cell]], order: Sequence[str] | None) -> int:
        """Remove the rows `removed`, add or update the rows in `cells` (only the cells whose content
        changed), then show the rows in `order` (None: the order is unchanged; new rows go last).
        Returns how many cells changed."""
        keep_cursor = self.cursor_key
        changes = 0
        quiet: set[str] = set()  # rows whose cells changed without a refresh yet
        changed_cells: set[tuple[str, str]] = set()  # (row, column) of those cells
        columns = self._column_keys
        with self.app.batch_update():
            gone = set()
            for key in removed:
                if key in self._cells:
                    self.remove_row(key)
                    del self._cells[key]
                    gone.add(key)
                    changes += 1
            if gone:
                self._order = [k for k in self._order if k not in gone]
            for key, row in cells.items():
                new = tuple(_plain(c) for c in row)
                old = self._cells.get(key)
                if old is None:
                    self.add_row(_text(new[0], key), *(_text(c) for c in new[1:]), key=key)
                    self._order.append(key)
                    changes += len(new)
                else:
                    data = self._data[RowKey(key)]
                    for i, (column, before, after) in enumerate(zip(columns, old, new, strict=True)):
                        if _same(before, after):
                            continue
                        text = _text(after, key if i == 0 else None)
                        # Only grow columns: shrinking re-measures the whole column (O(rows) per
                        # changed cell), too slow for a big fleet refreshed every 2 s.
                        column_key = ColumnKey(column)
                        if text.cell_len > self.columns[column_key].content_width:
                            self.update_cell(key, column, text, update_width=True)
                        else:
                            # What `update_cell` does, less its refresh per cell (~25 µs each, the
                            # largest cost of a 1,000-row refresh): one refresh below for them all.
                            data[column_key] = text
                            quiet.add(key)
                            changed_cells.add((key, column))
                        changes += 1
                self._cells[key] = new
            if quiet:
                # Only the drawings of the cells that changed go (and of the rows and lines they sit
                # on): the visible cells that did not change are drawn from DataTable's caches. Bumping
                # its update count instead re-rendered every visible cell through Rich on each batch
                # (~450 cells, 50-200 ms of frozen screen at 1,000 rows); a change off screen redraws
                # nothing now and is drawn from the new values when scrolled to.
                self._forget_rows(quiet, changed_cells)
                if self._on_screen(quiet):
                    self.refresh()
            self.last_sync_reordered = False
            if order is not None and list(order) != self._order:
                rank = {key: i for i, key in enumerate(order)}
                self.sort(columns[0], key=lambda cell: rank[cell.row_key])
                self._order = list(order)
                self.last_sync_reordered = True
            if keep_cursor is not None and keep_cursor in self._cells:
                index = self.get_row_index(RowKey(keep_cursor))
                if index != self.cursor_row:
                    self.move_cursor(row=index, animate=False, scroll=False)
        self.sync_count += 1
        self.last_sync_changes = changes
        return changes

    def _forget_rows(self, keys: set[str], cells: set[tuple[str, str]] | None = None) -> None:
        """Drop DataTable's cached drawings of the rows `keys` (of their `cells` (row, column) only, when
        given) and of the lines they sit on, leaving the rest: what did not change stays drawn."""
        row_keys = {RowKey(k) for k in keys}
        cell_keys = None if cells is None else {(RowKey(r), ColumnKey(c)) for r, c in cells}
        indexes = {self._row_locations.get(k) for k in row_keys} - {None}
        # A table line is its row's index below the header (rows here are one line high); a line
        # more either way costs one redraw and no mistake.
        lines = {i + d for i in indexes for d in (-1, 0, 1, 2)}  # type: ignore[operator]
        for cache, is_mine in (
            (
                self._cell_render_cache,
                (lambda key: key[0] in row_keys) if cell_keys is None else (lambda key: key[:2] in cell_keys),
            ),
            (self._row_render_cache, lambda key: key[0] in row_keys),
            (self._row_renderable_cache, lambda key: key[1] in indexes),
            (self._line_cache, lambda key: key[0] in lines),
        ):
            for key in [k for k in cache.keys() if is_mine(k)]:  # noqa: SIM118 - an LRUCache, not a dict
                cache.discard(key)

    def _on_screen(self, keys: Iterable[str]) -> bool:
        """Whether any of the rows `keys` is within the visible rows (with a row of margin)."""
        height = self.size.height
        if not height:
            return True
        top = int(self.scroll_offset.y)
        for key in keys:
            index = self._row_locations.get(RowKey(key))
            if index is not None and top - 1 <= index <= top + height:
                return True
        return False


class FilteredRowsTable(KeyedTable, Generic[R]):
    """A KeyedTable showing row models that pass a reactive `row_filter`.

    Subclasses give `cells(row)` and may reorder in `order(rows)` (then `order_key(row)` must change
    whenever a row's place may: the order is recomputed only then). `show` updates only what changed;
    a change of view state (filter, sort, marks) goes through `render_rows`, which redraws every row
    shown, still in place by key.
    """

    row_filter: reactive[RowFilter] = reactive(RowFilter, always_update=True)
    COLUMNS: ClassVar[Sequence[Column]] = ()  # the columns, unless the constructor is given others
    SLICE_ROWS: ClassVar[int] = SLICE_ROWS

    class Settled(Message):
        """The last slice of a burst was drawn: rows, order and filter are the newest `show`'s."""

        def __init__(self, table: FilteredRowsTable) -> None:
            super().__init__()
            self.table = table

    def __init__(self, columns: Sequence[tuple[str, str | Text]] | None = None, **kwargs: object) -> None:
        if columns is None:
            columns = [(c.key, c.label) for c in self.COLUMNS]
        super().__init__(columns, cursor_type="row", zebra_stripes=True, **kwargs)
        self._rows: dict[str, R] = {}
        self._passing: set[str] = set()
        self._shown_rows: list[R] = []
        self._drawn = False  # whether the table shows `_rows` (rows given before mounting are drawn on the next show)
        # A burst being drawn in slices: the keys of changed rows not drawn yet (drawn from `_rows` as
        # it is then, so a newer `show` meanwhile is what gets drawn) and whether to reorder at the end.
        self._pending: dict[str, None] = {}
        self._pending_reorder = False
        self._slice_armed = False

    def cells(self, row: R) -> Sequence[Cell]:
        raise NotImplementedError

    def order(self, rows: list[R]) -> list[R]:
        """Display order of the filtered rows (default: as given)."""
        return rows

    def order_key(self, row: R) -> Hashable:
        """What a row's place in `order` depends on besides its key (default: the whole row, so any
        change re-orders; a sorted table gives its sort value)."""
        return row

    @property
    def all_rows(self) -> list[R]:
        """Every row of the last `show`, filtered or not."""
        return list(self._rows.values())

    @property
    def rows_shown(self) -> list[R]:
        """The rows that pass the filter, in display order."""
        return list(self._shown_rows)

    @property
    def cursor_row_data(self) -> R | None:
        """The row under the cursor."""
        key = self.cursor_key
        return self._rows.get(key) if key is not None else None

    def show(self, rows: Sequence[R]) -> None:
        """Display a new poll's rows, touching only the rows that changed."""
        old = self._rows
        self._rows = new = {r.key: r for r in rows}
        if not self.is_mounted:
            self._drawn = False
            return
        if not self._drawn or list(old) != list(new):  # rows came, went, or the given order changed: redraw the set
            fresh = not self._drawn
            self._render(changed=[r for r in new.values() if fresh or old.get(r.key) != r], reorder=True)
            self._drawn = True
            return
        changed = [r for k, r in new.items() if old[k] is not r and old[k] != r]
        reorder = False
        match = self.row_filter.matches
        for row in changed:
            passes = match(row.matches_text())
            moved = passes and self.order_key(old[row.key]) != self.order_key(row)
            reorder = reorder or moved or passes != (row.key in self._passing)
        self._render(changed=changed, reorder=reorder)

    def render_rows(self) -> None:
        """Redraw every row (after a change of view state: filter, sort, marks)."""
        if self.is_mounted:
            self._render(changed=list(self._rows.values()), reorder=True)
            self._drawn = True

    @property
    def settled(self) -> bool:
        """Whether every row given has been drawn (no burst is being drawn in slices)."""
        return not self._pending

    def _render(self, changed: list[R], reorder: bool) -> None:
        if not self._pending and len(changed) <= self.SLICE_ROWS:
            self._draw(changed, reorder)
            return
        # A burst: drawn SLICE_ROWS at a time, one slice now and the rest on later turns of the loop. A
        # whole fleet at once (Prometheus mode) starts on the next turn: the one that built its rows
        # plus a slice was a block of 60+ ms. (A small burst starts now: one repaint less.)
        self._pending.update(dict.fromkeys(r.key for r in changed))
        self._pending_reorder = self._pending_reorder or reorder
        if not self._slice_armed:
            if len(changed) > 3 * self.SLICE_ROWS:
                self._slice_armed = True
                self.call_later(self._draw_slice)
            else:
                self._draw_slice()

    def _draw_slice(self) -> None:
        # Chunks of SLICE_ROWS until SLICE_BUDGET_S is spent, then the loop's turn: as few slices (and
        # repaints between them) as a quiet machine allows, never one long block on a loaded one.
        self._slice_armed = False
        if not self.is_attached:
            return
        deadline = time.perf_counter() + SLICE_BUDGET_S
        rows = self._rows
        while self._pending:
            keys = list(islice(self._pending, self.SLICE_ROWS))
            for key in keys:
                del self._pending[key]
            last = not self._pending
            self._draw([rows[k] for k in keys if k in rows], reorder=last and self._pending_reorder)
            if last:
                self._pending_reorder = False
                self.post_message(self.Settled(self))
                return
            if time.perf_counter() >= deadline:
                break
        self._slice_armed = True
        self.set_timer(SLICE_GAP_S, self._draw_slice, name="table-slice")

    def _draw(self, changed: list[R], reorder: bool) -> None:
        match = self.row_filter.matches
        for row in changed:
            if match(row.matches_text()):
                self._passing.add(row.key)
            else:
                self._passing.discard(row.key)
        self._passing &= self._rows.keys()
        order: list[str] | None = None
        if reorder:
            self._shown_rows = self.order([r for k, r in self._rows.items() if k in self._passing])
            order = [r.key for r in self._shown_rows]
        else:
            rows = self._rows  # (rows that left are removed from the order by the burst's last slice)
            self._shown_rows = [rows[r.key] for r in self._shown_rows if r.key in rows]
        removed = [k for k in self._cells if k not in self._passing]
        cells = {r.key: self.cells(r) for r in changed if r.key in self._passing}
        if reorder:  # rows that (re-)entered the filter unchanged still need their cells
            cells.update({k: self.cells(self._rows[k]) for k in order or () if k not in self._cells and k not in cells})
        self.apply(removed, cells, order)

    def watch_row_filter(self) -> None:
        self.render_rows()
