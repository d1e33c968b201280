"""A DataTable whose rows are synchronised by key: cells update in place, never a rebuild.

Rebuilding a DataTable every refresh loses the cursor and scroll position and gets slow at a few
hundred rows; here each refresh removes rows that went away, adds new ones, updates only cells
whose content changed, and reorders with `sort()` only when the order changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

from rich.text import Text
from textual import events
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowKey

from console.core.filtering import RowFilter
from console.core.rows import Column

Cell = str | Text


class RowModel(Protocol):
    """What a FilteredRowsTable needs of a row: its table key and the text the `/` filter searches."""

    @property
    def key(self) -> str: ...

    def matches_text(self) -> str: ...


R = TypeVar("R", bound=RowModel)


def column_cell(text: str, column: Column, style: str = "") -> Text:
    """A cell of `column`, styled; numeric columns right-aligned."""
    return Text(text, style=style, justify="right" if column.numeric else "left")


class _KeyedText(Text):
    """The first cell of each row, carrying its row key so `sort()` can order rows by key."""

    row_key: str = ""


def _keyed(cell: Cell, key: str) -> _KeyedText:
    text = Text(cell) if isinstance(cell, str) else cell
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


class KeyedTable(DataTable):
    """DataTable with `sync(rows)`; the cursor follows its row (not its index) across reorders."""

    def __init__(self, columns: Sequence[tuple[str, str | Text]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._column_spec = tuple(columns)
        self._cells: dict[str, tuple[Text, ...]] = {}
        self.sync_count = 0
        self.last_sync_changes = 0

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
        return [row.key.value for row in self.ordered_rows if row.key.value is not None]

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
        keep_cursor = self.cursor_key
        changes = 0
        columns = [key for key, _ in self._column_spec]
        with self.app.batch_update():
            for key in [k for k in self._cells if k not in wanted]:
                self.remove_row(key)
                del self._cells[key]
                changes += 1
            for key, cells in rows:
                new = (_keyed(cells[0], key), *(Text(c) if isinstance(c, str) else c for c in cells[1:]))
                old = self._cells.get(key)
                if old is None:
                    self.add_row(*new, key=key)
                    changes += len(new)
                else:
                    for column, before, after in zip(columns, old, new, strict=True):
                        if before != after or _style_of(before) != _style_of(after):
                            # Only grow columns: shrinking re-measures the whole column (O(rows)
                            # per changed cell), too slow for a big fleet refreshed every 2 s.
                            wider = after.cell_len > self.columns[ColumnKey(column)].content_width
                            self.update_cell(key, column, after, update_width=wider)
                            changes += 1
                self._cells[key] = new
            order = [key for key, _ in rows]
            if self.row_keys != order:
                rank = {key: i for i, key in enumerate(order)}
                self.sort(columns[0], key=lambda cell: rank[cell.row_key])
            if keep_cursor is not None and keep_cursor in self._cells:
                index = self.get_row_index(RowKey(keep_cursor))
                if index != self.cursor_row:
                    self.move_cursor(row=index, animate=False, scroll=False)
        self.sync_count += 1
        self.last_sync_changes = changes
        return changes


def _style_of(cell: Text) -> object:
    # Text equality ignores the base style; a cell that only changes colour must still update.
    return cell.style


class FilteredRowsTable(KeyedTable, Generic[R]):
    """A KeyedTable showing row models that pass a reactive `row_filter`.

    Subclasses give `cells(row)` and may reorder in `order(rows)`; every change of data or view
    state goes through one `render_rows`, which updates cells in place by key.
    """

    row_filter: reactive[RowFilter] = reactive(RowFilter, always_update=True)
    COLUMNS: ClassVar[Sequence[Column]] = ()  # the columns, unless the constructor is given others

    def __init__(self, columns: Sequence[tuple[str, str | Text]] | None = None, **kwargs: object) -> None:
        if columns is None:
            columns = [(c.key, c.label) for c in self.COLUMNS]
        super().__init__(columns, cursor_type="row", zebra_stripes=True, **kwargs)
        self._rows: list[R] = []

    def cells(self, row: R) -> Sequence[Cell]:
        raise NotImplementedError

    def order(self, rows: list[R]) -> list[R]:
        """Display order of the filtered rows (default: as given)."""
        return rows

    @property
    def all_rows(self) -> list[R]:
        """Every row of the last `show`, filtered or not."""
        return list(self._rows)

    @property
    def rows_shown(self) -> list[R]:
        """The rows that pass the filter, in display order."""
        return self.order([r for r in self._rows if self.row_filter.matches(r.matches_text())])

    @property
    def cursor_row_data(self) -> R | None:
        """The row under the cursor."""
        key = self.cursor_key
        return next((r for r in self._rows if r.key == key), None) if key is not None else None

    def show(self, rows: Sequence[R]) -> None:
        """Display a new poll's rows."""
        self._rows = list(rows)
        self.render_rows()

    def render_rows(self) -> None:
        if not self.is_mounted:
            return
        self.sync([(r.key, self.cells(r)) for r in self.rows_shown])

    def watch_row_filter(self) -> None:
        self.render_rows()
