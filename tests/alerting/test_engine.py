"""The alert state machine against a real store: pending, firing, resolved, dedup, silence, ack, restart."""

from __future__ import annotations

import json

from agent.alerting.engine import AlertEngine, fingerprint
from agent.alerting.rules import DEFAULT_RULES, Signal
from agent.config import AlertRuleConfig
from tests.alerting.conftest import Clock, Recorder


def rule(name: str = "errors", kind: str = "error_rate", threshold: float | None = 0.05, for_s: float = 60, **kw):
    return AlertRuleConfig.model_validate(
        {"name": name, "kind": kind, "threshold": threshold, "for": for_s, "severity": "critical", **kw}
    )


def err(value: float | None, endpoint: str = "delays") -> Signal:
    return Signal("error_rate", endpoint, None, value, 0.05, False, f"error rate {value}", {"model": "flights"})


def engine(store, rules, clock=None, notifier=None) -> tuple[AlertEngine, Recorder, Clock]:
    clock = clock or Clock()
    notifier = notifier if notifier is not None else Recorder()
    return AlertEngine(store.writer, store.reader, rules, "host-1", notifier, clock=clock), notifier, clock


def rows(store) -> dict[str, dict]:
    cur = store.reader.con.cursor()
    try:
        return {fp: {"state": st, **json.loads(body)} for fp, body, st in cur.execute(
            "SELECT fingerprint, body, state FROM alerts").fetchall()}  # fmt: skip
    finally:
        cur.close()


def events(store, fp: str) -> list[str]:
    cur = store.reader.con.cursor()
    try:
        return [r[0] for r in cur.execute(
            "SELECT event FROM alert_events WHERE fingerprint = ? ORDER BY ts, rowid", [fp]).fetchall()]  # fmt: skip
    finally:
        cur.close()


def test_pending_then_firing_after_for_notified_once(store):
    e, sent, clock = engine(store, [rule()])
    fp = fingerprint("errors", "delays", None)
    [a] = e.evaluate([err(0.2)], clock.t)
    assert a.state == "pending" and a.fingerprint == fp and a.started_at == clock.t and a.host == "host-1"
    assert a.threshold == 0.05 and a.value == 0.2 and "threshold 0.05" in a.summary
    assert e.evaluate([err(0.3)], clock.t + 30) == []  # still pending: held 30 of 60 s
    assert sent.sent == []
    [a] = e.evaluate([err(0.3)], clock.t + 60)
    assert a.state == "firing" and a.firing_at == clock.t + 60 and a.value == 0.3
    assert sent.statuses_of("firing") == [fp]
    for dt in (75, 90, 105):  # breached on: one instance, one notification
        e.evaluate([err(0.4)], clock.t + dt)
    assert sent.statuses_of("firing") == [fp]
    assert [x.fingerprint for x in e.list()] == [fp]
    assert rows(store)[fp]["state"] == "firing"
    assert events(store, fp) == ["pending", "firing", "notified"]


def test_for_zero_fires_at_first_breach(store):
    e, sent, clock = engine(store, [rule(for_s=0)])
    [a] = e.evaluate([err(0.5)], clock.t)
    assert a.state == "firing" and len(sent.sent) == 1


def test_resolves_when_no_longer_breached_and_notifies_resolved(store):
    e, sent, clock = engine(store, [rule(for_s=0)])
    fp = fingerprint("errors", "delays", None)
    e.evaluate([err(0.5)], clock.t)
    [a] = e.evaluate([err(0.01)], clock.t + 15)
    assert a.state == "resolved" and a.resolved_at == clock.t + 15
    assert [s for _, s, _ in sent.sent] == ["firing", "resolved"]
    assert e.list(state="firing") == [] and [x.state for x in e.list(state="resolved")] == ["resolved"]
    assert rows(store)[fp]["state"] == "resolved"
    assert e.evaluate([err(0.01)], clock.t + 30) == []  # nothing more happens


def test_pending_that_clears_before_for_is_dropped_silently(store):
    e, sent, clock = engine(store, [rule(for_s=60)])
    fp = fingerprint("errors", "delays", None)
    e.evaluate([err(0.5)], clock.t)
    e.evaluate([err(0.0)], clock.t + 15)
    assert sent.sent == [] and e.list() == [] and fp not in rows(store)
    assert events(store, fp) == ["pending", "cancelled"]


def test_breach_again_after_resolve_is_a_new_instance(store):
    e, sent, clock = engine(store, [rule(for_s=0)])
    e.evaluate([err(0.5)], clock.t)
    e.evaluate([err(0.0)], clock.t + 15)
    [again] = e.evaluate([err(0.6)], clock.t + 30)
    assert again.state == "firing" and again.started_at == clock.t + 30 and again.resolved_at is None
    listed = e.list()
    assert [(x.state, x.started_at) for x in listed] == [("firing", clock.t + 30), ("resolved", clock.t)]
    assert [s for _, s, _ in sent.sent] == ["firing", "resolved", "firing"]


def test_disappearing_signal_resolves_unless_its_source_was_not_read(store):
    drift = rule("drift", "feature_drift", None, 0)
    e, _, clock = engine(store, [rule(for_s=0), drift])
    feat = Signal("feature_drift", "delays", "distance", 0.4, 0.2, True, "distance drifted", {})
    e.evaluate([err(0.5), feat], clock.t)
    assert len(e.list(state="firing")) == 2
    # the monitor could not be read: only serving kinds are covered, the drift alert stays
    e.evaluate([err(0.5)], clock.t + 15, covered={"error_rate", "latency_p99", "fallback_rate", "outage"})
    assert {a.rule for a in e.list(state="firing")} == {"errors", "drift"}
    # the endpoint went away: both signals gone, both resolve
    changed = e.evaluate([], clock.t + 30)
    assert {(a.rule, a.state) for a in changed} == {("errors", "resolved"), ("drift", "resolved")}


def test_worst_signal_wins_per_fingerprint_and_each_rule_judges_with_its_threshold(store):
    warn = rule("errors-warn", threshold=0.05, for_s=0, severity="warning")
    crit = rule("errors-crit", threshold=0.5, for_s=0)
    e, _, clock = engine(store, [warn, crit])
    changed = e.evaluate([err(0.1)], clock.t)
    assert [(a.rule, a.severity) for a in changed] == [("errors-warn", "warning")]
    e.evaluate([err(0.7)], clock.t + 15)
    assert {a.rule for a in e.list(state="firing")} == {"errors-warn", "errors-crit"}
    # two signals with one fingerprint (e.g. two baselines): one instance, breached if either is
    drift = rule("drift", "feature_drift", None, 0)
    e2, _, _ = engine(store, [drift])
    a = Signal("feature_drift", "d2", "x", 0.05, 0.2, False, "ok vs reference", {"baseline": "reference"})
    b = Signal("feature_drift", "d2", "x", 0.4, 0.2, True, "drifted vs previous", {"baseline": "previous"})
    [out] = e2.evaluate([a, b], clock.t)
    assert out.state == "firing" and out.labels["baseline"] == "previous"


def test_rule_endpoint_filter_and_unknown_quality_metric(store):
    only = rule(for_s=0, endpoints=["checkout"])
    q = rule("auc", "quality_drop", 0.05, 0)  # no metric: auc for a binary model
    e, _, clock = engine(store, [only, q])
    qs = [
        Signal("quality_drop", "delays", "auc", 0.2, 0.05, True, "auc down", {"model_kind": "binary"}),
        Signal("quality_drop", "delays", "accuracy", 0.3, 0.05, True, "acc down", {"model_kind": "binary"}),
    ]
    changed = e.evaluate([err(0.9), err(0.9, "checkout"), *qs], clock.t)
    assert sorted((a.rule, a.endpoint, a.subject) for a in changed) == [
        ("auc", "delays", "auc"),
        ("errors", "checkout", None),
    ]


def test_bad_signals_never_raise(store):
    e, _, clock = engine(store, [rule(for_s=0)])
    bad = Signal("error_rate", "delays", None, "high", 0.05, True, "?", {})  # type: ignore[arg-type]
    assert e.evaluate([bad, None, err(0.5)], clock.t)  # type: ignore[list-item]
    assert [a.value for a in e.list()] == [0.5]


def test_silence_suppresses_notifications_until_it_expires(store):
    e, sent, clock = engine(store, [rule(for_s=0)])
    fp = fingerprint("errors", "delays", None)
    e.evaluate([err(0.5)], clock.t)
    e.evaluate([err(0.0)], clock.t + 10)
    assert [s for _, s, _ in sent.sent] == ["firing", "resolved"]
    clock.t += 20
    s = e.silence(fp, 100, "alice", "known flaky")
    assert s.silenced_until == clock.t + 100 and s.silenced_by == "alice"
    e.evaluate([err(0.5)], clock.t + 5)  # a new instance under the fingerprint's silence
    e.evaluate([err(0.0)], clock.t + 10)
    e.evaluate([err(0.5)], clock.t + 20)
    assert len(sent.sent) == 2  # nothing while silenced
    firing = e.list(state="firing")[0]
    assert firing.silenced_until == clock.t + 100  # still listed, and says so
    e.evaluate([err(0.5)], clock.t + 101)  # the silence ended and it still fires: notified now
    assert [s for _, s, _ in sent.sent] == ["firing", "resolved", "firing"]
    e.evaluate([err(0.5)], clock.t + 120)
    assert len(sent.sent) == 3
    assert "silence" in events(store, fp)


def test_ack_is_recorded_and_persisted(store):
    e, sent, clock = engine(store, [rule(for_s=0)])
    fp = fingerprint("errors", "delays", None)
    assert e.ack(fp, "bob") is None  # unknown yet
    e.evaluate([err(0.5)], clock.t)
    clock.t += 5
    a = e.ack(fp, "bob", "looking")
    assert a.acked_by == "bob" and a.acked_at == clock.t and a.state == "firing"
    assert rows(store)[fp]["acked_by"] == "bob"
    assert a.ack_comment == "looking" and rows(store)[fp]["ack_comment"] == "looking"  # the alert carries it
    assert e.silence(fp, 600, "carol", "until the deploy").silence_comment == "until the deploy"
    assert events(store, fp)[-2] == "ack"
    cur = store.reader.con.cursor()
    detail = json.loads(cur.execute("SELECT detail FROM alert_events WHERE event = 'ack'").fetchone()[0])
    cur.close()
    assert detail == {"principal": "bob", "comment": "looking"}
    assert len(sent.sent) == 1  # an ack sends nothing


def test_restart_restores_state_without_renotifying(store):
    rules = [rule(for_s=0), rule("slow", "latency_p99", 100.0, 60)]
    e, _, clock = engine(store, rules)
    slow = Signal("latency_p99", "delays", None, 400.0, 250.0, True, "p99 400 ms", {})
    e.evaluate([err(0.5), slow], clock.t)
    assert {a.rule: a.state for a in e.list()} == {"errors": "firing", "slow": "pending"}
    fp_err = fingerprint("errors", "delays", None)
    # "restart": a new engine and notifier over the same store
    e2, sent2, _ = engine(store, rules, clock=Clock(clock.t + 30))
    assert e2.load() == 2
    assert {a.rule: a.state for a in e2.list()} == {"errors": "firing", "slow": "pending"}
    e2.evaluate([err(0.5), slow], clock.t + 30)
    assert sent2.sent == []  # firing was notified before the restart; slow is held 30 of 60 s
    e2.evaluate([err(0.5), slow], clock.t + 60)  # the hold counts from the first breach, before restart
    assert sent2.statuses_of("firing") == [fingerprint("slow", "delays", None)]
    e2.evaluate([err(0.0), slow], clock.t + 75)
    assert sent2.statuses_of("resolved") == [fp_err]  # it had been notified, so its end is too


def test_rules_removed_from_config_resolve_restored_alerts(store):
    e, _, clock = engine(store, [rule(for_s=0)])
    e.evaluate([err(0.5)], clock.t)
    e2, _, _ = engine(store, [])
    e2.load()
    [a] = e2.evaluate([], clock.t + 10, covered=set())
    assert a.state == "resolved" and e2.rules_out() == []


def test_history_is_bounded(store):
    e = AlertEngine(store.writer, store.reader, [rule(for_s=0)], "h", Recorder(), clock=Clock(), max_resolved=3)
    t = 1_700_000_000.0
    for i in range(6):
        e.evaluate([err(0.5, f"ep{i}")], t + 10 * i)
        e.evaluate([], t + 10 * i + 5)
    listed = e.list()
    assert len(listed) == 3 and [a.endpoint for a in listed] == ["ep5", "ep4", "ep3"]
    assert len(rows(store)) == 3


def test_default_rules_and_rules_out(store):
    e, _, _ = engine(store, None)
    out = {r.name: r for r in e.rules_out()}
    assert set(out) == {r.name for r in DEFAULT_RULES}
    assert out["error_rate"].threshold == 0.05 and out["error_rate"].severity == "critical"
    assert out["latency_p99"].for_s == 60 and out["feature_drift"].for_s == 0


def drifted(feature: str, value: float, breached: bool = True, endpoint: str = "delays") -> Signal:
    return Signal("feature_drift", endpoint, feature, value, 0.2, breached, f"{feature} drifted: psi {value}", {})


def test_a_dozen_drifting_features_are_one_alert_per_endpoint_listing_them(store):
    e, sent, clock = engine(store, [r for r in DEFAULT_RULES if r.kind == "feature_drift"])
    names = [f"f{i:02d}" for i in range(13)]
    sigs = [drifted(n, 0.3 + i / 100) for i, n in enumerate(names)] + [drifted("calm", 0.01, breached=False)]
    changed = e.evaluate([*sigs, drifted("x", 0.5, endpoint="other")], clock.t)
    assert sorted((a.endpoint, a.state) for a in changed) == [("delays", "firing"), ("other", "firing")]
    [a] = [a for a in changed if a.endpoint == "delays"]
    assert a.fingerprint == fingerprint("feature_drift", "delays", None) and len(sent.sent) == 2
    assert a.labels["features"].split(",") == sorted(names, reverse=True)  # worst first
    assert a.subject == "f12, f11, f10 +10" and a.value == 0.42
    assert a.summary.startswith("feature drift on 13 of 14 features: f12 drifted: psi 0.42 (threshold 0.2)")
    assert a.summary.endswith("; and 8 more")
    # Features coming and going change the one alert in place: no new alert, no new notification.
    e.evaluate(sigs[:2], clock.t + 60)
    [a] = [x for x in e.list(state="firing") if x.endpoint == "delays"]
    assert a.labels["features"] == "f01,f00" and len(sent.statuses_of("firing")) == 2


def test_a_flapping_drift_alert_is_held_firing_until_clear_for_keep_firing_for(store):
    e, sent, clock = engine(store, [r for r in DEFAULT_RULES if r.kind == "feature_drift"])
    t = clock.t
    e.evaluate([drifted("temp", 0.4)], t)
    # Clear for one window, drifted again in the next: one firing instance, nothing re-sent.
    assert e.evaluate([drifted("temp", 0.1, breached=False)], t + 60) == []
    [held] = e.list(state="firing")
    assert held.summary.endswith("(clear now; held firing against flapping)")
    e.evaluate([drifted("temp", 0.5)], t + 120)
    [again] = e.list(state="firing")
    assert again.started_at == t and "held" not in again.summary and again.value == 0.5
    # Clear from t+180: still firing at t+420, resolved once 300 s clear.
    for dt in (180, 240, 300, 360, 420):
        assert e.evaluate([drifted("temp", 0.1, breached=False)], t + dt) == []
    [done] = e.evaluate([drifted("temp", 0.1, breached=False)], t + 480)
    assert done.state == "resolved" and [s for _, s, _ in sent.sent] == ["firing", "resolved"]


def test_group_by_subject_and_no_hold_can_be_configured(store):
    per_feature = rule("drift", "feature_drift", None, 0, group_by="subject", keep_firing_for=0)
    e, _, clock = engine(store, [per_feature])
    changed = e.evaluate([drifted("temp", 0.4), drifted("distance", 0.3)], clock.t)
    assert sorted(a.subject for a in changed) == ["distance", "temp"]
    changed = e.evaluate([drifted("temp", 0.1, breached=False), drifted("distance", 0.3)], clock.t + 60)
    assert [(a.subject, a.state) for a in changed] == [("temp", "resolved")]
    # Error-rate alerts are neither grouped nor held by default.
    assert {(r.name, r.group_by, r.keep_firing_for_s) for r in e.rules_out() if r.name == "drift"} == {
        ("drift", "subject", 0.0)
    }


def test_a_batch_of_changes_is_written_with_each_alerts_last_word(store) -> None:
    """Ops are written grouped by kind (one statement each), not in order: what each alert's row ends as must
    still be what replaying them in order gives, whatever the other alerts did in the same batch."""
    from agent.alerting.engine import _write_ops
    from agent.schemas import AlertOut

    def alert(fp: str, state: str) -> AlertOut:
        return AlertOut(fingerprint=fp, rule="r", kind="k", severity="warning", state=state, summary=fp,
                        started_at=1.0, updated_at=2.0)  # fmt: skip

    def rows() -> dict[str, str]:
        return store.writer.call(lambda con: dict(con.execute("SELECT fingerprint, state FROM alerts").fetchall()))

    def write(ops: list) -> None:
        def tx(con) -> None:
            con.execute("BEGIN TRANSACTION")
            _write_ops(con, ops)
            con.execute("COMMIT")

        store.writer.call(tx)

    write([("upsert", alert("old-resolved", "resolved")), ("upsert", alert("old-firing", "firing")),
           ("upsert", alert("gone", "firing"))])  # fmt: skip
    write([
        ("upsert", alert("a", "pending")), ("event", 1.0, "a", "pending", {}),
        ("upsert", alert("a", "firing")), ("event", 2.0, "a", "firing", {"value": 3}),
        ("upsert", alert("b", "resolved")), ("delete_resolved", "b"),  # resolved then pruned: gone
        ("upsert", alert("c", "firing")), ("delete_resolved", "c"),  # not resolved: prune keeps it
        ("delete_resolved", "old-resolved"), ("delete_resolved", "old-firing"),  # decided by the stored row
        ("delete", "gone"),
        ("delete", "d"), ("upsert", alert("d", "pending")),  # deleted, then written again
    ])  # fmt: skip
    assert rows() == {"a": "firing", "c": "firing", "old-firing": "firing", "d": "pending"}
    events = store.writer.call(
        lambda con: con.execute("SELECT fingerprint, event, detail FROM alert_events").fetchall()
    )
    assert sorted(events) == [("a", "firing", '{"value": 3}'), ("a", "pending", "{}")]
