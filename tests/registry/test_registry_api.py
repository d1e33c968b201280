"""The registry over HTTP, against real agent processes."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from agent.schemas import AliasEvent, ModelSummary, ModelVersion
from tests.registry.helpers import TINY, TWO_INPUTS, WIDE, meta, sha256, variant

MODELS = "/api/v1/models"


def register(
    c: httpx.Client, name: str, data: bytes = TINY, metadata: dict | str | None = None, **kw
) -> httpx.Response:
    text = metadata if isinstance(metadata, str) else json.dumps(meta() if metadata is None else metadata)
    return c.post(
        f"{MODELS}/{name}/versions",
        data={"metadata": text},
        files={"artifact": ("model.onnx", data, "application/octet-stream")},
        **kw,
    )


def actions(c: httpx.Client) -> list[dict]:
    return [e for e in c.get("/api/v1/audit").json() if e["action"].startswith("model.")]


def test_register_and_read_back(agent_factory):
    a = agent_factory("reg1")
    with a.client() as c:
        r = register(c, "fraud")
        assert r.status_code == 201, r.text
        mv = ModelVersion.model_validate(r.json())
        assert (mv.name, mv.version, mv.digest, mv.size_bytes, mv.created_by) == (
            "fraud",
            1,
            sha256(TINY),
            208,
            "admin",
        )
        assert r.headers["location"] == f"{MODELS}/fraud/versions/1"
        r2 = register(c, "fraud", variant(1), meta(profile=None, description="no profile"))
        assert r2.status_code == 201 and r2.json()["version"] == 2

        (summary,) = [ModelSummary.model_validate(m) for m in c.get(MODELS).json()]
        assert (summary.name, summary.latest_version, summary.versions) == ("fraud", 2, 2)
        assert [v["version"] for v in c.get(f"{MODELS}/fraud").json()] == [1, 2]
        assert c.get(f"{MODELS}/fraud/versions").json() == c.get(f"{MODELS}/fraud").json()
        assert ModelVersion.model_validate(c.get(f"{MODELS}/fraud/versions/1").json()) == mv
        assert c.get(f"{MODELS}/fraud/versions/1/profile").json() == meta()["profile"]
        r = c.get(f"{MODELS}/fraud/versions/2/profile")
        assert r.status_code == 404 and r.json()["field"] == "profile"

        art = c.get(f"{MODELS}/fraud/versions/1/artifact")
        assert art.status_code == 200 and art.content == TINY
        assert art.headers["x-watchkeeper-digest"] == sha256(TINY) == mv.digest
        assert 'filename="fraud-1.onnx"' in art.headers["content-disposition"]

        for path, field in [
            (f"{MODELS}/nope", "name"),
            (f"{MODELS}/fraud/versions/9", "version"),
            (f"{MODELS}/fraud/versions/9/artifact", "version"),
            (f"{MODELS}/nope/aliases", "name"),
        ]:
            r = c.get(path)
            assert r.status_code == 404 and r.json()["field"] == field, (path, r.text)
        r = c.get(f"{MODELS}/fraud/versions/one")
        assert r.status_code == 422 and r.json()["field"] == "version"

        (e1, e2) = actions(c)
        assert (e1["action"], e1["target"], e1["principal"]) == ("model.register", "model:fraud", "admin")
        assert e1["detail"]["version"] == 1 and e1["detail"]["digest"] == sha256(TINY)
        assert e1["detail"]["lineage"]["build_id"] == "ci-1234" and e2["detail"]["version"] == 2
        assert c.get("/api/v1/audit/verify").json()["ok"] is True


def test_viewers_and_strangers_cannot_change_the_registry(agent_factory):
    a = agent_factory("reg2")
    with a.client() as admin:
        viewer_token = admin.post("/api/v1/tokens", json={"name": "vera", "role": "viewer"}).json()["token"]
        operator_token = admin.post("/api/v1/tokens", json={"name": "olga", "role": "operator"}).json()["token"]
        with httpx.Client(base_url=a.url, timeout=10) as anon:
            r = register(anon, "fraud")
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            assert anon.get(MODELS).status_code == 401
        with a.client(viewer_token) as viewer:
            r = register(viewer, "fraud")
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            assert viewer.get(MODELS).json() == []
        with a.client(operator_token) as op:
            assert register(op, "fraud").status_code == 201
            assert op.put(f"{MODELS}/fraud/aliases/prod", json={"version": 1}).status_code == 200
        with a.client(viewer_token) as viewer:
            r = viewer.put(f"{MODELS}/fraud/aliases/prod", json={"version": 1})
            assert r.status_code == 403
            assert viewer.get(f"{MODELS}/fraud/aliases").json() == {"prod": 1}
            assert viewer.get(f"{MODELS}/fraud/versions/1/artifact").content == TINY
        assert [(e["action"], e["principal"]) for e in actions(admin)] == [
            ("model.register", "olga"),
            ("model.alias", "olga"),
        ]


def test_bad_uploads_get_4xx_naming_the_field(agent_factory):
    a = agent_factory("reg3")
    no_build = meta()
    del no_build["lineage"]["build_id"]
    cases = [
        ("bad name", register, ("-fraud",), 422, "name"),
        ("metadata not JSON", register, ("fraud", TINY, "{not json"), 422, "metadata"),
        ("metadata NaN", register, ("fraud", TINY, json.dumps(meta())[:-1] + ', "x": NaN}'), 422, "metadata"),
        ("metadata not an object", register, ("fraud", TINY, "[1]"), 422, "metadata"),
        ("unknown key", register, ("fraud", TINY, meta(bogus=1)), 422, "metadata.bogus"),
        ("missing build_id", register, ("fraud", TINY, no_build), 422, "metadata.lineage.build_id"),
        ("bad format", register, ("fraud", TINY, meta(format="pickle")), 422, "metadata.format"),
        ("width mismatch", register, ("fraud", WIDE), 422, "artifact"),
        ("two inputs", register, ("fraud", TWO_INPUTS), 422, "artifact"),
        ("garbage artifact", register, ("fraud", b"\x00\x01not a model" * 50), 422, "artifact"),
        ("empty artifact", register, ("fraud", b""), 422, "artifact"),
        (
            "inconsistent signature",
            register,
            (
                "fraud",
                TINY,
                meta(signature={"features": [{"name": "c", "dtype": "category"}], "output": {"kind": "binary"}}),
            ),
            422,
            "signature",
        ),
    ]
    with a.client() as c:
        for label, fn, args, status, field in cases:
            r = fn(c, *args)
            assert (r.status_code, r.json()["field"]) == (status, field), (label, r.text)
            assert r.json()["error"] and r.json()["detail"], label
        # garbage in a torch format: a clear 422 whether or not this agent has torch
        r = register(c, "fraud", b"junk" * 10, meta(format="torchscript"))
        assert r.status_code == 422 and r.json()["field"] in ("artifact", "format")

        url = f"{MODELS}/fraud/versions"
        r = c.post(url, json=meta())
        assert (r.status_code, r.json()["field"]) == (415, "content-type")
        r = c.post(url, files={"artifact": ("m.onnx", TINY)})
        assert (r.status_code, r.json()["field"]) == (422, "metadata")
        r = c.post(url, data={"metadata": json.dumps(meta())})
        assert r.status_code in (415, 422)  # no file part: httpx sends it urlencoded
        r = c.post(url, data={"metadata": json.dumps(meta())}, files={"model": ("m.onnx", TINY)})
        assert (r.status_code, r.json()["field"]) == (422, "model")
        r = c.post(
            url,
            content=b'--xyz\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{}',
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert r.status_code == 422 and r.json()["field"] == "body"

        # nothing was registered, nothing is left in the upload directory, and the agent is fine
        assert c.get(MODELS).json() == []
        assert list((a.data_dir / "tmp").iterdir()) == []
        assert actions(c) == []
        assert register(c, "fraud").status_code == 201


def test_a_duplicate_artifact_is_refused_with_409(agent_factory):
    a = agent_factory("reg4")
    with a.client() as c:
        assert register(c, "fraud").status_code == 201
        r = register(c, "fraud", metadata=meta(description="CI retry"))
        assert r.status_code == 409
        body = r.json()
        assert body["error"] == "duplicate_artifact" and body["field"] == "artifact" and "version 1" in body["detail"]
        assert [v["version"] for v in c.get(f"{MODELS}/fraud").json()] == [1]
        assert [e["action"] for e in actions(c)] == ["model.register"]


def test_the_artifact_size_cap_answers_413(agent_factory):
    a = agent_factory("reg5", env={"WATCHKEEPER_MAX_ARTIFACT_BYTES": "100"})
    with a.client() as c:
        r = register(c, "fraud")  # 208 bytes
        assert r.status_code == 413 and r.json()["field"] == "artifact" and "100 bytes" in r.json()["detail"]
        # refused while streaming (3 MiB), and up front from Content-Length alone (20 MiB)
        for size in (3 * 2**20, 20 * 2**20):
            r = register(c, "fraud", TINY + b"x" * size)
            assert r.status_code == 413 and r.json()["field"] == "artifact"
        assert c.get(MODELS).json() == []
        assert list((a.data_dir / "tmp").iterdir()) == []
        assert c.get("/api/v1/host").status_code == 200


def test_alias_routes(agent_factory):
    a = agent_factory("reg6")
    with a.client() as c:
        for i in range(2):
            assert register(c, "fraud", variant(i)).status_code == 201
        r = c.put(f"{MODELS}/fraud/aliases/prod", json={"version": 1, "reason": "first"})
        assert r.status_code == 200
        ev = AliasEvent.model_validate(r.json())
        assert (ev.model, ev.alias, ev.from_version, ev.to_version, ev.reason) == ("fraud", "prod", None, 1, "first")
        ev2 = AliasEvent.model_validate(c.put(f"{MODELS}/fraud/aliases/prod", json={"version": 2}).json())
        assert (ev2.from_version, ev2.to_version) == (1, 2)
        assert c.put(f"{MODELS}/fraud/aliases/canary", json={"version": 1}).status_code == 200
        assert c.get(f"{MODELS}/fraud/aliases").json() == {"canary": 1, "prod": 2}
        hist = [AliasEvent.model_validate(e) for e in c.get(f"{MODELS}/fraud/aliases/history").json()]
        assert [(e.alias, e.from_version, e.to_version) for e in hist] == [
            ("prod", None, 1),
            ("prod", 1, 2),
            ("canary", None, 1),
        ]
        only = c.get(f"{MODELS}/fraud/aliases/history", params={"alias": "canary"}).json()
        assert [e["alias"] for e in only] == ["canary"]
        assert c.get(f"{MODELS}/fraud/versions/2").json()["aliases"] == ["prod"]
        assert c.get(MODELS).json()[0]["aliases"] == {"canary": 1, "prod": 2}

        for path, body, status, field in [
            (f"{MODELS}/fraud/aliases/prod", {"version": 9}, 422, "version"),
            (f"{MODELS}/fraud/aliases/prod", {"version": 0}, 422, "version"),
            (f"{MODELS}/fraud/aliases/prod", {"version": 1, "extra": True}, 422, "extra"),
            (f"{MODELS}/fraud/aliases/history", {"version": 1}, 422, "alias"),
            (f"{MODELS}/fraud/aliases/bad%20alias", {"version": 1}, 422, "alias"),
            (f"{MODELS}/nope/aliases/prod", {"version": 1}, 404, "name"),
        ]:
            r = c.put(path, json=body)
            assert (r.status_code, r.json()["field"]) == (status, field), (path, r.text)
        alias_audit = [e for e in actions(c) if e["action"] == "model.alias"]
        assert [
            (e["detail"]["alias"], e["detail"]["from_version"], e["detail"]["to_version"]) for e in alias_audit
        ] == [
            ("prod", None, 1),
            ("prod", 1, 2),
            ("canary", None, 1),
        ]


def test_artifacts_are_read_only_and_survive_a_restart(agent_factory):
    a = agent_factory("reg7")
    with a.client() as c:
        mv = register(c, "fraud").json()
        c.put(f"{MODELS}/fraud/aliases/prod", json={"version": 1})
    path = a.data_dir / "models" / "fraud" / "1" / "model.onnx"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    a.stop()
    (a.data_dir / "tmp" / "upload-crashed.part").write_bytes(b"half an upload")
    a.start()
    assert list((a.data_dir / "tmp").iterdir()) == []
    with a.client() as c:
        again = c.get(f"{MODELS}/fraud/versions/1").json()
        assert again == {**mv, "aliases": ["prod"]}
        assert again["digest"] == sha256(path.read_bytes()) == sha256(TINY)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert c.get(f"{MODELS}/fraud/versions/1/artifact").headers["x-watchkeeper-digest"] == mv["digest"]
        assert c.get(f"{MODELS}/fraud/versions/1/profile").json() == meta()["profile"]
        assert register(c, "fraud", variant(1)).json()["version"] == 2


@pytest.mark.parametrize("chunked", [False, True])
def test_a_large_upload_is_streamed(agent_factory, tmp_path, chunked):
    """A multi-MiB artifact arrives intact (hashed as it streams); the cap applies to streamed bodies too."""
    a = agent_factory("reg8", env={"WATCHKEEPER_MAX_ARTIFACT_BYTES": str(6 * 2**20)})
    # a valid model padded with a large doc_string: ~5 MiB of protobuf that onnxruntime loads
    pad = b"x" * (5 * 2**20)
    big = TINY + b"\x32" + _varint(len(pad)) + pad
    boundary = "wkboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{json.dumps(meta())}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="big.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with a.client() as c:
        r = c.post(f"{MODELS}/big/versions", content=chunks() if chunked else body, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha256(big) and r.json()["size_bytes"] == len(big)
        assert c.get(f"{MODELS}/big/versions/1/artifact").content == big


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
