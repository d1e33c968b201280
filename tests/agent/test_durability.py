"""What we answered, we keep: every prediction answered 200 is in the prediction log after kill -9.

The request path journals each logged request (agent/store/journal.py) before the answer is sent; the
writer folds the journal into DuckDB and deletes it; a restart replays what a crash left, exactly once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import duckdb
import httpx

from agent.serving.predlog import JOURNAL_KEY, PredictionLog, replay_journal
from agent.store.db import open_store
from agent.store.journal import committed_seq, segments
from agent.store.writer import StoreWriter
from tests.serving.test_serving_agent import FEATURES, endpoint, reference, register, wait_loaded

# A long flush interval: on today's code everything answered since the last flush was lost.
SLOW_FLUSH = "flush_interval = 30\n"


def _log(plog: PredictionLog, rid: str, rows: int) -> None:
    num = [float(r) if r % 3 else None for r in range(rows * 2)]
    plog.log(rid, "ep", "m", 1, num, 2, ["c"] * rows, 1, [r / 10 for r in range(rows)], ["x"] * rows, 1.0, "ok", None)


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT request_id, count(*) FROM predictions GROUP BY 1").fetchall())


def test_journaled_requests_are_replayed_once_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    db, jdir = tmp_path / "wk.duckdb", tmp_path / "journal"
    store = open_store(db)
    rep = replay_journal(store.con, jdir)
    assert (rep.requests, rep.rows) == (0, 0)
    w = StoreWriter(store.con, flush_interval=60)  # never started: nothing reaches DuckDB but the journal
    plog = PredictionLog(w)
    plog.attach_journal(rep.journal)
    for i in range(50):
        _log(plog, f"r{i}", 1 + i % 4)
    # a crash mid-write leaves half a record at the end of the segment
    seg = segments(jdir)[-1].path
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")
    crashed = seg.read_bytes()
    store.con.close()  # the "crash": the queue in memory is gone

    store = open_store(db)
    rep = replay_journal(store.con, jdir)
    assert (rep.requests, rep.rows) == (50, sum(1 + i % 4 for i in range(50)))
    assert _counts(store.con) == {f"r{i}": 1 + i % 4 for i in range(50)}
    num = store.con.execute("SELECT num FROM predictions WHERE request_id = 'r3' ORDER BY row_idx").fetchall()
    assert num[0][0] == [None, 1.0] and num[1][0] == [2.0, None]
    assert [p.name for p in jdir.iterdir()] == [segments(jdir)[0].path.name]  # replayed segments deleted
    # a segment committed but not yet deleted (a crash between the two) is not replayed again
    old = seg.with_name(f"{committed_seq(store.con, JOURNAL_KEY):012d}.wkj")
    old.write_bytes(crashed)
    rep.journal.close()
    rep = replay_journal(store.con, jdir)
    assert rep.requests == 0 and _counts(store.con)["r0"] == 1
    store.con.close()


def test_the_writer_commits_a_batch_with_its_journal_position_and_deletes_the_segments(tmp_path: Path) -> None:
    store = open_store(tmp_path / "wk.duckdb")
    rep = replay_journal(store.con, tmp_path / "journal")
    w = StoreWriter(store.con, flush_interval=60)
    plog = PredictionLog(w)
    plog.attach_journal(rep.journal)
    w.start()
    for i in range(20):
        _log(plog, f"a{i}", 2)
    assert len(segments(tmp_path / "journal")) == 1
    w.flush()
    assert committed_seq(store.con, JOURNAL_KEY) == segments(tmp_path / "journal")[0].seq - 1
    assert len(segments(tmp_path / "journal")) == 1  # only the fresh, empty segment is left
    assert segments(tmp_path / "journal")[0].path.stat().st_size == 0
    for i in range(5):
        _log(plog, f"b{i}", 1)
    w.stop()
    plog.close_journal()
    assert segments(tmp_path / "journal") == []  # a clean stop leaves no journal behind
    assert sum(_counts(store.con).values()) == 45
    store.con.close()


def test_a_journal_past_its_bound_stops_writing_and_counts_until_the_writer_catches_up(tmp_path: Path) -> None:
    store = open_store(tmp_path / "wk.duckdb")
    rep = replay_journal(store.con, tmp_path / "journal")
    rep.journal.max_pending_bytes = 2000
    w = StoreWriter(store.con, flush_interval=60)
    plog = PredictionLog(w)
    plog.attach_journal(rep.journal)
    for i in range(40):
        _log(plog, f"a{i}", 2)
    assert plog.unjournaled > 0 and rep.journal.pending_bytes >= 2000
    w.start()
    w.flush()  # committed: the journal is released and writes again
    assert rep.journal.pending_bytes == 0
    skipped = plog.unjournaled
    _log(plog, "b", 1)
    assert plog.unjournaled == skipped and rep.journal.pending_bytes > 0
    w.stop()
    plog.close_journal()
    store.con.close()


def test_records_that_cannot_be_replayed_are_moved_aside_and_reported(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    store = open_store(tmp_path / "wk.duckdb")
    rep = replay_journal(store.con, jdir)
    rep.journal.append(b'["not", "a", "logged request"]')  # intact framing, unusable content
    rep.journal.close()
    rep = replay_journal(store.con, jdir)
    assert rep.requests == 0 and rep.problem is not None and "replay failed" in rep.problem
    assert [p.name for p in jdir.iterdir() if ".wkj.failed-" in p.name]
    assert segments(jdir)[0].path.stat().st_size == 0  # a fresh segment: the agent starts
    assert store.con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    store.con.close()


# --------------------------------------------------------------------------- a real agent, kill -9 under load


def _load(url: str, token: str, answered: dict[str, int], stop: threading.Event, tag: str) -> None:
    """Predict until stopped; record every request id answered 200 and its row count."""
    recs = reference(64).select(FEATURES).to_dicts()
    i = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
        while not stop.is_set():
            n = 1 + i % 3
            rid = f"{tag}-{i}"
            i += 1
            try:
                r = c.post(
                    "/api/v1/endpoints/delays/predict",
                    json={"records": recs[i % 60 : i % 60 + n]},
                    headers={"X-Request-Id": rid},
                )
            except httpx.HTTPError:
                continue  # the agent is gone: this one was never answered
            if r.status_code == 200:
                answered[rid] = n


def _logged(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return _counts(con)
    finally:
        con.close()


def test_every_prediction_answered_before_kill9_is_in_the_log_exactly_once(agent_factory) -> None:
    a = agent_factory("dur", config=SLOW_FLUSH)
    with a.client() as c:
        register(c)
        endpoint(c)
        wait_loaded(c)
    answered: dict[str, int] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(a.url, a.token, answered, stop, f"t{k}"), daemon=True) for k in range(2)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20  # well inside the 30 s flush interval: all of it is unflushed
    while len(answered) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    a.kill()  # mid-load: requests in flight fail, every one answered before this must be kept
    stop.set()
    for t in threads:
        t.join(10)
    assert len(answered) >= 300
    assert any(p.suffix == ".wkj" and p.stat().st_size for p in (a.data_dir / "journal").iterdir())

    a.start()  # replays the journal before it serves
    a.kill()  # and crashes again right away: the replay must not be repeated
    a.start()
    a.stop()
    logged = _logged(a.data_dir / "watchkeeper.duckdb")
    missing = sorted(set(answered) - set(logged))
    assert not missing, f"{len(missing)} of {len(answered)} answered requests not logged, e.g. {missing[:5]}"
    wrong = {rid: (n, logged[rid]) for rid, n in answered.items() if logged[rid] != n}
    assert not wrong, f"rows per request (answered, logged) differ: {dict(list(wrong.items())[:5])}"
    assert os.listdir(a.data_dir / "journal") == []
