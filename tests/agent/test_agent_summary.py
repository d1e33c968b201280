"""`GET /api/v1/summary` on a real agent process: the fleet screen's one request, with ETag / 304."""

from __future__ import annotations

import time

import httpx

from agent.schemas import AgentSummary, Snapshot


def test_summary_carries_the_newest_sample_and_feature_counts_and_answers_304_when_unchanged(agent_factory):
    # A long sample interval: the summary stays the same between two requests.
    a = agent_factory("sum1", simulate_gpus=2, sample_interval=30.0)
    with a.client() as c:
        r = c.get("/api/v1/summary")
        assert r.status_code == 200, r.text
        summary = AgentSummary.model_validate(r.json())
        snap = Snapshot.model_validate(c.get("/api/v1/snapshot").json())
        assert summary.agent_name == "sum1" and summary.sample_interval_s == 30.0
        assert summary.snapshot is not None and summary.snapshot.ts == snap.ts and len(summary.snapshot.gpus) == 2
        # Lean: the fleet table's figures, not the process lists and the rest (`/snapshot` keeps them).
        lean = summary.snapshot
        assert summary.snapshot_lean is True
        assert snap.top_rss and snap.disks and snap.cpu.per_core
        assert lean.top_cpu == [] and lean.top_rss == [] and lean.disks == [] and lean.cpu.per_core == []
        assert all(g.processes == [] for g in lean.gpus)
        assert lean.cpu.percent == snap.cpu.percent and lean.memory == snap.memory and lean.hostname == snap.hostname
        assert [(g.utilization_percent, g.memory_used_bytes) for g in lean.gpus] == [
            (g.utilization_percent, g.memory_used_bytes) for g in snap.gpus
        ]
        # Features running on this agent give counts (zeros), not None.
        assert summary.alerts_firing == {} and summary.alerts_pending == 0
        assert summary.rollouts_active == 0 and summary.rollouts_awaiting_approval == 0
        assert summary.endpoints == []
        etag = r.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')

        again = c.get("/api/v1/summary", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        other = c.get("/api/v1/summary", headers={"If-None-Match": '"not-it"'})
        assert other.status_code == 200 and other.headers["etag"] == etag


def test_summary_changes_its_etag_with_a_new_sample_and_needs_a_token(agent_factory):
    a = agent_factory("sum2", sample_interval=0.2)
    with httpx.Client(base_url=a.url, timeout=10) as anon:
        assert anon.get("/api/v1/summary").status_code == 401
    with a.client() as c:
        first = c.get("/api/v1/summary")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            later = c.get("/api/v1/summary", headers={"If-None-Match": first.headers["etag"]})
            if later.status_code == 200:
                break
            time.sleep(0.1)
        assert later.status_code == 200 and later.headers["etag"] != first.headers["etag"]
        assert later.json()["snapshot"]["ts"] > first.json()["snapshot"]["ts"]
