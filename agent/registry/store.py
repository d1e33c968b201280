"""The model registry: immutable versions, artifacts on disk, aliases as append-only events.

A version is `(name, version, digest)`: the integer version is assigned here (max + 1 under a lock),
the digest is the sha256 of the artifact bytes, and neither the row nor the artifact is ever changed
or deleted through the API. Artifacts live at `<data_dir>/models/<name>/<version>/model.<onnx|pt|pt2>`,
moved there atomically from the upload's temporary file and made read-only (0444).

An alias (`prod`, `canary`) is a pointer moved by appending an event to `alias_events`; its value is
the latest event. Subscribers (the serving layer re-resolving endpoints pinned to an alias) are told
after each move, outside the registry's lock.

Every read the API serves from here comes from an in-memory cache loaded at start and updated after
each committed write; only the rare, unbounded reads (a version's profile, alias history) take a
DuckDB cursor. Writes go through `StoreWriter.call`, on the writer thread.

Artifacts on disk and their checks are agent/registry/artifacts.py; what it refuses, agent/registry/errors.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from agent.registry.artifacts import (
    PROFILE_SCHEMA,
    _check_profile,
    _fsync_path,
    _non_finite,
    _remove_tree,
    _why,
    file_sha256,
    max_artifact_bytes,
    reset_tmp_dir,
    validate_artifact,
)
from agent.registry.errors import Conflict, Invalid, InvalidModel, NotFound, RegistryError, StoreUnavailable, check_name
from agent.registry.signature import signature_problems
from agent.schemas import AliasEvent, AliasMove, Lineage, ModelSummary, ModelVersion, ModelVersionCreate, Signature
from agent.store.writer import StoreWriter

log = logging.getLogger("watchkeeper.registry")

__all__ = [
    "ARTIFACT_FILES", "PROFILE_SCHEMA", "Conflict", "Invalid", "InvalidModel", "NotFound", "Registry", "RegistryError",
    "StoreUnavailable", "_fsync_path", "check_name", "file_sha256", "max_artifact_bytes", "reset_tmp_dir",
    "validate_artifact",
]  # fmt: skip

# torch.export archives are `.pt2` (torch.export.load warns about any other name).
ARTIFACT_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2"}
# `GET /models/{name}/aliases/history` is a route, so no alias may be called that.
RESERVED_ALIASES = frozenset({"history"})


AuditHook = Callable[[dict], None]
AliasSubscriber = Callable[[AliasEvent], None]


_VERSION_COLUMNS = (
    "name, version, digest, size_bytes, format, created_at, created_by, description, lineage, signature, tags, metrics"
)


class Registry:
    """Model versions and aliases; see the module docstring. Thread-safe."""

    def __init__(
        self,
        writer: StoreWriter,
        con: duckdb.DuckDBPyConnection,
        artifacts_dir: Path,
        tmp_dir: Path | None = None,
    ) -> None:
        self._writer = writer
        self._con = con
        self.artifacts_dir = artifacts_dir
        # Uploads are streamed here: the same filesystem as the artifacts, so placing one is a rename.
        self.tmp_dir = tmp_dir if tmp_dir is not None else artifacts_dir.parent / "tmp"
        self.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Serialises mutations (version numbers, alias moves). Readers never take it: the maps below
        # are replaced, never changed in place, so a reader sees one consistent state.
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, ModelVersion]] = {}  # aliases left empty; filled on read
        self._has_profile: frozenset[tuple[str, int]] = frozenset()
        self._aliases: dict[str, dict[str, AliasEvent]] = {}  # model -> alias -> latest event
        self._subscribers: list[AliasSubscriber] = []
        self._load()
        self._sweep_orphans()

    # ------------------------------------------------------------------ start-up

    def _load(self) -> None:
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                f"SELECT {_VERSION_COLUMNS}, profile IS NOT NULL FROM model_versions ORDER BY name, version"
            ).fetchall()
            events = cur.execute(
                "SELECT ts, model, alias, from_version, to_version, principal, reason FROM alias_events ORDER BY seq"
            ).fetchall()
        finally:
            cur.close()
        versions: dict[str, dict[int, ModelVersion]] = {}
        profiles = set()
        for r in rows:
            mv = _version_from_row(r)
            versions.setdefault(mv.name, {})[mv.version] = mv
            if mv.has_profile:
                profiles.add((mv.name, mv.version))
        aliases: dict[str, dict[str, AliasEvent]] = {}
        for ts, model, alias, frm, to, principal, reason in events:
            ev = AliasEvent(
                ts=ts, model=model, alias=alias, from_version=frm, to_version=to, principal=principal, reason=reason
            )
            aliases.setdefault(model, {})[alias] = ev
        self._versions, self._has_profile, self._aliases = versions, frozenset(profiles), aliases

    def _sweep_orphans(self) -> None:
        """Remove artifact directories without a committed row (a crash between placing and committing)."""
        for model_dir in self.artifacts_dir.iterdir() if self.artifacts_dir.is_dir() else ():
            if not model_dir.is_dir():
                continue
            known = self._versions.get(model_dir.name, {})
            for vdir in model_dir.iterdir():
                if vdir.is_dir() and vdir.name.isdigit() and int(vdir.name) in known:
                    continue
                log.warning("removing unregistered artifact %s (left by an interrupted registration)", vdir)
                try:
                    _remove_tree(vdir) if vdir.is_dir() else vdir.unlink()
                except OSError as e:
                    log.warning("cannot remove %s: %s", vdir, e)
        for name, versions in self._versions.items():
            for v, mv in versions.items():
                if not self._artifact_file(name, v, mv.format).is_file():
                    log.error("artifact of %s version %d is missing from %s", name, v, self.artifacts_dir)

    # ------------------------------------------------------------------ reads (memory only)

    def _with_aliases(self, mv: ModelVersion) -> ModelVersion:
        names = sorted(a for a, ev in self._aliases.get(mv.name, {}).items() if ev.to_version == mv.version)
        return mv.model_copy(update={"aliases": names}) if names else mv

    def _model(self, name: str) -> dict[int, ModelVersion]:
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"no model named {name!r}", "name")
        return versions

    def get(self, name: str, version: int) -> ModelVersion:
        versions = self._model(name)
        mv = versions.get(version)
        if mv is None:
            raise NotFound(f"model {name!r} has no version {version} (latest is {max(versions)})", "version")
        return self._with_aliases(mv)

    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """The version named by exactly one of `version` and `alias` (an alias's latest event)."""
        if (version is None) == (alias is None):
            raise Invalid("give exactly one of version and alias", "version" if version is not None else "alias")
        if version is not None:
            return self.get(name, version)
        self._model(name)
        ev = self._aliases.get(name, {}).get(alias)  # type: ignore[arg-type]
        if ev is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}", "alias")
        return self.get(name, ev.to_version)

    def list_models(self) -> list[ModelSummary]:
        out = []
        for name, versions in sorted(self._versions.items()):
            events = self._aliases.get(name, {})
            updated = max(mv.created_at for mv in versions.values())
            if events:
                updated = max(updated, max(ev.ts for ev in events.values()))
            out.append(
                ModelSummary(
                    name=name,
                    latest_version=max(versions),
                    versions=len(versions),
                    aliases={a: ev.to_version for a, ev in sorted(events.items())},
                    updated_at=updated,
                )
            )
        return out

    def list_versions(self, name: str) -> list[ModelVersion]:
        return [self._with_aliases(mv) for _, mv in sorted(self._model(name).items())]

    def aliases(self, name: str) -> dict[str, int]:
        self._model(name)
        return {a: ev.to_version for a, ev in sorted(self._aliases.get(name, {}).items())}

    def artifact_path(self, name: str, version: int) -> Path:
        mv = self.get(name, version)
        return self._artifact_file(name, version, mv.format)

    def _artifact_file(self, name: str, version: int, fmt: str) -> Path:
        return self.artifacts_dir / name / str(version) / ARTIFACT_FILES[fmt]

    def subscribe(self, callback: AliasSubscriber) -> Callable[[], None]:
        """Call `callback(event)` after every alias move (outside locks); returns an unsubscribe function."""
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    # ------------------------------------------------------------------ reads (store)

    def profile(self, name: str, version: int) -> dict | None:
        """The reference data profile registered with a version, or None."""
        self.get(name, version)
        if (name, version) not in self._has_profile:
            return None
        cur = self._con.cursor()
        try:
            row = cur.execute(
                "SELECT profile FROM model_versions WHERE name = ? AND version = ?", [name, version]
            ).fetchone()
        finally:
            cur.close()
        return json.loads(row[0]) if row and row[0] is not None else None

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of the model's aliases (or of one), oldest first."""
        self._model(name)
        sql = "SELECT ts, model, alias, from_version, to_version, principal, reason FROM alias_events WHERE model = ?"
        params: list[Any] = [name]
        if alias is not None:
            sql += " AND alias = ?"
            params.append(alias)
        cur = self._con.cursor()
        try:
            rows = cur.execute(sql + " ORDER BY seq", params).fetchall()
        finally:
            cur.close()
        return [
            AliasEvent(ts=r[0], model=r[1], alias=r[2], from_version=r[3], to_version=r[4], principal=r[5], reason=r[6])
            for r in rows
        ]

    # ------------------------------------------------------------------ writes

    def _check_duplicate(self, name: str, digest: str) -> None:
        for mv in self._versions.get(name, {}).values():
            if mv.digest == digest:
                raise Conflict(
                    f"this artifact (sha256 {digest[:16]}…) is already registered as {name} version {mv.version}",
                    "artifact",
                    error="duplicate_artifact",
                )

    def register(
        self,
        name: str,
        meta: ModelVersionCreate,
        artifact_tmp: Path,
        principal_name: str,
        *,
        digest: str | None = None,
        audit: AuditHook | None = None,
    ) -> ModelVersion:
        """Validate and register the artifact at `artifact_tmp` as the next version of `name`.

        `artifact_tmp` is moved (not copied) into place on success. `digest` may be given when the
        caller hashed the bytes while receiving them. `audit(detail)` is called once the version
        number is known and before the version becomes visible; if it raises, nothing is registered.
        """
        check_name(name)
        problems = signature_problems(meta.signature)
        if problems:
            raise InvalidModel("; ".join(problems), "signature")
        bad = _non_finite(meta.model_dump(), "")
        if bad:
            raise Invalid(f"{bad} is not a finite number", bad)
        _check_profile(meta)
        try:
            size = artifact_tmp.stat().st_size
        except OSError as e:
            raise Invalid(f"artifact not readable: {e.strerror or e}", "artifact") from None
        if size == 0:
            raise InvalidModel("the artifact is empty", "artifact")
        if digest is None:
            digest = file_sha256(artifact_tmp)
        self._check_duplicate(name, digest)  # cheap, before loading the model
        validate_artifact(artifact_tmp, meta.format, meta.signature)
        with self._lock:
            self._check_duplicate(name, digest)
            existing = self._versions.get(name, {})
            parent = meta.lineage.parent_version
            if parent is not None and parent not in existing:
                raise Invalid(f"parent_version {parent} is not a version of {name!r}", "lineage.parent_version")
            version = max(existing, default=0) + 1
            mv = ModelVersion(
                name=name,
                version=version,
                digest=digest,
                size_bytes=size,
                format=meta.format,
                created_at=round(time.time(), 6),
                created_by=principal_name,
                description=meta.description,
                lineage=meta.lineage,
                signature=meta.signature,
                tags=meta.tags,
                metrics=meta.metrics,
                has_profile=meta.profile is not None,
            )
            if audit is not None:
                audit(
                    {
                        "version": version,
                        "digest": digest,
                        "size_bytes": size,
                        "format": meta.format,
                        "lineage": meta.lineage.model_dump(mode="json"),
                    }
                )
            final = self._place(artifact_tmp, name, version, meta.format)
            row = [
                name,
                version,
                digest,
                size,
                meta.format,
                mv.created_at,
                principal_name,
                meta.description,
                meta.lineage.model_dump_json(),
                meta.signature.model_dump_json(),
                json.dumps(meta.tags, sort_keys=True),
                json.dumps(meta.metrics, sort_keys=True),
                None if meta.profile is None else json.dumps(meta.profile, allow_nan=False),
            ]
            try:
                self._writer.call(
                    lambda con: con.execute(
                        "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row
                    )
                )
            except Exception as e:
                self._unplace(final)
                raise StoreUnavailable(f"could not record the version: {_why(e)}") from e
            self._versions = {**self._versions, name: {**existing, version: mv}}
            if meta.profile is not None:
                self._has_profile = self._has_profile | {(name, version)}
        log.info("registered %s version %d (%s, sha256 %s) by %s", name, version, meta.format, digest, principal_name)
        return mv

    def _place(self, src: Path, name: str, version: int, fmt: str) -> Path:
        """Move the artifact to its final path, read-only and fsynced; the final path never held anything."""
        vdir = self.artifacts_dir / name / str(version)
        if vdir.exists():  # an orphan of a crash (no row commits without the file in place first)
            _remove_tree(vdir)
        vdir.mkdir(parents=True, mode=0o755)
        final = vdir / ARTIFACT_FILES[fmt]
        try:
            os.chmod(src, 0o444)
            _fsync_path(src)
            try:
                os.replace(src, final)  # atomic: one filesystem (the data dir)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                part = vdir / (final.name + ".part")
                shutil.copyfile(src, part)
                os.chmod(part, 0o444)
                _fsync_path(part)
                os.replace(part, final)
                src.unlink()
            _fsync_path(vdir, directory=True)
            _fsync_path(vdir.parent, directory=True)
        except OSError as e:
            try:
                _remove_tree(vdir)
            except OSError:
                pass
            raise StoreUnavailable(f"could not store the artifact: {e.strerror or e}") from e
        return final

    def _unplace(self, final: Path) -> None:
        try:
            _remove_tree(final.parent)
        except OSError as e:
            log.warning("cannot remove %s after a failed registration: %s", final.parent, e)

    def move_alias(
        self,
        name: str,
        alias: str,
        move: AliasMove,
        principal_name: str,
        *,
        audit: AuditHook | None = None,
    ) -> AliasEvent:
        """Point `alias` at `move.version` by appending an event; a move to where it points is a no-op.

        `audit(detail)` is called before the event is written; if it raises, the alias stays.
        """
        check_name(alias, "alias")
        if alias in RESERVED_ALIASES:
            raise Invalid(f"{alias!r} is reserved and can't be an alias", "alias")
        with self._lock:
            versions = self._model(name)
            if move.version not in versions:
                raise Invalid(
                    f"model {name!r} has no version {move.version} (latest is {max(versions)})",
                    "version",
                    error="unknown_version",
                )
            current = self._aliases.get(name, {}).get(alias)
            if current is not None and current.to_version == move.version:
                return current
            ev = AliasEvent(
                ts=round(time.time(), 6),
                model=name,
                alias=alias,
                from_version=None if current is None else current.to_version,
                to_version=move.version,
                principal=principal_name,
                reason=move.reason,
            )
            if audit is not None:
                audit(
                    {"alias": alias, "from_version": ev.from_version, "to_version": ev.to_version, "reason": ev.reason}
                )

            def insert(con: duckdb.DuckDBPyConnection) -> None:
                seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM alias_events").fetchall()[0][0]
                con.execute(
                    "INSERT INTO alias_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [seq, ev.ts, name, alias, ev.from_version, ev.to_version, principal_name, ev.reason],
                )

            try:
                self._writer.call(insert)
            except Exception as e:
                raise StoreUnavailable(f"could not record the alias move: {_why(e)}") from e
            self._aliases = {**self._aliases, name: {**self._aliases.get(name, {}), alias: ev}}
            subscribers = self._subscribers
        log.info("alias %s@%s: %s -> %d by %s", name, alias, ev.from_version, ev.to_version, principal_name)
        for cb in subscribers:
            try:
                cb(ev)
            except Exception:
                log.exception("alias subscriber %r failed", cb)
        return ev


def _version_from_row(r: tuple) -> ModelVersion:
    name, version, digest, size, fmt, created_at, created_by, description, lineage, signature, tags, metrics, prof = r
    return ModelVersion(
        name=name,
        version=version,
        digest=digest,
        size_bytes=size,
        format=fmt,
        created_at=created_at,
        created_by=created_by,
        description=description,
        lineage=Lineage.model_validate_json(lineage),
        signature=Signature.model_validate_json(signature),
        tags=json.loads(tags),
        metrics=json.loads(metrics),
        has_profile=bool(prof),
    )
