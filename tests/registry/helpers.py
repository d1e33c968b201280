"""Artifacts and metadata for registry tests (the .onnx files come from fixtures/make_tiny.py)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from agent.schemas import ModelVersionCreate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = (FIXTURES / "tiny.onnx").read_bytes()
WIDE = (FIXTURES / "wide.onnx").read_bytes()
TWO_INPUTS = (FIXTURES / "two_inputs.onnx").read_bytes()
META: dict = json.loads((FIXTURES / "tiny.json").read_text())


def variant(n: int, base: bytes = TINY) -> bytes:
    """A different, equally valid model: the same graph with `doc_string` (ModelProto field 6) set.

    Appending one more encoded field to a serialized protobuf message is valid protobuf (the last
    value of a singular field wins), so this needs no onnx package. n=0 is the base model itself.
    """
    if n == 0:
        return base
    text = f"variant {n}".encode()
    return base + bytes([0x32, len(text)]) + text


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta(**changes) -> dict:
    """tiny.json with top-level keys replaced (None removes the key)."""
    doc = copy.deepcopy(META)
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def meta_model(**changes) -> ModelVersionCreate:
    return ModelVersionCreate.model_validate(meta(**changes))


def write(tmp: Path, data: bytes, name: str = "upload.part") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / name
    p.write_bytes(data)
    return p
