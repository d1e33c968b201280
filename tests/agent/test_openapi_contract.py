"""/openapi.json is the truth: schemathesis generates requests from it against a real agent (a registered model,
an endpoint serving it, a dataset) and holds every answer to it - status, content type, headers, body schema,
valid requests accepted, invalid ones refused, Allow on 405 - with no server error.

Schemathesis runs as its CLI (`st run`: examples, coverage, fuzzing and stateful phases; every check) in a child
process, so its hypothesis settings, phases and stateful links are the tool's own, configured by the TOML written
below. About 2,600 cases in ~45 s here; at least MIN_CASES must have been generated.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.serving.test_serving_agent import FEATURES, FLIGHTS, reference, wait_loaded

ST = shutil.which("st", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(ST is None, reason="schemathesis is not installed (pip install -e .[dev])")

TOKEN = "wk_contract_" + "s" * 43
# A config token: the fuzzer cannot revoke it (config tokens are refused, 409), so it keeps its access.
CONFIG = f"""
flush_interval = 0.2
[[auth.tokens]]
name = "contract"
role = "admin"
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
"""
MIN_CASES = 1000

# Checks turned off for one operation, each with why. Everything else runs every check (schemathesis 4 enables
# all of them unless told otherwise; naming them with `--checks all` would override these per-operation lines).
# All of these are rules across fields or against the agent's state, which a JSON schema cannot state:
# the agent refuses such requests with a 422 naming the field, and tests of their own cover them.
EXCLUSIONS: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/api/v1/series"): {
        "positive_data_acceptance": "start must be before end and the range at most 400 days (across parameters)",
    },
    ("GET", "/api/v1/endpoints/{name}/drift"): {
        "positive_data_acceptance": "until must be after since (across parameters)",
    },
    ("POST", "/api/v1/endpoints/{name}/rollouts"): {
        "positive_data_acceptance": "the candidate must be another registered version than the one served, and "
        "a plan's steps must suit its strategy (agent/rollouts/plans.py): state and rules across fields",
    },
    ("PUT", "/api/v1/endpoints/{name}"): {
        "positive_data_acceptance": "`drift` thresholds travel as an open map; agent/monitoring/drift.py judges "
        "their names, kinds and ranges when the endpoint is put",
    },
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): {
        "positive_data_acceptance": "the version must be registered: that is state, not shape",
    },
    ("POST", "/api/v1/endpoints/{name}/predict"): {
        "positive_data_acceptance": "a row's fields are the endpoint's model signature, which differs per "
        "endpoint and version: the schema can say 'one of records/columns, not empty', not which features",
    },
    ("POST", "/api/v1/models/{name}/versions"): {
        "positive_data_acceptance": "the artifact must be a loadable model whose input width matches the "
        "signature; no schema can say that of random bytes",
    },
    ("POST", "/api/v1/datasets/{name}/versions"): {
        "positive_data_acceptance": "`data` must be a readable Parquet file; no schema can say that of bytes",
    },
}


def _config(names: dict[str, list[str]], path: Path) -> None:
    """A schemathesis.toml: auth, real names for path parameters (most of the time), exclusions."""
    lines = [f'headers = {{ Authorization = "Bearer {TOKEN}" }}', "[dictionaries]"]
    lines += [f"{k} = {{ values = {json.dumps(v)} }}" for k, v in names.items()]
    binds = [
        (r"^/api/v1/(endpoints|alerts)/\{name\}", "name", "endpoints"),
        (r"^/api/v1/models/\{name\}", "name", "models"),
        (r"^/api/v1/datasets/\{name\}", "name", "datasets"),
        (r"^/api/v1/models/\{name\}/versions/\{version\}", "version", "versions"),
        (r"^/api/v1/models/\{name\}/aliases/\{alias\}", "alias", "aliases"),
        (r"^/api/v1/rollouts/\{rollout_id\}", "rollout_id", "rollouts"),
        (r"^/api/v1/tokens/\{accessor\}", "accessor", "accessors"),
    ]
    for regex, param, dictionary in binds:
        lines += [
            "[[operations]]",
            f"include-path-regex = {json.dumps(regex)}",
            f'parameters = {{ "path.{param}" = {{ dictionary = "{dictionary}", probability = 0.8 }} }}',
        ]
    lines += [
        "[[operations]]",
        'include-path = "/api/v1/endpoints/{name}/drift/histogram"',
        'parameters = { "query.feature" = { dictionary = "features", probability = 0.8 } }',
    ]
    for (method, p), checks in EXCLUSIONS.items():
        lines += ["[[operations]]", f'include-method = "{method}"', f'include-path = "{p}"']
        lines += [f"checks.{check}.enabled = false" for check in checks]
    path.write_text("\n".join(lines) + "\n")


def populate(c: httpx.Client) -> dict[str, list]:
    """Give the fuzzer something real to find: two versions of the flights model (an alias on one), an endpoint
    serving it, a validation dataset and a canary rollout. Returns the names, for the path parameters."""
    meta = json.dumps(json.loads((FLIGHTS / "metadata.json").read_text()))
    onnx = (FLIGHTS / "model.onnx").read_bytes()
    # Version 2: the same weights with an ONNX doc_string appended (protobuf field 6), so a new digest.
    for art in (onnx, onnx + b"\x32\x02v2"):
        r = c.post("/api/v1/models/flights/versions", files={"artifact": ("m.onnx", art), "metadata": (None, meta)})
        assert r.status_code == 201, r.text
    body = {"model": "flights", "version": 1, "missing_policy": "impute", "fallback": {"score": 0.2}}
    assert c.put("/api/v1/endpoints/delays", json=body).status_code == 200
    assert c.put("/api/v1/models/flights/aliases/prod", json={"version": 1}).status_code == 200
    buf = io.BytesIO()
    reference(300).select([*FEATURES, pl.col("delayed").alias("label")]).write_parquet(buf)
    r = c.post("/api/v1/datasets/flights-val/versions", files={"data": ("v.parquet", buf.getvalue())})
    assert r.status_code == 201, r.text
    wait_loaded(c)
    r = c.post("/api/v1/endpoints/delays/rollouts", json={"candidate_version": 2, "strategy": "canary"})
    assert r.status_code == 201, r.text
    return {
        "endpoints": ["delays"],
        "models": ["flights"],
        "datasets": ["flights-val"],
        "versions": [1, 2],
        "features": FEATURES,
        "aliases": ["prod"],
        "rollouts": [r.json()["id"]],
        "accessors": [t["accessor"] for t in c.get("/api/v1/tokens").json()],
    }


def test_the_agent_keeps_its_openapi_contract(agent_factory, tmp_path):
    a = agent_factory("contract", config=CONFIG)
    c = httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    names = populate(c)
    cfg = tmp_path / "schemathesis.toml"
    _config(names, cfg)
    report = tmp_path / "report"
    cmd = [
        ST,
        "--config-file",
        str(cfg),
        "run",
        f"{a.url}/openapi.json",
        # One worker: with two, hypothesis describes filters via ast in two threads at once, and
        # CPython 3.11 fails that with "AST constructor recursion depth mismatch" (a runtime error
        # of the tool, not a finding about the agent).
        "--workers",
        "1",
        "--max-examples",
        "15",
        "--generation-deterministic",
        "--continue-on-failure",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--no-color",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    generated = _generated(out)
    assert generated >= MIN_CASES, out[-3000:]
    # The agent lived through it.
    assert c.get("/api/v1/whoami").status_code == 200


def _generated(out: str) -> int:
    for line in out.splitlines():
        if " generated" in line and "Test cases" not in line:
            head = line.strip().split(" generated")[0]
            if head.isdigit():
                return int(head)
    return 0


def test_the_document_declares_the_agents_errors_and_bodies(agent_factory):
    """The parts of the document schemathesis leans on, stated directly (they were all wrong before)."""
    a = agent_factory("doc")
    doc = httpx.get(f"{a.url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and set(schemas["ErrorBody"]["properties"]) == {
        "error",
        "detail",
        "field",
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path.startswith("/api/v1/"):
                assert {"401", "403"} <= codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= codes, (method, path)
            for code, resp in op["responses"].items():
                if int(code) >= 400 and (path, code) != ("/readyz", "503"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    for path, part in [("/api/v1/models/{name}/versions", "artifact"), ("/api/v1/datasets/{name}/versions", "data")]:
        body = doc["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert part in body["required"] and body["properties"][part]["format"] == "binary"
    predict = doc["paths"]["/api/v1/endpoints/{name}/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["minProperties"] == 1  # {} is invalid
    assert {"404", "415", "429"} <= set(predict["responses"])


def test_requests_are_held_to_the_schema_and_405_names_every_method(agent_factory):
    a = agent_factory("strict")
    with a.client() as c:
        # {"enabled": 0} is not a boolean, "5" is not a number (both used to be coerced and accepted)
        r = c.post("/api/v1/endpoints/x/fallback", json={"enabled": 0, "reason": "drill"})
        assert r.status_code == 422 and r.json()["field"] == "enabled"
        r = c.put("/api/v1/models/m/aliases/prod", json={"version": "1"})
        assert r.status_code == 422 and r.json()["field"] == "version"
        r = c.request("OPTIONS", "/api/v1/endpoints/x")
        assert r.status_code == 405 and {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "PUT", "DELETE"}
        r = c.request("PATCH", "/api/v1/tokens")
        assert r.status_code == 405 and {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
        # Times past what the store can hold are a 422, not a 500 from DuckDB.
        r = c.get("/api/v1/series", params={"metric": "cpu_percent", "end": 3.7e16})
        assert r.status_code == 422 and r.json()["field"] == "end"
