"""The fleet table updates only what changed (issue 12): Pilot tests against a scripted source.

A refresh of a big fleet used to build every row's cells and re-sort every row; these tests count
what a refresh touches (cells built, cells changed, whether the rows were reordered), not timings.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

from console.app import WatchkeeperApp
from console.fleet.fleet_screen import FleetScreen
from console.fleet.fleet_table import FleetTable
from tests.console.wk_fakes import FakeSource, down, fleet, up
from tests.console.wk_pilot import until

N = 60


def many() -> FakeSource:
    # CPU 1.0, 2.0 … so a CPU sort is the fleet order.
    return FakeSource(fleet(*(up(f"agent-{i:03d}", i, cpu=float(i + 1)) for i in range(N))))


async def ready(app: WatchkeeperApp, pilot, rows: int = N) -> FleetTable:
    await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.screen.table.row_count == rows)
    await pilot.pause()
    return app.screen.query_one(FleetTable)


def counting_cells(t: FleetTable) -> list[str]:
    built: list[str] = []
    inner = t.cells

    def cells(row):  # type: ignore[no-untyped-def]
        built.append(row.key)
        return inner(row)

    t.cells = cells  # type: ignore[method-assign]
    return built


async def refresh(app: WatchkeeperApp, pilot, t: FleetTable, source: FakeSource, agents) -> None:
    source.status = fleet(*agents)
    syncs = t.sync_count
    app.action_refresh_now()
    await until(pilot, lambda: t.sync_count > syncs)


async def test_a_changed_value_updates_one_cell_and_builds_no_other_row() -> None:
    source = many()
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await ready(app, pilot)
        built = counting_cells(t)
        row_objects = {k: t.rows[k] for k in t.rows}
        agents = list(source.status.agents)
        agents[7] = up("agent-007", 7, cpu=55.5)
        await refresh(app, pilot, t, source, agents)
        assert t.get_cell("agent-007", "cpu").plain == "55.5"
        assert built == ["agent-007"]  # the 59 unchanged rows: no cells built at all
        assert t.last_sync_changes == 1 and not t.last_sync_reordered
        assert all(t.rows[k] is row_objects[k] for k in t.rows)

        # Nothing changed: nothing built, nothing touched.
        built.clear()
        await refresh(app, pilot, t, source, agents)
        assert built == [] and t.last_sync_changes == 0


async def test_sorted_rows_move_only_when_the_sort_value_changes() -> None:
    source = many()
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("C")  # CPU ascending: agent-000 (1.0) … agent-059 (60.0)
        assert t.row_keys == [f"agent-{i:03d}" for i in range(N)]
        t.move_cursor(row=t.get_row_index("agent-010"))

        # Memory is not the sort column: the cell changes, the order is kept without a reorder.
        agents = list(source.status.agents)
        agents[3] = up("agent-003", 3, cpu=4.0, mem=77.0)
        await refresh(app, pilot, t, source, agents)
        assert t.get_cell("agent-003", "mem").plain == "77.0"
        assert not t.last_sync_reordered

        # agent-003's CPU goes to the top of the range: it moves to the end, the others keep their order.
        agents[3] = up("agent-003", 3, cpu=99.0, mem=77.0)
        await refresh(app, pilot, t, source, agents)
        expected = [f"agent-{i:03d}" for i in range(N) if i != 3] + ["agent-003"]
        assert t.row_keys == expected and t.last_sync_reordered
        assert [t.get_row_at(i)[0].plain for i in (0, N - 1)] == ["agent-000", "agent-003"]  # drawn so too
        assert t.cursor_key == "agent-010"  # the cursor followed its row

        # Descending, then a down agent: still last in either direction.
        await pilot.press("C")
        agents[5] = down("agent-005", 5)
        await refresh(app, pilot, t, source, agents)
        assert t.row_keys[0] == "agent-003" and t.row_keys[-1] == "agent-005"
        assert t.row_keys[1:-1] == [f"agent-{i:03d}" for i in reversed(range(N)) if i not in (3, 5)]


async def test_agents_appearing_and_leaving_add_and_remove_only_their_rows() -> None:
    source = many()
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("C")
        built = counting_cells(t)
        kept = {k: t.rows[k] for k in t.rows}
        # The last two leave (so no other agent's place in the fleet moves), one joins.
        agents = [a for a in source.status.agents if a.name not in ("agent-058", "agent-059")]
        agents.append(up("agent-new", N, cpu=10.5))  # sorts between agent-009 (10.0) and agent-010
        await refresh(app, pilot, t, source, agents)
        assert "agent-058" not in t.row_keys and "agent-059" not in t.row_keys
        i = t.row_keys.index("agent-new")
        assert t.row_keys[i - 1 : i + 2] == ["agent-009", "agent-new", "agent-010"]
        assert built == ["agent-new"]
        assert all(t.rows[k] is kept[k] for k in t.rows if k != "agent-new")
        assert "59/59 shown" in str(app.screen.query_one("#fleet-status").render())


async def test_a_filter_follows_changes_of_the_rows_it_matches() -> None:
    source = many()
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 40)) as pilot:
        t = await ready(app, pilot)
        await pilot.press("slash", *"down", "enter")
        await until(pilot, lambda: t.row_count == 0)
        agents = list(source.status.agents)
        agents[4] = down("agent-004", 4)
        agents[40] = down("agent-040", 40)
        await refresh(app, pilot, t, source, agents)
        assert t.row_keys == ["agent-004", "agent-040"]
        assert "2/60 shown" in str(app.screen.query_one("#fleet-status").render())
        agents[4] = replace(up("agent-004", 4), url=agents[4].url)
        await refresh(app, pilot, t, source, agents)
        assert t.row_keys == ["agent-040"]
        await pilot.press("escape")
        assert len(t.row_keys) == N and t.get_cell("agent-004", "state").plain == "up"


async def test_a_change_off_screen_redraws_nothing_and_shows_when_scrolled_to() -> None:
    from tests.console.wk_pilot import screen_text

    source = many()
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 24)) as pilot:  # about 15 rows visible of 60
        t = await ready(app, pilot)
        # Drawn once (so DataTable has it in its render caches), then scrolled away from.
        t.scroll_to(y=50, animate=False)
        await pilot.pause()
        assert "agent-055" in screen_text(app)
        t.scroll_to(y=0, animate=False)
        await pilot.pause()
        assert "agent-055" not in screen_text(app)
        drawn = t._update_count  # DataTable redraws its rows when this moves
        agents = list(source.status.agents)
        agents[55] = up("agent-055", 55, cpu=56.0, mem=12.3)
        await refresh(app, pilot, t, source, agents)
        assert t.last_sync_changes == 1 and t._update_count == drawn  # nothing on screen changed
        # Scrolled to, the off-screen row shows its new value, not its drawing from before.
        t.scroll_to(y=50, animate=False)
        await pilot.pause()
        line = next(x for x in screen_text(app).splitlines() if "agent-055" in x)
        assert "12.3" in line
        # A visible row's change is drawn at once.
        t.scroll_to(y=0, animate=False)
        agents[1] = up("agent-001", 1, cpu=2.0, mem=33.3)
        await refresh(app, pilot, t, source, agents)
        await pilot.pause()
        assert "33.3" in screen_text(app)
        # Drawn by forgetting that cell's drawing only, not by re-rendering every visible cell.
        assert t._update_count == drawn


async def test_a_burst_of_a_thousand_changed_rows_is_drawn_in_slices_between_which_the_screen_runs(
    monkeypatch,
) -> None:
    # Through Prometheus every poll moves every row; drawn in one go, 1,000 rows froze the screen for
    # 100-500 ms. Counted, not timed: no update touches more than a slice of rows, the event loop runs
    # between two slices, and at the end the order and the status line are the new poll's.
    from console.core.widgets import keyed_table

    monkeypatch.setattr(keyed_table, "SLICE_BUDGET_S", 0.0)  # one update per turn: countable on any machine
    n = 1000
    source = FakeSource(fleet(*(up(f"agent-{i:04d}", i, cpu=float(i % 97)) for i in range(n))))
    app = WatchkeeperApp(source, refresh_s=3600)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.screen.table.row_count == n, 60)
        t = app.screen.query_one(FleetTable)
        await until(pilot, lambda: t.settled, 60)
        await pilot.press("C")  # CPU ascending
        await until(pilot, lambda: t.settled, 60)

        log: list[tuple[str, int, float]] = []  # ("apply", rows, when) / ("tick", 0, when)
        inner = t.apply

        def apply(removed, cells, order):  # type: ignore[no-untyped-def]
            log.append(("apply", len(cells), time.perf_counter()))
            return inner(removed, cells, order)

        t.apply = apply  # type: ignore[method-assign]

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.002)
                log.append(("tick", 0, time.perf_counter()))

        tick = asyncio.create_task(ticker())
        new_cpu = {f"agent-{i:04d}": float((n - i) % 89) + 0.5 for i in range(n)}
        source.status = fleet(*(up(f"agent-{i:04d}", i, cpu=new_cpu[f"agent-{i:04d}"]) for i in range(n)))
        app.action_refresh_now()
        await until(pilot, lambda: any(e[0] == "apply" for e in log) and t.settled, 60)
        tick.cancel()

        applies = [i for i, e in enumerate(log) if e[0] == "apply"]
        sizes = [log[i][1] for i in applies]
        assert sum(sizes) == n and max(sizes) <= t.SLICE_ROWS, sizes
        # The loop ran between every two slices (the ticker got its turn): never one long block.
        assert all(any(e[0] == "tick" for e in log[a + 1 : b]) for a, b in itertools.pairwise(applies)), log
        # Generous (a loaded 2-core box): one slice's block, nowhere near a whole burst's.
        ticks = [e[2] for e in log if e[0] == "tick" and log[applies[0]][2] <= e[2] <= log[applies[-1]][2]]
        blocks = [b - a for a, b in itertools.pairwise([log[applies[0]][2], *ticks, log[applies[-1]][2]])]
        assert max(blocks) < 0.5, max(blocks)

        expected = sorted(new_cpu, key=lambda k: (new_cpu[k], k))
        assert t.row_keys == expected
        assert [r.key for r in t.rows_shown] == expected
        assert t.get_cell("agent-0000", "cpu").plain == "21.5"  # (1000 % 89) + 0.5
        await pilot.pause()
        assert f"{n}/{n} shown" in str(app.screen.query_one("#fleet-status").render())
