"""The rollout state machine with a fake clock: plans, approvals, pauses, guards, analysis, restore, gate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import polars as pl
import pytest

from agent.rollouts.engine import RolloutEngine, RolloutError
from agent.schemas import DatasetInfo, RolloutAction, RolloutCreate
from agent.serving.service import RouteMetrics
from agent.serving.stats import ShadowWindow, VersionWindow
from tests.rollouts.fakes import ADMIN, ALICE, BOB, FLIGHTS, OLGA, VERA, World, world


@pytest.fixture
def w() -> Iterator[World]:
    wd = world()
    yield wd
    wd.writer.stop()
    wd.con.close()


def spec(**kw) -> RolloutCreate:
    body = {"candidate_version": 2, "strategy": "canary", "guards": {"window_s": 10, "min_requests": 5}, **kw}
    return RolloutCreate.model_validate(body)


def steps(*items: dict) -> list[dict]:
    return list(items)


def act(eng: RolloutEngine, rid: str, action: str, who=ALICE, **kw):
    return eng.act(rid, action, RolloutAction(**kw), who, "127.0.0.1:5000")


def err(fn, *a, **kw) -> RolloutError:
    with pytest.raises(RolloutError) as ei:
        fn(*a, **kw)
    return ei.value


def metrics(cand_requests=50, cand_err=0.0, st_requests=50, cand_p99=1.0, st_p99=1.0) -> RouteMetrics:
    st = VersionWindow(1, requests=st_requests, p99_ms=st_p99, scores=[0.1, 0.2, 0.3, 0.4, 0.5] * 10)
    ca = VersionWindow(
        2, requests=cand_requests, errors=int(cand_err * cand_requests), error_rate=cand_err, p99_ms=cand_p99,
        scores=[0.1, 0.2, 0.3, 0.4, 0.5] * 10,
    )  # fmt: skip
    return RouteMetrics(st, ca, ShadowWindow())


def test_default_canary_plan_walks_to_promotion(w: World):
    eng = w.engine()
    out = eng.create("delays", spec(), ADMIN, "127.0.0.1:1")
    assert [s.model_dump(exclude_none=True) for s in out.steps] == [
        {"set_weight": 5}, {"approval": True}, {"set_weight": 25}, {"pause_s": 60}, {"set_weight": 50},
        {"approval": True}, {"set_weight": 100},
    ]  # fmt: skip
    assert (out.state, out.step_index, out.weight, out.awaiting_approval_for) == ("awaiting_approval", 1, 5, 1)
    assert out.gate.note == "no gate" and out.candidate_lineage.build_id == "build-2" and out.candidate_loaded
    route = w.serving.endpoints["delays"].route
    assert route.weight == 5 and route.candidate.version == 2 and route.sticky_header is None
    out = act(eng, out.id, "approve", step_index=1, reason="ok")
    assert (out.state, out.step_index, out.weight) == ("progressing", 3, 25)
    w.clock.t += 59
    eng.tick()
    assert eng.get(out.id).step_index == 3
    w.clock.t += 2
    eng.tick()
    got = eng.get(out.id)
    assert (got.state, got.step_index, got.weight, got.awaiting_approval_for) == ("awaiting_approval", 5, 50, 5)
    done = act(eng, out.id, "approve", BOB, step_index=5)
    assert done.state == "promoted" and done.weight == 100 and done.ended_at == w.clock.t
    assert w.serving.puts == [("delays", 2, "bob")] and w.serving.endpoints["delays"].route is None
    assert w.serving.pins[("flights", 1)] == 600  # the old version kept warm for an instant rollback
    assert [(a.principal, a.step_index) for a in done.approvals] == [("alice", 1), ("bob", 5)]
    assert w.audit.actions() == []  # actions are audited by the API's hook; nothing automatic happened


def test_roles_two_person_rule_and_stale_steps(w: World):
    eng = w.engine()
    rid = eng.create("delays", spec(steps=steps({"set_weight": 10}, {"approval": True}, {"approval": True})), ADMIN).id
    assert err(act, eng, rid, "approve", ADMIN, step_index=1).error == "two_person_rule"
    assert err(act, eng, rid, "promote", ADMIN).error == "two_person_rule"
    assert err(act, eng, rid, "approve", OLGA, step_index=1).status == 403  # operators don't approve
    assert err(act, eng, rid, "pause", ALICE).status == 403  # approvers don't operate
    assert err(act, eng, rid, "abort", VERA).status == 403
    e = err(act, eng, rid, "approve", ALICE, step_index=2)
    assert (e.status, e.error, e.field) == (409, "stale", "step_index")
    assert err(act, eng, rid, "approve", ALICE).status == 422
    act(eng, rid, "approve", ALICE, step_index=1)
    assert err(act, eng, rid, "approve", BOB, step_index=1).error == "stale"  # that step has moved on
    assert eng.get(rid).awaiting_approval_for == 2

    # An audit that can't be written: nothing happens.
    def broken(_detail: dict) -> None:
        raise RuntimeError("audit down")

    with pytest.raises(RuntimeError):
        eng.act(rid, "approve", RolloutAction(step_index=2), BOB, None, audit=broken)
    assert eng.get(rid).awaiting_approval_for == 2 and len(eng.get(rid).approvals) == 1
    out = act(eng, rid, "reject", BOB, step_index=2, reason="metrics look off")
    assert out.state == "aborted" and out.end_reason == "step 2 rejected by bob: metrics look off"
    assert out.approvals[-1].decision == "rejected" and out.approvals[-1].client == "127.0.0.1:5000"
    assert w.serving.endpoints["delays"].route is None and out.weight == 0
    assert err(act, eng, rid, "resume", OLGA).status == 409


def test_pause_freezes_the_step_timer_and_resume_goes_on(w: World):
    eng = w.engine()
    plan = steps({"set_weight": 10}, {"pause_s": 60}, {"set_weight": 20}, {"approval": True})
    rid = eng.create("delays", spec(steps=plan), OLGA).id
    w.clock.t += 20
    assert act(eng, rid, "pause", OLGA).state == "paused"
    assert err(act, eng, rid, "pause", OLGA).status == 409
    w.clock.t += 100
    eng.tick()
    assert eng.get(rid).state == "paused" and eng.get(rid).weight == 10  # weights stay while paused
    assert act(eng, rid, "resume", OLGA).state == "progressing"
    w.clock.t += 39
    eng.tick()
    assert eng.get(rid).step_index == 1
    w.clock.t += 2
    eng.tick()
    got = eng.get(rid)
    assert (got.state, got.step_index, got.weight) == ("awaiting_approval", 3, 20)


def test_a_breach_held_for_the_guard_window_aborts_and_raises_an_alert(w: World):
    evaluated = []

    class Alerts:
        def evaluate(self, signals, now=None, covered=None):
            evaluated.append((signals, covered))

    w.alerts = Alerts()
    eng = w.engine()
    rid = eng.create("delays", spec(steps=steps({"set_weight": 50}, {"approval": True})), OLGA).id
    w.serving.metrics = metrics(cand_err=0.4)
    eng.tick()
    g = {m.name: m for m in eng.get(rid).guards}
    assert g["error_rate"].breached and g["error_rate"].breached_since == w.clock.t
    assert g["error_rate"].candidate == 0.4 and g["error_rate"].stable == 0.0
    w.clock.t += 5
    w.serving.metrics = metrics(cand_err=0.0)  # the breach ends: its clock resets
    eng.tick()
    w.clock.t += 1
    w.serving.metrics = metrics(cand_err=0.4)
    eng.tick()
    w.clock.t += 9.9
    eng.tick()
    assert eng.get(rid).state == "awaiting_approval"
    w.clock.t += 0.1
    eng.tick()
    out = eng.get(rid)
    assert out.state == "aborted" and out.end_reason.startswith("guard error_rate breached for 10.0 s")
    assert w.serving.endpoints["delays"].route is None and out.weight == 0
    ((who, action, target, detail, _),) = w.audit.entries
    assert (who, action, target) == ("watchkeeper-agent", "rollout.abort", f"rollout:{rid}")
    assert detail["automatic"] is True and detail["guard"]["name"] == "error_rate"
    (sig,) = eng.signals()
    assert sig.kind == "rollout_guard" and sig.breached and sig.endpoint == "delays" and rid in sig.summary
    assert evaluated and evaluated[0][1] == {"rollout_guard"} and evaluated[0][0][0].breached
    assert not eng.signals(now=w.clock.t + 3601)[0].breached  # held an hour
    # A new rollout on the endpoint clears it.
    eng.create("delays", spec(steps=steps({"set_weight": 50}, {"approval": True})), OLGA)
    assert not eng.signals()[0].breached


def test_too_few_requests_judge_nothing(w: World):
    eng = w.engine()
    rid = eng.create("delays", spec(steps=steps({"set_weight": 50}, {"approval": True})), OLGA).id
    w.serving.metrics = metrics(cand_requests=4, cand_err=1.0)
    for _ in range(3):
        eng.tick()
        w.clock.t += 20
    g = {m.name: m for m in eng.get(rid).guards}
    assert g["error_rate"].candidate is None and not g["error_rate"].breached
    assert eng.get(rid).state == "awaiting_approval"


def test_analysis_fails_on_any_breach_and_pauses_when_inconclusive(w: World):
    eng = w.engine()
    plan = steps({"shadow": 0.5}, {"analysis_s": 30}, {"approval": True})
    rid = eng.create("delays", spec(strategy="shadow", steps=plan), OLGA).id
    assert eng.get(rid).shadow == 0.5 and eng.get(rid).weight == 0
    w.clock.t += 31
    eng.tick()  # nothing measured: inconclusive
    out = eng.get(rid)
    assert out.state == "paused" and out.step_index == 1
    assert any(e[1] == "rollout.pause" for e in w.audit.entries)
    out = act(eng, rid, "resume", OLGA)  # a human accepts it
    assert (out.state, out.step_index) == ("awaiting_approval", 2)
    act(eng, rid, "abort", OLGA, reason="done")
    # A second one: a breach during the analysis fails it at once, without waiting for the guard window.
    rid = eng.create("delays", spec(strategy="shadow", steps=plan), OLGA).id
    w.serving.metrics = metrics(cand_err=0.2)
    eng.tick()
    out = eng.get(rid)
    assert out.state == "aborted" and out.end_reason.startswith("analysis at step 1 failed: guard error_rate")
    # A third: green all along passes.
    rid = eng.create("delays", spec(strategy="shadow", steps=plan), OLGA).id
    w.serving.metrics = metrics()
    eng.tick()
    w.clock.t += 30
    eng.tick()
    assert eng.get(rid).state == "awaiting_approval"


def test_restore_brings_back_weights_approvals_and_routes(w: World):
    eng = w.engine()
    plan = steps({"set_weight": 25}, {"approval": True}, {"set_weight": 50}, {"approval": True})
    rid = eng.create("delays", spec(strategy="ab", steps=plan), OLGA).id
    act(eng, rid, "approve", ALICE, step_index=1)
    before = eng.get(rid)
    # A new engine over the same store, on a serving layer that lost its routes (a restart).
    from tests.rollouts.fakes import FakeServing

    s2 = FakeServing(w.registry)
    s2.add()
    eng2 = w.engine(s2)
    assert eng2.restore() == 1
    after = eng2.get(rid)
    assert after.model_dump(exclude={"candidate_loaded", "guards"}) == before.model_dump(
        exclude={"candidate_loaded", "guards"}
    )
    assert (after.state, after.weight, after.awaiting_approval_for) == ("awaiting_approval", 50, 3)
    route = s2.endpoints["delays"].route
    assert route.weight == 50 and route.sticky_header == "x-caller-key" and route.rollout_id == rid
    assert not after.candidate_loaded  # loads in the background on the next tick
    eng2.tick()
    for _ in range(100):
        if eng2.get(rid).candidate_loaded:
            break
        time.sleep(0.01)
    assert eng2.get(rid).candidate_loaded
    assert act(eng2, rid, "approve", BOB, step_index=3).state == "promoted"


def test_a_rollout_caught_validating_is_aborted_at_restart(w: World):
    eng = w.engine()
    w.serving.load_gate = threading.Event()  # the candidate's load hangs: the rollout stays validating

    def start() -> None:
        with pytest.raises(RolloutError):
            eng.create("delays", spec(), OLGA)

    th = threading.Thread(target=start)
    th.start()
    for _ in range(500):
        if w.serving.loading.is_set():
            break
        time.sleep(0.01)
    (rid,) = [r.id for r in eng.list(active=True)]
    assert eng.get(rid).state == "validating"
    eng2 = w.engine()  # the agent restarted (the first engine is as good as dead: its load never returns)
    assert eng2.restore() == 0
    out = eng2.get(rid)
    assert out.state == "aborted" and "restarted" in out.end_reason and out.ended_at is not None
    assert ("watchkeeper-agent", "rollout.abort") in w.audit.actions()
    assert w.serving.endpoints["delays"].route is None
    w.serving.fail_loads = True
    w.serving.load_gate.set()
    th.join(5)


def test_start_is_checked(w: World):
    eng = w.engine()
    assert err(eng.create, "nope", spec(), OLGA).status == 404
    assert err(eng.create, "delays", spec(candidate_version=1), OLGA).field == "candidate_version"
    assert err(eng.create, "delays", spec(candidate_version=9), OLGA).status == 404
    e = err(eng.create, "delays", spec(steps=steps({"set_weight": 5}, {"pause_s": 1, "approval": True})), OLGA)
    assert (e.status, e.field) == (422, "steps[1]")
    assert err(eng.create, "delays", spec(gate=[{"metric": "auc", "threshold": 0.7}]), OLGA).field == (
        "validation_dataset"
    )
    assert err(eng.create, "delays", spec(), VERA).status == 403
    rid = eng.create("delays", spec(), OLGA).id
    e = err(eng.create, "delays", spec(), OLGA)
    assert e.status == 409 and rid in e.detail
    act(eng, rid, "rollback", OLGA)  # an operator rolls back without any approval
    assert eng.get(rid).state == "rolled_back"
    assert eng.create("delays", spec(), OLGA).state == "awaiting_approval"


def test_candidate_that_fails_to_load_never_takes_traffic(w: World):
    eng = w.engine()
    w.serving.fail_loads = True
    e = err(eng.create, "delays", spec(), OLGA)
    assert (e.status, e.error) == (422, "candidate_unavailable")
    (out,) = eng.list()
    assert out.state == "aborted" and w.serving.endpoints["delays"].route is None


class _Datasets:
    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.info = DatasetInfo(name="val", version=3, digest="d" * 64, rows=frame.height, columns=frame.columns,
                                size_bytes=1, created_at=0, created_by="ci")  # fmt: skip

    def get(self, name: str, version=None) -> DatasetInfo:
        return self.info

    def load_frame(self, info: DatasetInfo) -> pl.DataFrame:
        return self.frame


def test_gate_failure_rejects_the_rollout(w: World):
    feats = [f.name for f in w.registry.get("flights", 1).signature.features]
    frame = pl.read_parquet(FLIGHTS / "reference.parquet")
    frame = frame.head(500).select([*feats, pl.col("delayed").alias("label")])
    w.datasets = _Datasets(frame)
    truth = frame["label"].to_numpy()
    rng = np.random.default_rng(1)
    good = np.clip(truth * 0.6 + rng.random(truth.size) * 0.4, 0, 1)  # ranks well
    noise = rng.random(truth.size)
    w.serving.scores = {
        1: lambda recs: (good[: len(recs)], ["delayed" if s >= 0.22 else "on_time" for s in good[: len(recs)]]),
        2: lambda recs: (noise[: len(recs)], ["delayed" if s >= 0.22 else "on_time" for s in noise[: len(recs)]]),
    }
    eng = w.engine()
    gate = [{"metric": "auc", "min_absolute_change": 0.0001}, {"metric": "accuracy", "threshold": 0.1}]
    e = err(eng.create, "delays", spec(gate=gate, validation_dataset="val"), OLGA)
    assert (e.status, e.error, e.field) == (422, "gate_failed", "gate")
    assert e.detail["passed"] is False and e.detail["dataset"] == "val:3" and e.detail["rows"] == 500
    by = {m["metric"]: m for m in e.detail["metrics"]}
    assert not by["auc"]["passed"] and by["auc"]["stable"] > 0.9 > by["auc"]["candidate"]
    assert by["accuracy"]["passed"]
    (out,) = eng.list()
    assert out.state == "rejected" and out.gate.passed is False and w.serving.endpoints["delays"].route is None
    assert ("watchkeeper-agent", "rollout.rejected") in w.audit.actions()
    # The other way round, the gate passes and is recorded with the rollout.
    w.serving.scores = {1: w.serving.scores[2], 2: w.serving.scores[1]}
    ok = eng.create("delays", spec(gate=gate, validation_dataset="val"), OLGA)
    assert ok.gate.passed and ok.gate.dataset_digest == "d" * 64


def test_endpoint_changes_outside_the_rollout(w: World):
    eng = w.engine()
    rid = eng.create("delays", spec(), OLGA).id
    w.serving.put("delays", w.serving.endpoints["delays"].config.model_copy(update={"version": 3}), "someone")
    eng.tick()
    out = eng.get(rid)
    assert out.state == "aborted" and "changed outside the rollout" in out.end_reason
    # A promotion whose endpoint event committed but whose rollout event didn't: the tick finishes it.
    w.serving.put("delays", w.serving.endpoints["delays"].config.model_copy(update={"version": 1}), "someone")
    rid = eng.create("delays", spec(), OLGA).id
    w.serving.put("delays", w.serving.endpoints["delays"].config.model_copy(update={"version": 2}), "crash")
    eng.tick()
    assert eng.get(rid).state == "promoted"


def test_rollback_after_promotion_switches_the_endpoint_back(w: World):
    eng = w.engine()
    rid = eng.create("delays", spec(strategy="bluegreen", steps=steps({"approval": True}, {"set_weight": 100}),
                                    keep_stable_warm_s=30), OLGA).id  # fmt: skip
    assert eng.get(rid).weight == 0
    out = act(eng, rid, "approve", ALICE, step_index=0)
    assert out.state == "promoted" and w.serving.endpoints["delays"].version.version == 2
    assert w.serving.pins[("flights", 1)] == 30
    loads = w.serving.loads
    out = act(eng, rid, "rollback", OLGA, reason="incident")
    assert out.state == "rolled_back" and w.serving.endpoints["delays"].version.version == 1
    assert w.serving.loads == loads  # it was kept warm
    assert err(act, eng, rid, "rollback", OLGA).status == 409


def test_a_plan_without_approvals_promotes_itself_on_record(w: World):
    eng = w.engine()
    rid = eng.create("delays", spec(steps=steps({"set_weight": 50}, {"pause_s": 10}, {"set_weight": 100})), OLGA).id
    assert eng.get(rid).state == "progressing"
    w.clock.t += 10
    eng.tick()
    out = eng.get(rid)
    assert out.state == "promoted" and out.step_index == 3 and "pause of 10 s at step 1 over" in out.end_reason
    assert w.serving.puts == [("delays", 2, "watchkeeper-agent")]
    assert ("watchkeeper-agent", "rollout.promote") in w.audit.actions()
