"""Artifacts as files and as models: digests, durable moves, the temporary upload directory, and the checks
an upload passes before it is registered (it loads in its runtime and answers its signature's width; its
metadata is finite; an attached reference profile of ours parses and matches the signature).

onnxruntime/torch (and numpy for a profile) are imported inside the checks, so an agent that never
registers stays small.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from agent.registry.errors import Invalid, InvalidModel
from agent.registry.signature import encoded_width
from agent.schemas import ModelFormat, ModelVersionCreate, Signature

log = logging.getLogger("watchkeeper.registry")


DEFAULT_MAX_ARTIFACT_BYTES = 2 * 1024**3
MAX_ARTIFACT_ENV = "WATCHKEEPER_MAX_ARTIFACT_BYTES"
_CHUNK = 1024 * 1024


def max_artifact_bytes() -> int:
    """The artifact size cap: 2 GiB, or `$WATCHKEEPER_MAX_ARTIFACT_BYTES` (tests lower it)."""
    raw = os.environ.get(MAX_ARTIFACT_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            log.warning("ignoring %s=%r: not an integer", MAX_ARTIFACT_ENV, raw)
        else:
            if value > 0:
                return value
    return DEFAULT_MAX_ARTIFACT_BYTES


# --------------------------------------------------------------------------- files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a directory holding read-only files (unlinking needs only the directory writable)."""
    for p in sorted(path.rglob("*"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o700)
            p.rmdir()
        else:
            p.unlink()
    path.rmdir()


def reset_tmp_dir(path: Path) -> None:
    """Empty (or create, 0700) the directory uploads are streamed into; leftovers are from a crash."""
    if path.exists():
        for p in path.iterdir():
            try:
                if p.is_dir() and not p.is_symlink():
                    _remove_tree(p)
                else:
                    p.unlink()
            except OSError as e:
                log.warning("cannot remove leftover upload %s: %s", p, e)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


# --------------------------------------------------------------------------- artifact checks


def _why(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validate_artifact(path: Path, fmt: ModelFormat, sig: Signature) -> None:
    """Load the artifact as `fmt` and check it takes the signature's encoded width; raise `InvalidModel`.

    Runs in the caller's (worker) thread; onnxruntime/torch are imported here, not at agent start.
    """
    width = encoded_width(sig)
    if fmt == "onnx":
        _check_onnx(path, width)
    elif fmt == "torchscript":
        _check_torch(path, width, export=False)
    elif fmt == "torch_export":
        _check_torch(path, width, export=True)
    else:  # pragma: no cover - the schema's Literal admits nothing else
        raise InvalidModel(f"unknown format {fmt!r}", "format")


def _check_onnx(path: Path, width: int) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a runtime dependency
        raise InvalidModel("this agent has no onnxruntime", "format") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: a rejected upload is answered, not logged by ORT
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InvalidModel(f"not a loadable ONNX model: {_why(e)}", "artifact") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise InvalidModel(
            f"an ONNX model must have exactly one input (the encoded feature vector); this one has "
            f"{len(inputs)}: {names}",
            "artifact",
        )
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise InvalidModel(f"input {inp.name!r} is {inp.type}; expected tensor(float)", "artifact")
    shape = list(inp.shape or [])
    if not shape:
        raise InvalidModel(f"input {inp.name!r} is a scalar; expected [batch, {width}]", "artifact")
    last = shape[-1]
    if isinstance(last, int) and last != width:
        raise InvalidModel(
            f"input {inp.name!r} takes {last} values per row; the signature encodes to {width} "
            "(one per numeric feature, one per category)",
            "artifact",
        )
    if len(shape) == 2 and (not isinstance(shape[0], int) or shape[0] == 1):
        import numpy as np

        try:
            sess.run(None, {inp.name: np.zeros((1, width), dtype=np.float32)})
        except Exception as e:
            raise InvalidModel(f"the model fails on a row of zeros of width {width}: {_why(e)}", "artifact") from None


def _check_torch(path: Path, width: int, export: bool) -> None:
    try:
        import torch
    except ImportError:
        raise InvalidModel(
            "this agent has no torch: register an ONNX export, or install the agent's torch extra", "format"
        ) from None
    torch.set_num_threads(1)  # as the serving runtimes do: a check must not take every core
    kind = "torch.export" if export else "TorchScript"
    try:
        model = torch.export.load(str(path)).module() if export else torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InvalidModel(f"not a loadable {kind} model: {_why(e)}", "artifact") from None
    try:
        with torch.inference_mode():
            model(torch.zeros(1, width, dtype=torch.float32))
    except Exception as e:
        hint = " (export it with a dynamic batch dimension)" if export else ""
        raise InvalidModel(
            f"the model does not take a [1, {width}] float input (the signature's encoded width){hint}: {_why(e)}",
            "artifact",
        ) from None


def _non_finite(obj: Any, path: str) -> str | None:
    """The path of the first NaN/Infinity in a JSON-like value (they can't be answered as JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


PROFILE_SCHEMA = "watchkeeper.reference-profile/2"


def _check_profile(meta: ModelVersionCreate) -> None:
    """A profile in our schema must parse and describe the signature's features; others are kept as given.

    (Profiles of another schema are stored for the record; monitoring only uses ours.)
    """
    prof = meta.profile
    if prof is None or prof.get("schema") != PROFILE_SCHEMA:
        return
    from agent.monitoring.profile import ReferenceProfile  # numpy: only when a profile is registered

    try:
        parsed = ReferenceProfile.from_json(prof)
    except ValueError as e:
        raise Invalid(f"profile: {e}", "profile") from None
    sig = {f.name: f.dtype for f in meta.signature.features}
    for name in parsed.features:
        if name not in sig:
            raise Invalid(f"profile: feature {name!r} is not in the signature", "profile")
        kind = parsed.columns[name].kind
        if (kind == "categorical") != (sig[name] == "category"):
            msg = f"profile: feature {name!r} is {kind} in the profile, {sig[name]} in the signature"
            raise Invalid(msg, "profile")
