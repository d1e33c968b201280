"""Streaming multipart uploads: each declared part goes straight to a file (hashed on the way) or, for small
text parts, to memory — never the whole body in memory, never disk writes or hashing on the event loop.

Used by model registration (metadata + artifact + optional reference/validation data) and dataset
registration (one Parquet part). Every refusal is an ApiError naming the part.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from agent.api.errors import ApiError

FEED_BYTES = 1024 * 1024  # the parser is fed from a worker thread in slices of about this size
ENVELOPE_BYTES = 64 * 1024  # boundaries and part headers on top of the parts' own limits


@dataclass(frozen=True)
class Part:
    """One expected form field: a file (streamed to disk) or text (kept in memory, UTF-8)."""

    name: str
    max_bytes: int
    required: bool = False
    text: bool = False
    sha256: bool = False
    what: str = ""  # how errors describe it, e.g. "the model file"; default: the name


class Upload:
    """Receives the declared parts; after `finish()`: `files`, `texts`, `sizes`, `digests` by part name."""

    def __init__(self, tmp_dir: Path, boundary: bytes, parts: list[Part]) -> None:
        self.parts = {p.name: p for p in parts}
        self._tmp_dir = tmp_dir
        self._token = uuid.uuid4().hex
        self.files: dict[str, Path] = {}
        self.texts: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.digests: dict[str, str] = {}
        self._part: Part | None = None
        self._fh: Any = None
        self._hash: Any = None
        self._buf = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def expected(self) -> str:
        return ", ".join(f"'{p.name}'" for p in self.parts.values())

    # -- parser callbacks (worker thread)

    def _on_part_begin(self) -> None:
        self._part, self._disposition = None, b""

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("latin-1")
        part = self.parts.get(name)
        if part is None:
            raise ApiError(
                422, "invalid_request", f"unexpected form field {name!r}: send {self.expected()}", field=name or "body"
            )
        if name in self.sizes:
            raise ApiError(422, "invalid_request", f"form field {name!r} given twice", field=name)
        self._part = part
        self.sizes[name] = 0
        if part.text:
            self._buf = bytearray()
        else:
            path = self._tmp_dir / f"upload-{self._token}.{name}.part"
            self.files[name] = path
            self._fh = open(path, "xb")  # noqa: SIM115 - closed in _on_part_end / discard()
            self._hash = hashlib.sha256() if part.sha256 else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        chunk = data[start:end]
        self.sizes[part.name] += len(chunk)
        if self.sizes[part.name] > part.max_bytes:
            what = part.what or part.name
            raise ApiError(413, "too_large", f"{what} is larger than the limit of {part.max_bytes} bytes", part.name)
        if part.text:
            self._buf.extend(chunk)
            return
        if self._hash is not None:
            self._hash.update(chunk)
        self._fh.write(chunk)

    def _on_part_end(self) -> None:
        part = self._part
        if part is None:
            return
        if part.text:
            try:
                self.texts[part.name] = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_request", f"{part.name} is not UTF-8 text", part.name) from None
        else:
            self._fh.close()
            self._fh = None
            if self._hash is not None:
                self.digests[part.name] = self._hash.hexdigest()
        self._part = None

    def _on_end(self) -> None:
        self._ended = True

    # -- feeding

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except ApiError:
            raise
        except Exception as e:  # python-multipart's parse errors
            raise ApiError(422, "invalid_request", f"malformed multipart body: {e}", "body") from None

    def finish(self) -> None:
        self._parser.finalize()
        if not self._ended:
            raise ApiError(422, "invalid_request", "the multipart body ended early", "body")
        for p in self.parts.values():
            got = self.texts if p.text else self.digests if p.sha256 else self.files
            if p.required and p.name not in got:
                msg = f"form field '{p.name}' ({p.what or p.name}) is required"
                raise ApiError(422, "invalid_request", msg, p.name)

    def discard(self) -> None:
        """Close and remove every file of this upload (one moved away on success is simply gone)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for path in self.files.values():
            path.unlink(missing_ok=True)


def upload_cap(parts: list[Part]) -> int:
    """The most bytes a whole multipart body with these parts may have."""
    return sum(p.max_bytes for p in parts) + ENVELOPE_BYTES


async def receive(request: Request, tmp_dir: Path, parts: list[Part], blame: str) -> Upload:
    """Stream the request's multipart body into an Upload; `blame` is the part a disconnect is charged to."""
    up_parts = ", ".join(f"'{p.name}'" for p in parts)
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        msg = f"send multipart/form-data with fields {up_parts}"
        raise ApiError(415, "unsupported_media_type", msg, "content-type")
    cap = upload_cap(parts)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        big = max((p for p in parts if not p.text), key=lambda p: p.max_bytes, default=parts[0])
        raise ApiError(413, "too_large", f"{big.what or big.name} is larger than the limit of {big.max_bytes} bytes",
                       big.name)  # fmt: skip
    up = Upload(tmp_dir, params[b"boundary"], parts)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending.extend(chunk)
            if len(pending) >= FEED_BYTES:
                data = bytes(pending)
                pending.clear()
                await run_in_threadpool(up.feed, data)
        if pending:
            await run_in_threadpool(up.feed, bytes(pending))
        up.finish()
    except ClientDisconnect:
        up.discard()
        raise ApiError(400, "client_disconnect", "the client went away during the upload", blame) from None
    except BaseException:
        up.discard()
        raise
    return up
