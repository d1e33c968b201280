"""Rollouts across the fleet: rows and texts, the poll, the rollouts screen with its actions, a snapshot."""

from __future__ import annotations

import time
from dataclasses import replace

from textual.widgets import Input, Static

from console.app import WatchkeeperApp
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.feeds import FeedState
from console.core.screens.help import HelpScreen
from console.fleet.fleet_screen import FleetScreen
from console.rollouts.client import RolloutAgentStatus, RolloutsClient, RolloutsPoller, rollout_feed
from console.rollouts.rows import (
    STATE_STYLE,
    awaiting_count,
    detail_lines,
    live_lines,
    plain,
    render_rollouts,
    rollout_key,
    rollout_rows,
)
from console.rollouts.screen import RolloutConfirm, RolloutsScreen
from console.rollouts.table import MARK, RolloutTable
from tests.console.wk_fakes import (
    FakeHttpAgent,
    FakeSource,
    RolloutAgent,
    RolloutFakeSource,
    agent_routes,
    closed_url,
    make_guards,
    make_rollout,
    rollouts_feed,
    rollouts_fleet,
    up,
)
from tests.console.wk_pilot import (
    fleet_ready,
    imports_textual,
    open_from_fleet,
    press_to,
    recording,
    screen_text,
    select,
    until,
    wait_for,
)

K_FLIGHTS_1 = rollout_key("gpu-01", "r-a1")
K_FRAUD_AB = rollout_key("gpu-01", "r-a2")
K_FLIGHTS_2 = rollout_key("gpu-02", "r-b1")
K_ETA_ABORTED = rollout_key("gpu-03", "r-c1")


async def open_rollouts(app: WatchkeeperApp, pilot) -> RolloutTable:
    return await open_from_fleet(app, pilot, "R", RolloutsScreen, RolloutTable)


def panel(app: WatchkeeperApp, which: str) -> str:
    return str(app.screen.query_one(f"#rollout-{which}", Static).render())


# --------------------------------------------------------------------------- rows and texts (no Textual)


def test_rows_put_awaiting_approval_first_and_ended_last_with_their_texts() -> None:
    rows = rollout_rows(rollouts_fleet())
    assert [r.key for r in rows] == [K_FLIGHTS_1, K_FLIGHTS_2, K_FRAUD_AB, K_ETA_ABORTED]
    first = rows[0]
    assert first.text("state") == "AWAITING APPROVAL (step 2)" and first.awaiting
    assert first.text("step") == "2/7 approval" and first.text("weight") == "5%" and first.text("shadow") == "-"
    assert first.text("versions") == "flights v2→v3" and first.text("in_step") == "42s"
    assert first.text("guards") == "1 breached" and first.text("by") == "alice"
    aborted = rows[-1]
    assert aborted.text("in_step") == "ended 10m ago" and aborted.text("state") == "aborted"
    assert awaiting_count(rollouts_fleet()) == 2
    # What the keys may do, before asking any agent.
    assert first.blocked("approve") is None and first.blocked("resume") == "it is awaiting approval, not paused"
    assert rows[2].blocked("approve") == "nothing awaits approval: it is progressing at step 1"
    assert aborted.blocked("abort") == "it has ended (aborted)"
    assert aborted.blocked("rollback") == "it is aborted: its traffic is already on stable"
    promoted = replace(aborted, rollout=aborted.rollout.model_copy(update={"state": "promoted"}))
    assert promoted.blocked("rollback") is None  # a promoted rollout can still be rolled back
    table = render_rollouts(rows).splitlines()
    assert table[0].split()[:4] == ["HOST", "ENDPOINT", "STRATEGY", "STABLE→CANDIDATE"]
    assert table[1].split()[:6] == ["gpu-01", "flights", "canary", "flights", "v2→v3", "AWAITING"]


def test_detail_shows_plan_gate_guards_side_by_side_ab_approvals_and_lineage() -> None:
    rows = {r.key: r for r in rollout_rows(rollouts_fleet())}
    text = plain(detail_lines(rows[K_FLIGHTS_1]))
    assert "flights on gpu-01  canary  flights v2→v3  AWAITING APPROVAL (step 2)" in text
    assert "plan  1 weight 5%  [2 approval]  3 weight 25%  4 pause 60s  5 weight 50%  6 approval  7 weight 100%" in text
    assert "gate  passed on flights-val (sha256 4f2a9c0d1e8b, 5000 rows)" in text
    assert "auc       candidate 0.811  stable 0.792  (threshold 0.75)  ok" in text
    assert "approvals  none yet (two-person rule: someone other than alice)" in text
    assert "candidate  build build-117  commit 9f3c2ab (dirty)  data d-2024-05" in text
    live = live_lines(rows[K_FLIGHTS_1])
    lines = plain(live).splitlines()
    assert lines[0].split() == ["guard", "stable", "candidate", "limit"]
    assert lines[1].split() == ["error_rate", "0.1%", "8.0%", "5.0%", "BREACHED", "for", "12s"]
    assert live[1][0][1] == "red" and live[1][1][1] == "bold red"
    assert lines[2].split() == ["p99_vs_stable", "9.5", "ms", "11.2", "ms", "19.0", "ms", "ok"]
    assert lines[4].split()[:3] == ["fallback_rate", "0.0%", "-"] and lines[4].endswith("not judged")
    assert lines[5] == "not judged: too few requests in the window yet - no evidence either way"
    ab = plain(live_lines(rows[K_FRAUD_AB]))
    assert "A/B  positive rate (two-proportion z): not enough data yet" in ab
    assert "stable 0.112 (n 120)  candidate 0.13 (n 131)" in ab
    ended = plain(detail_lines(rows[K_ETA_ABORTED]))
    assert "ended 10m ago: guard error_rate breached for 30s (8.0% > 5.0%)" in ended


def test_data_layer_imports_no_textual() -> None:
    assert not imports_textual(
        "console.rollouts.client",
        "console.rollouts.rows",
        "console.rollouts.cli",
        "console.rollouts.deploy_cli",
        "console.rollouts.cli_common",
    )


# --------------------------------------------------------------------------- the poll (fake agents over HTTP)


async def test_poll_fetches_active_rollouts_each_time_ended_ones_now_and_then_and_older_agents_rarely() -> None:
    now = time.time()
    agent = RolloutAgent(
        "gpu-01",
        token="tok",
        rollouts=[
            make_rollout("r-x1", state="awaiting_approval", step_index=1, now=now),
            make_rollout("r-x0", state="promoted", step_index=6, ended_ago=300, now=now),
            make_rollout("r-old", state="aborted", ended_ago=7200, now=now),
        ],
    )
    async with FakeHttpAgent(agent.routes()) as server, FakeHttpAgent(agent_routes("old")) as old:
        specs = [AgentSpec(name="gpu-01", url=server.url, token="tok"), AgentSpec(name="old", url=old.url)]
        async with RolloutsPoller(specs, rollouts_idle_s=60.0, ended_refresh_s=30.0) as poller:
            status = await poller.poll()
            one = status.get("gpu-01")
            assert isinstance(one, RolloutAgentStatus)
            feed = rollout_feed(one)
            assert feed is not None and feed.state is FeedState.OK
            assert [r.id for r in feed.active] == ["r-x1"]
            assert [r.id for r in feed.ended] == ["r-x0"]  # ended two hours ago: not recent
            assert rollout_feed(status.get("old")).state is FeedState.NONE  # 404: no rollouts, not an error
            queries = [r.query.get("active") for r in server.full_requests if r.path == "/api/v1/rollouts"]
            assert sorted(map(str, queries)) == ["['false']", "['true']"]
            await poller.poll()
            queries = [r.query.get("active") for r in server.full_requests if r.path == "/api/v1/rollouts"]
            assert len(queries) == 3 and queries[-1] == ["true"]  # ended ones not again yet
            assert old.count("/api/v1/rollouts") == 2  # the first poll's two; again only after rollouts_idle_s
            # The active one ends: the next poll learns how.
            agent.rollouts[0] = agent.rollouts[0].model_copy(update={"state": "aborted", "ended_at": time.time()})
            await poller.poll()
            await poller.poll()
            feed = rollout_feed((await poller.poll()).get("gpu-01"))
            assert feed.active == () and {r.id: r.state for r in feed.ended} == {"r-x1": "aborted", "r-x0": "promoted"}


async def test_client_action_sends_the_step_and_reads_a_gate_refusal() -> None:
    agent = RolloutAgent("gpu-01", principal="bob", rollouts=[make_rollout("r-x1", state="awaiting_approval",
                                                                           step_index=1, now=time.time())])  # fmt: skip
    async with FakeHttpAgent(agent.routes()) as server:
        client = RolloutsClient(AgentSpec(name="gpu-01", url=server.url))
        try:
            out = await client.rollout_action("r-x1", "approve", step_index=1, reason="fine")
            assert out.state == "progressing" and out.step_index == 2
            assert agent.posts == [("/api/v1/rollouts/r-x1/approve", {"step_index": 1, "reason": "fine"})]
            try:
                await client.rollout_action("r-x1", "approve", step_index=1)
            except AgentError as exc:
                assert exc.status_code == 409 and "stale" in exc.message
            else:
                raise AssertionError("a stale step must be refused")
        finally:
            await client.aclose()


# --------------------------------------------------------------------------- the screen (scripted source)


async def test_R_lists_fleet_rollouts_awaiting_approval_highlighted_with_detail_and_status() -> None:
    source = RolloutFakeSource()
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(150, 44)) as pilot:
        polls = source.polls
        await until(pilot, lambda: app.fleet_status is not None)
        assert "2 rollouts awaiting approval" in app.sub_title
        table = await open_rollouts(app, pilot)
        await until(pilot, lambda: source.polls > polls)  # opening asks for fresh rollouts now
        assert table.row_keys == [K_FLIGHTS_1, K_FLIGHTS_2, K_FRAUD_AB, K_ETA_ABORTED]
        state = table.get_cell(K_FLIGHTS_1, "state")
        assert state.plain == "AWAITING APPROVAL (step 2)" and state.style == STATE_STYLE["awaiting_approval"]
        assert "reverse" in str(state.style) and "bold" in str(state.style)
        assert table.get_cell(K_FLIGHTS_1, "host").style == "bold"
        assert table.get_cell(K_ETA_ABORTED, "endpoint").style == "dim"  # ended
        assert table.get_cell(K_FLIGHTS_1, "guards").style == "bold red"
        assert "[2 approval]" in panel(app, "detail")
        assert "BREACHED for 12s" in panel(app, "live")
        await select(pilot, table, K_FRAUD_AB)
        assert "not enough data yet" in panel(app, "live") and "fraud on gpu-01" in panel(app, "detail")
        status = str(app.screen.query_one("#rollouts-status", Static).render())
        assert "4/4 rollouts" in status and "3 active" in status and "2 awaiting approval" in status
        assert "rollouts from 3/4 agents" in status and "1 without rollouts" in status
        # Filter, then `R` again does not stack a second screen; Esc clears the filter, then goes back.
        await pilot.press("slash", *"gpu-02", "enter")
        await pilot.pause()
        assert table.row_keys == [K_FLIGHTS_2]
        await pilot.press("R")
        await pilot.pause()
        assert sum(isinstance(s, RolloutsScreen) for s in app.screen_stack) == 1
        await pilot.press("escape")
        await pilot.pause()
        assert len(table.row_keys) == 4
        await press_to(pilot, FleetScreen, "escape")


async def test_approve_asks_naming_host_endpoint_versions_and_sends_the_awaiting_step() -> None:
    source = RolloutFakeSource()
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(150, 44)) as pilot:
        table = await open_rollouts(app, pilot)
        await select(pilot, table, K_FLIGHTS_1)
        await press_to(pilot, RolloutConfirm, "a")
        text = screen_text(app)
        assert "Approve step 2 of flights on gpu-01?" in text
        assert "gpu-01  ·  flights  ·  flights v2→v3  ·  awaiting approval, step 2" in text
        await pilot.press(*"guards green, yes", "enter")  # `y` types into the reason
        await until(pilot, lambda: bool(source.rollout_calls))
        assert source.rollout_calls == [("gpu-01", "r-a1", "approve", 1, "guards green, yes")]
        await until(pilot, lambda: any("approved" in m for m, _ in seen))
        assert ("flights on gpu-01: approved (now progressing, step 3/7 weight 25%)", "information") in seen
        await until(pilot, lambda: table.get_cell(K_FLIGHTS_1, "step").plain == "3/7 weight 25%")  # polled again
        assert table.row_keys.index(K_FLIGHTS_1) == 1  # no longer waiting for a human: below gpu-02's


async def test_marked_rows_fan_out_with_one_notification_per_host() -> None:
    source = RolloutFakeSource()
    source.rollout_errors["gpu-02"] = AgentError(
        ErrorKind.FORBIDDEN, "403 forbidden: two_person_rule: op-bob started rollout r-b1", status_code=403
    )
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(150, 44)) as pilot:
        table = await open_rollouts(app, pilot)
        await select(pilot, table, K_FLIGHTS_1)
        await pilot.press("m", "m")  # marks gpu-01's, moves down, marks gpu-02's
        assert table.marked == {K_FLIGHTS_1, K_FLIGHTS_2}
        assert table.get_cell(K_FLIGHTS_2, "mark").plain == MARK
        assert "2 marked" in str(app.screen.query_one("#rollouts-status", Static).render())
        await press_to(pilot, RolloutConfirm, "a")
        text = screen_text(app)
        assert "Approve flights on 2 hosts?" in text
        assert "gpu-01  ·  flights  ·  flights v2→v3  ·  awaiting approval, step 2" in text
        assert "gpu-02  ·  flights  ·  flights v2→v3  ·  awaiting approval, step 2" in text
        await pilot.press("enter")
        await until(pilot, lambda: any(m.startswith("approve: ") for m, _ in seen))
        assert sorted(source.rollout_calls) == [
            ("gpu-01", "r-a1", "approve", 1, ""),
            ("gpu-02", "r-b1", "approve", 1, ""),
        ]
        assert ("flights on gpu-01: approved (now progressing, step 3/7 weight 25%)", "information") in seen
        assert (
            "flights on gpu-02: not approved: 403 forbidden: two_person_rule: op-bob started rollout r-b1",
            "error",
        ) in seen
        assert ("approve: 1/2 hosts approved", "warning") in seen
        await pilot.press("c")
        await pilot.pause()
        assert table.marked == set()


async def test_reject_abort_rollback_need_a_reason_and_ended_rollouts_are_refused_locally() -> None:
    source = RolloutFakeSource()
    app = WatchkeeperApp(source, refresh_s=60)
    seen = recording(app)
    async with app.run_test(size=(150, 44)) as pilot:
        table = await open_rollouts(app, pilot)
        await select(pilot, table, K_FLIGHTS_2)
        await press_to(pilot, RolloutConfirm, "x")
        await pilot.press("enter")  # no reason: refused in the dialog
        await pilot.pause()
        assert isinstance(app.screen, RolloutConfirm) and "A reason is required." in screen_text(app)
        app.screen.query_one("#reason", Input).value = "p99 too high"
        await pilot.press("enter")
        await until(pilot, lambda: bool(source.rollout_calls))
        assert source.rollout_calls == [("gpu-02", "r-b1", "reject", 1, "p99 too high")]
        # Ended: nothing to approve, abort or roll back (an aborted rollout is on stable already).
        await select(pilot, table, K_ETA_ABORTED)
        await pilot.press("a", "X", "ctrl+r")
        await pilot.pause(0.1)
        assert isinstance(app.screen, RolloutsScreen) and len(source.rollout_calls) == 1
        assert any("cannot approve: eta on gpu-03: it has ended (aborted)" in m for m, _ in seen)
        assert any(
            "cannot rollback: eta on gpu-03: it is aborted: its traffic is already on stable" in m for m, _ in seen
        )
        # Space pauses a running rollout (Esc cancels).
        await select(pilot, table, K_FRAUD_AB)
        await press_to(pilot, RolloutConfirm, "space")
        assert app.screen.action == "pause" and "Pause fraud on gpu-01?" in screen_text(app)
        await press_to(pilot, RolloutsScreen, "escape")
        assert len(source.rollout_calls) == 1


async def test_readonly_hides_and_refuses_every_rollout_action() -> None:
    source = RolloutFakeSource()
    app = WatchkeeperApp(source, refresh_s=60, readonly=True)
    seen = recording(app)
    async with app.run_test(size=(150, 44)) as pilot:
        table = await open_rollouts(app, pilot)
        await select(pilot, table, K_FLIGHTS_1)
        screen = app.screen
        for action in ("approve", "reject", "promote", "pause_resume", "abort", "rollback"):
            assert screen.check_action(action, ()) is False, action
        assert screen.check_action("mark", ()) is True and screen.check_action("filter", ()) is True
        text = screen_text(app)
        assert "Approve" not in text and "Rollback" not in text  # not in the footer
        await pilot.press("a", "x", "p", "space", "X", "ctrl+r")
        await pilot.pause(0.1)
        assert app.screen is screen
        await screen.action_approve()  # called directly: @mutating refuses
        assert any("read-only mode: approve is disabled" in m for m, _ in seen)
        await press_to(pilot, HelpScreen, "question_mark")
        body = str(app.screen.query_one("#help-body", Static).render())
        assert "approve the awaiting step (asks; reason optional) [disabled: read-only]" in body
        assert "rollouts across the fleet" in body
        await pilot.press("escape")
        assert source.rollout_calls == []


async def test_a_fleet_without_rollouts_says_so() -> None:
    source = FakeSource(rollouts_fleet())
    source.status = replace(source.status, agents=(rollouts_feed(up("gpu-01", 0), []),))
    app = WatchkeeperApp(source, refresh_s=60)
    async with app.run_test(size=(150, 44)) as pilot:
        await until(pilot, lambda: app.fleet_status is not None)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen) and app.screen._shown is not None)
        await pilot.pause()
        assert "no rollouts (start one with `watchkeeper deploy`)" in panel(app, "detail")


# --------------------------------------------------------------------------- against fake agents over HTTP


async def test_approve_on_two_fake_agents_posts_each_awaiting_step_to_its_own_agent() -> None:
    now = time.time()
    one = RolloutAgent("gpu-01", token="tok", principal="bob", rollouts=[
        make_rollout("r-g1", state="awaiting_approval", step_index=1, guards=make_guards(), now=now, host="gpu-01"),
    ])  # fmt: skip
    two = RolloutAgent("gpu-02", token="tok", principal="bob", rollouts=[
        make_rollout("r-g2", state="awaiting_approval", step_index=5, now=now, host="gpu-02"),
    ])  # fmt: skip
    async with FakeHttpAgent(one.routes()) as a, FakeHttpAgent(two.routes()) as b:
        specs = [
            AgentSpec(name="gpu-01", url=a.url, token="tok"),
            AgentSpec(name="gpu-02", url=b.url, token="tok"),
            AgentSpec(name="gone", url=closed_url(), timeout_s=0.5),
        ]
        app = WatchkeeperApp(RolloutsPoller(specs), refresh_s=0.5)
        seen = recording(app)
        async with app.run_test(size=(150, 44)) as pilot:
            table = await open_rollouts(app, pilot)
            await until(pilot, lambda: len(table.row_keys) == 2)
            await select(pilot, table, rollout_key("gpu-01", "r-g1"))
            await press_to(pilot, RolloutConfirm, "m", "m", "a")
            assert "gpu-02  ·  flights  ·  flights v2→v3  ·  awaiting approval, step 6" in screen_text(app)
            await pilot.press(*"ok", "enter")
            await until(pilot, lambda: any(m.startswith("approve: ") for m, _ in seen))
            assert one.posts == [("/api/v1/rollouts/r-g1/approve", {"step_index": 1, "reason": "ok"})]
            assert two.posts == [("/api/v1/rollouts/r-g2/approve", {"step_index": 5, "reason": "ok"})]
            assert ("approve: 2/2 hosts approved", "information") in seen
            assert ("flights on gpu-02: approved (now progressing, step 7/7 weight 100%)", "information") in seen
            await until(pilot, lambda: table.get_cell(rollout_key("gpu-01", "r-g1"), "step").plain == "3/7 weight 25%")


# --------------------------------------------------------------------------- snapshot


async def rollouts_ready(pilot) -> None:
    await fleet_ready(pilot)
    await pilot.press("R")
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, RolloutsScreen) and app.screen.table.row_count == 4)
    await pilot.press("m")  # one marked row, cursor on gpu-02's rollout awaiting approval
    await pilot.pause()


def test_rollouts_screen_snapshot(snap_compare) -> None:
    app = WatchkeeperApp(FakeSource(rollouts_fleet()), refresh_s=3600)
    assert snap_compare(app, terminal_size=(150, 44), run_before=rollouts_ready)


def test_each_dialog_suggests_a_reason_that_fits_its_own_action() -> None:
    from console.rollouts.screen import VERBS

    assert len({v.example for v in VERBS.values()}) == len(VERBS)
    assert "green" not in VERBS["rollback"].example and "green" not in VERBS["abort"].example


def _unjudged_fleet():
    from agent.schemas import GuardMetric
    from tests.console.wk_fakes import fleet

    guards = [
        GuardMetric(name=name, stable=0.001, candidate=None, limit=0.05, breached=False, judged=False, requests=12,
                    min_requests=50)
        for name in ("error_rate", "p99_vs_stable", "fallback_rate")
    ]  # fmt: skip
    r = make_rollout("r-n1", state="awaiting_approval", step_index=1, guards=guards, now=time.time(), host="gpu-01")
    return fleet(rollouts_feed(up("gpu-01", 0), [r]))


async def test_guards_with_nothing_measured_say_not_judged_in_the_list_the_panel_and_the_approve_dialog() -> None:
    (row,) = rollout_rows(_unjudged_fleet())
    assert row.text("guards") == "not judged (12 of 50 requests)"  # never "ok" on no evidence
    app = WatchkeeperApp(RolloutFakeSource(status=_unjudged_fleet()), refresh_s=60)
    async with app.run_test(size=(150, 44)) as pilot:
        table = await open_rollouts(app, pilot)
        key = rollout_key("gpu-01", "r-n1")
        await until(pilot, lambda: table.row_keys == [key])
        assert table.get_cell(key, "guards").plain == "not judged (12 of 50 requests)"
        assert table.get_cell(key, "guards").style == "yellow"
        assert "error_rate" in panel(app, "live") and "not judged (12 of 50 requests)" in panel(app, "live")
        await press_to(pilot, RolloutConfirm, "a")
        dialog = " ".join(line.strip("█ ") for line in screen_text(app).splitlines())
        assert "guards not judged (12 of 50 requests)" in " ".join(dialog.split())
