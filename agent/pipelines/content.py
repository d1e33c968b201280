"""Artifacts by content: digests of files, and the content-addressed store in the data dir."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """ "sha256:<hex>" of a file's bytes (the name and the path never enter it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class ContentStore:
    """`<root>/<hex[:2]>/<hex>`: each distinct content once, read-only; a run's outputs are moved in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.root / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, src: Path, keep: bool = False) -> tuple[str, int]:
        """Move `src` into the store (kept as it is if that content is there already); (digest, size).
        `keep`: leave `src` where it is too (linked, or copied across filesystems): a step queued in Slurm behind
        the one that wrote it reads it there, and may start any moment after that step's job ended."""
        digest = file_digest(src)
        size = src.stat().st_size
        dst = self.path(digest)
        if dst.is_file():
            if not keep:
                src.unlink()
        else:
            dst.parent.mkdir(exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            if keep:
                tmp.unlink(missing_ok=True)
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            else:
                shutil.move(src, tmp)
            os.chmod(tmp, 0o400)
            os.replace(tmp, dst)  # whole or absent: a crash never leaves a torn artifact under its digest
        return digest, size
