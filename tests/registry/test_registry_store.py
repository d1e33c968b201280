"""The Registry against a real store: immutability, digests, version numbers, alias events, subscribers."""

from __future__ import annotations

import importlib.util
import stat
import threading
from pathlib import Path

import pytest

from agent.registry.store import (
    Conflict,
    Invalid,
    InvalidModel,
    NotFound,
    Registry,
    RegistryError,
    reset_tmp_dir,
)
from agent.schemas import AliasEvent, AliasMove
from agent.store.db import open_store
from agent.store.writer import StoreWriter
from tests.registry.helpers import TINY, TWO_INPUTS, WIDE, meta_model, sha256, variant, write


@pytest.fixture
def store(tmp_path: Path):
    opened = open_store(tmp_path / "wk.duckdb")
    w = StoreWriter(opened.con, flush_interval=60)
    w.start()
    yield opened, w
    w.stop()
    opened.con.close()


@pytest.fixture
def reg(store, tmp_path: Path) -> Registry:
    opened, w = store
    return Registry(w, opened.con, tmp_path / "models", tmp_path / "tmp")


def upload(reg: Registry, data: bytes, name: str = "upload.part") -> Path:
    return write(reg.tmp_dir, data, name)


def row(store, name: str, version: int) -> tuple:
    opened, _ = store
    cur = opened.con.cursor()
    try:
        return cur.execute("SELECT * FROM model_versions WHERE name = ? AND version = ?", [name, version]).fetchone()
    finally:
        cur.close()


def test_register_records_digest_and_places_a_read_only_artifact(reg, store, tmp_path):
    src = upload(reg, TINY)
    mv = reg.register("fraud", meta_model(), src, "alice")
    assert (mv.name, mv.version, mv.digest, mv.size_bytes) == ("fraud", 1, sha256(TINY), len(TINY))
    assert mv.created_by == "alice" and mv.has_profile and mv.metrics == {"auc": 0.71, "logloss": 0.52}
    assert mv.lineage.build_id == "ci-1234" and mv.signature.features[1].categories == ["AA", "UA"]
    path = reg.artifact_path("fraud", 1)
    assert path == tmp_path / "models" / "fraud" / "1" / "model.onnx"
    assert path.read_bytes() == TINY and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert not src.exists()  # moved, not copied
    r = row(store, "fraud", 1)
    assert r[:6] == ("fraud", 1, sha256(TINY), len(TINY), "onnx", mv.created_at)
    assert reg.get("fraud", 1) == mv
    assert reg.profile("fraud", 1) == {"features": {"distance": {"mean": 1040.0, "p50": 872.0}}}


def test_versions_are_immutable_and_a_duplicate_digest_is_refused(reg, store):
    reg.register("fraud", meta_model(), upload(reg, TINY), "alice")
    before_row, path = row(store, "fraud", 1), reg.artifact_path("fraud", 1)
    before_stat = path.stat()

    again = upload(reg, TINY)
    with pytest.raises(Conflict) as exc:
        reg.register("fraud", meta_model(description="a retry"), again, "bob")
    assert exc.value.error == "duplicate_artifact" and exc.value.field == "artifact"
    assert "version 1" in exc.value.detail
    assert again.exists()  # refused uploads are left to the caller to delete

    v2 = reg.register("fraud", meta_model(description="retrained"), upload(reg, variant(1)), "bob")
    assert v2.version == 2 and v2.digest == sha256(variant(1))
    assert row(store, "fraud", 1) == before_row
    after = path.stat()
    assert path.read_bytes() == TINY and (after.st_mtime_ns, after.st_ino) == (
        before_stat.st_mtime_ns,
        before_stat.st_ino,
    )
    assert reg.get("fraud", 1).description == "tiny logistic model for registry tests"
    # The same bytes under another name are another model's version 1.
    assert reg.register("fraud-eu", meta_model(), upload(reg, TINY), "bob").version == 1


def test_concurrent_registrations_get_distinct_versions(reg):
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def one(i: int) -> None:
        src = upload(reg, variant(i + 1), f"u{i}.part")
        start.wait()
        try:
            results.append(reg.register("fraud", meta_model(), src, f"ci-{i}").version)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(1, 9))
    versions = reg.list_versions("fraud")
    assert [v.version for v in versions] == list(range(1, 9))
    assert len({v.digest for v in versions}) == 8
    for v in versions:
        assert sha256(reg.artifact_path("fraud", v.version).read_bytes()) == v.digest


def test_alias_events_are_append_only_with_history(reg, store):
    for i in range(3):
        reg.register("fraud", meta_model(), upload(reg, variant(i)), "alice")
    e1 = reg.move_alias("fraud", "prod", AliasMove(version=1, reason="first"), "alice")
    assert (e1.from_version, e1.to_version, e1.principal, e1.reason) == (None, 1, "alice", "first")
    e2 = reg.move_alias("fraud", "prod", AliasMove(version=3, reason="better auc"), "bob")
    assert (e2.from_version, e2.to_version) == (1, 3)
    reg.move_alias("fraud", "canary", AliasMove(version=2), "bob")
    e3 = reg.move_alias("fraud", "prod", AliasMove(version=1, reason="rollback"), "carol")
    assert (e3.from_version, e3.to_version) == (3, 1)
    # moving it where it already points records nothing
    assert reg.move_alias("fraud", "prod", AliasMove(version=1, reason="again"), "carol") == e3

    assert reg.aliases("fraud") == {"canary": 2, "prod": 1}
    assert [(e.from_version, e.to_version) for e in reg.alias_history("fraud", "prod")] == [(None, 1), (1, 3), (3, 1)]
    assert [e.alias for e in reg.alias_history("fraud")] == ["prod", "prod", "canary", "prod"]
    opened, _ = store
    seqs = [r[0] for r in opened.con.cursor().execute("SELECT seq FROM alias_events ORDER BY seq").fetchall()]
    assert seqs == [1, 2, 3, 4]
    assert reg.get("fraud", 1).aliases == ["prod"] and reg.get("fraud", 2).aliases == ["canary"]
    assert reg.get("fraud", 3).aliases == []
    assert reg.resolve("fraud", alias="prod").version == 1
    assert reg.resolve("fraud", version=3).version == 3
    (summary,) = reg.list_models()
    assert (summary.name, summary.latest_version, summary.versions) == ("fraud", 3, 3)
    assert summary.aliases == {"canary": 2, "prod": 1} and summary.updated_at == e3.ts


def test_alias_and_lookup_errors_name_the_field(reg):
    reg.register("fraud", meta_model(), upload(reg, TINY), "alice")
    cases = [
        (lambda: reg.move_alias("fraud", "prod", AliasMove(version=7), "a"), Invalid, "version"),
        (lambda: reg.move_alias("nope", "prod", AliasMove(version=1), "a"), NotFound, "name"),
        (lambda: reg.move_alias("fraud", "history", AliasMove(version=1), "a"), Invalid, "alias"),
        (lambda: reg.move_alias("fraud", "bad alias", AliasMove(version=1), "a"), Invalid, "alias"),
        (lambda: reg.get("fraud", 2), NotFound, "version"),
        (lambda: reg.get("nope", 1), NotFound, "name"),
        (lambda: reg.resolve("fraud", alias="prod"), NotFound, "alias"),
        (lambda: reg.resolve("fraud"), Invalid, "alias"),
        (lambda: reg.resolve("fraud", version=1, alias="prod"), Invalid, "version"),
        (lambda: reg.alias_history("nope"), NotFound, "name"),
    ]
    for call, kind, field in cases:
        with pytest.raises(kind) as exc:
            call()
        assert exc.value.field == field, exc.value.detail
    assert reg.alias_history("fraud") == []


def test_subscribers_hear_alias_moves_outside_the_lock(reg):
    reg.register("fraud", meta_model(), upload(reg, TINY), "alice")
    reg.register("fraud", meta_model(), upload(reg, variant(1)), "alice")
    heard: list[tuple[AliasEvent, bool, int]] = []

    def listener(ev: AliasEvent) -> None:
        # A subscriber may call back into the registry (the serving layer re-resolves endpoints).
        heard.append((ev, reg._lock.locked(), reg.resolve(ev.model, alias=ev.alias).version))

    def broken(_ev: AliasEvent) -> None:
        raise RuntimeError("a broken subscriber must not undo the move")

    unsubscribe = reg.subscribe(listener)
    reg.subscribe(broken)
    reg.move_alias("fraud", "prod", AliasMove(version=1), "a")
    reg.move_alias("fraud", "prod", AliasMove(version=1), "a")  # no move, no news
    reg.move_alias("fraud", "prod", AliasMove(version=2), "a")
    assert [(e.to_version, locked, resolved) for e, locked, resolved in heard] == [(1, False, 1), (2, False, 2)]
    unsubscribe()
    reg.move_alias("fraud", "prod", AliasMove(version=1), "a")
    assert len(heard) == 2 and reg.aliases("fraud") == {"prod": 1}


def test_a_failed_audit_registers_nothing(reg, store, tmp_path):
    def refuse(_detail: dict) -> None:
        raise RuntimeError("audit log unavailable")

    src = upload(reg, TINY)
    with pytest.raises(RuntimeError):
        reg.register("fraud", meta_model(), src, "alice", audit=refuse)
    assert reg.list_models() == [] and row(store, "fraud", 1) is None
    assert not (tmp_path / "models" / "fraud" / "1").exists()
    seen: list[dict] = []
    mv = reg.register("fraud", meta_model(), src, "alice", audit=seen.append)
    assert mv.version == 1
    assert seen == [
        {
            "version": 1,
            "digest": sha256(TINY),
            "size_bytes": len(TINY),
            "format": "onnx",
            "lineage": mv.lineage.model_dump(mode="json"),
        }
    ]
    with pytest.raises(RuntimeError):
        reg.move_alias("fraud", "prod", AliasMove(version=1), "a", audit=refuse)
    assert reg.aliases("fraud") == {} and reg.alias_history("fraud") == []


def test_state_is_reloaded_and_orphans_swept_on_start(reg, store, tmp_path):
    reg.register("fraud", meta_model(), upload(reg, TINY), "alice")
    reg.register("fraud", meta_model(profile=None), upload(reg, variant(1)), "alice")
    reg.move_alias("fraud", "prod", AliasMove(version=2), "alice")
    # a crash between placing an artifact and committing its row leaves a directory behind
    orphan = tmp_path / "models" / "fraud" / "3"
    orphan.mkdir()
    (orphan / "model.onnx").write_bytes(b"half")
    (orphan / "model.onnx").chmod(0o444)
    (reg.tmp_dir / "upload-leftover.part").write_bytes(b"x")

    opened, w = store
    again = Registry(w, opened.con, tmp_path / "models", tmp_path / "tmp")
    assert not orphan.exists()
    assert [v.version for v in again.list_versions("fraud")] == [1, 2]
    assert again.get("fraud", 1) == reg.get("fraud", 1)
    assert again.get("fraud", 2).aliases == ["prod"] and not again.get("fraud", 2).has_profile
    assert again.profile("fraud", 1) is not None and again.profile("fraud", 2) is None
    assert again.register("fraud", meta_model(), upload(again, variant(2)), "a").version == 3
    reset_tmp_dir(again.tmp_dir)
    assert list(again.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "changes", "field", "needle"),
    [
        (WIDE, {}, "artifact", "takes 5 values per row; the signature encodes to 3"),
        (TWO_INPUTS, {}, "artifact", "exactly one input"),
        (b"\x00garbage" * 10, {}, "artifact", "not a loadable ONNX model"),
        (b"", {}, "artifact", "empty"),
        (
            TINY,
            {
                "signature": {
                    "features": [{"name": "a", "dtype": "float"}, {"name": "a", "dtype": "float"}],
                    "output": {"kind": "binary"},
                }
            },
            "signature",
            "appears twice",
        ),
    ],
)
def test_bad_artifacts_and_metadata_are_refused(reg, data, changes, field, needle):
    with pytest.raises(RegistryError) as exc:
        reg.register("fraud", meta_model(**changes), upload(reg, data), "alice")
    assert exc.value.status == 422 and exc.value.field == field and needle in exc.value.detail
    assert reg.list_models() == []


def test_non_finite_metrics_are_refused_by_the_wire_model_and_by_the_registry(reg):
    import pydantic

    with pytest.raises(pydantic.ValidationError) as wire:  # every request model refuses NaN/Infinity
        meta_model(metrics={"auc": float("nan")})
    assert wire.value.errors()[0]["loc"] == ("metrics", "auc")
    built = meta_model().model_copy(update={"metrics": {"auc": float("nan")}})  # past the wire model
    with pytest.raises(RegistryError) as exc:
        reg.register("fraud", built, upload(reg, TINY), "alice")
    assert exc.value.status == 422 and exc.value.field == "metrics.auc" and "finite" in exc.value.detail
    assert reg.list_models() == []


def test_bad_names_and_parents_are_refused(reg):
    for name in ("", "-x", "a/b", "x" * 65, "spaced name"):
        with pytest.raises(Invalid) as exc:
            reg.register(name, meta_model(), upload(reg, TINY), "a")
        assert exc.value.field == "name"
    lineage = dict(meta_model().lineage.model_dump(), parent_version=4)
    with pytest.raises(Invalid) as exc:
        reg.register("fraud", meta_model(lineage=lineage), upload(reg, TINY), "a")
    assert exc.value.field == "lineage.parent_version"
    reg.register("fraud", meta_model(), upload(reg, TINY), "a")
    lineage["parent_version"] = 1
    assert reg.register("fraud", meta_model(lineage=lineage), upload(reg, variant(1)), "a").lineage.parent_version == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated upstream, still served
def test_torch_formats(reg, tmp_path):
    """With torch: TorchScript and torch.export artifacts register and are checked; without: a clear 422."""
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(InvalidModel) as exc:
            reg.register("t", meta_model(format="torchscript"), upload(reg, b"PK\x03\x04junk"), "a")
        assert exc.value.field == "format" and "no torch" in exc.value.detail
        return
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    ts = reg.tmp_dir / "m.pt"
    torch.jit.save(torch.jit.script(model), str(ts))
    assert reg.register("t", meta_model(format="torchscript"), ts, "a").version == 1
    assert reg.artifact_path("t", 1).name == "model.pt"

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (torch.zeros(2, 3),), dynamic_shapes=({0: batch},))
    pt2 = reg.tmp_dir / "m.pt2"
    torch.export.save(ep, str(pt2))
    assert reg.register("t", meta_model(format="torch_export"), pt2, "a").version == 2
    assert reg.artifact_path("t", 2).name == "model.pt2"

    wide = reg.tmp_dir / "wide.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(5, 1)), str(wide))
    with pytest.raises(InvalidModel) as exc:
        reg.register("t", meta_model(format="torchscript"), wide, "a")
    assert exc.value.field == "artifact" and "[1, 3]" in exc.value.detail
    with pytest.raises(InvalidModel) as exc:
        reg.register("t", meta_model(format="torchscript"), upload(reg, b"garbage"), "a")
    assert exc.value.field == "artifact" and "TorchScript" in exc.value.detail
