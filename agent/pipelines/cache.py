"""Cache keys that follow content, never names: a step's code (its callable's source or its code
file's bytes, and the commit that last touched it when it is in a git repo), its parameters, its
environment and its inputs' content digests. A renamed input with the same bytes is a hit; the same
path with new bytes is a miss (what Kubeflow and Vertex get wrong, docs/pipelines.md)."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from agent.schemas.pipelines import ParamValue, StepSpec


def _module_file(module: str, workdir: Path | None) -> Path | None:
    rel = Path(*module.split("."))
    for base in [workdir] if workdir else []:
        for cand in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if cand.is_file():
                return cand
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@functools.lru_cache(maxsize=256)
def _parse(path: str, _mtime_ns: int, _size: int) -> tuple[str, ast.Module | None]:
    """A module file's text and tree, parsed once per version of the file."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return text, ast.parse(text)
    except SyntaxError:
        return text, None


def callable_source(call: str, workdir: Path | None) -> tuple[str, Path | None]:
    """The source of `module:function` read from its file (nothing imported), with the helpers it calls
    and its module's imports and constants, since a change there changes what it does. ("", None) if
    the module is not found."""
    module, _, fn = call.partition(":")
    path = _module_file(module, workdir)
    if path is None:
        return "", None
    st = path.stat()
    text, tree = _parse(str(path), st.st_mtime_ns, st.st_size)
    if tree is None:
        return text, path
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    # The function and the module-level functions and classes it reaches by name (transitively): a change
    # in a helper it calls is a change in what it does; a change in an unrelated function is not.
    keep, todo = set(), [fn]
    while todo:
        name = todo.pop()
        if name in keep or name not in defs:
            continue
        keep.add(name)
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name)]
    parts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name in keep:
                parts.append(ast.get_source_segment(text, node) or "")
        else:  # imports, constants, the module docstring: the function's surroundings
            parts.append(ast.get_source_segment(text, node) or "")
    return "\n".join(parts), path


def git_commit_of(path: Path, memo: dict[str, str | None]) -> str | None:
    """The commit that last changed `path`, when it is in a git repo (memoised per run)."""
    key = str(path)
    if key not in memo:
        try:
            r = subprocess.run(["git", "-C", str(path.parent), "log", "-1", "--format=%H", "--", path.name],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
            memo[key] = r.stdout.strip() or None if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            memo[key] = None
    return memo[key]


def code_digest(step: StepSpec, workdir: Path | None, memo: dict[str, str | None]) -> str:
    """What the step runs, by content."""
    h = hashlib.sha256()
    files: list[Path] = []
    if step.call:
        src, path = callable_source(step.call, workdir)
        h.update(b"call\0" + step.call.encode() + b"\0" + src.encode())
        if path:  # its source is in already: only the commit
            h.update(b"commit\0" + (git_commit_of(path, memo) or "-").encode())
    if step.command:
        h.update(b"command\0" + json.dumps(step.command).encode())
        for arg in step.command:  # a script the command runs is its code
            p = Path(arg) if Path(arg).is_absolute() else (workdir / arg if workdir else None)
            if p is not None and "{" not in arg and p.suffix in (".py", ".sh", ".R", ".r", ".jl") and p.is_file():
                files.append(p)
    if step.action:
        h.update(b"action\0" + step.action.encode() + json.dumps(step.config, sort_keys=True).encode())
    if step.code_path:
        files.append(Path(step.code_path))
    for f in files:
        h.update(b"file\0" + f.read_bytes())
        h.update(b"commit\0" + (git_commit_of(f, memo) or "-").encode())
    return "sha256:" + h.hexdigest()


def env_spec(step: StepSpec) -> dict:
    """The environment part of the key: the step's variables, how it runs, the interpreter, and what the
    runner tells it (its name in WK_STEP, its output names): a step may act on them."""
    return {"env": step.env, "isolation": step.isolation, "python": sys.version.split()[0],
            "executable": sys.executable, "step": step.name, "outputs": sorted(step.outputs)}  # fmt: skip


def cache_key(code: str, params: dict[str, ParamValue], env: dict, inputs: dict[str, str]) -> str:
    """sha256 over the four components (inputs: name -> content digest)."""
    doc = {"code": code, "params": params, "env": env, "inputs": inputs}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
