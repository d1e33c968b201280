"""`console.core.fastget.KeepAliveGet` and `AgentClient`'s GETs over it (issue 12): against a real agent
(TCP and its Unix socket) and against uvicorn (Content-Length, chunked, close-delimited bodies, TLS,
an idle connection the server closed)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from console.core.client import AgentClient
from console.core.config import AgentSpec
from console.core.errors import AgentError, ErrorKind
from console.core.fastget import KeepAliveGet
from tests.agentproc import free_port, make_agent

# --------------------------------------------------------------------------- a real agent


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory):
    agent = make_agent(tmp_path_factory.mktemp("fastget"), "fast-1", simulate_gpus=1).start()
    yield agent
    agent.stop()


async def test_the_summary_of_a_real_agent_over_tcp_and_its_socket_then_304_on_the_same_connection(
    real_agent,
) -> None:
    for url in (real_agent.url, f"unix://{real_agent.socket_path}"):
        client = AgentClient(AgentSpec(name="fast-1", url=url, token=real_agent.token))
        try:
            summary, etag = await client.summary()
            assert summary is not None and summary.agent_name == "fast-1" and etag
            again, etag2 = await client.summary(etag)
            # Unchanged (a 0.2 s sampler may have moved on: then a fresh 200 with a new tag).
            assert (again is None and etag2 == etag) or (again is not None and etag2 != etag)
            host = await client.host_info()  # a plain GET of another route, same connection
            assert host.agent_name == "fast-1"
            assert client._get is not None and client._get.connections == 1
        finally:
            await client.aclose()


async def test_a_real_agent_refusing_a_bad_token_is_classified_as_before(real_agent) -> None:
    client = AgentClient(AgentSpec(name="fast-1", url=real_agent.url, token="wrong"))
    try:
        with pytest.raises(AgentError) as info:
            await client.summary()
    finally:
        await client.aclose()
    assert info.value.kind is ErrorKind.UNAUTHORIZED and info.value.message == "401 bad token"


# --------------------------------------------------------------------------- uvicorn


async def asgi(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for part in (b'{"parts": [', b'"a", ', b'"b"', b"]}"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = f'{{"path": "{path}", "query": "{query}"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404 if path == "/missing" else 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Uvicorn:
    def __init__(self, **ssl: str) -> None:
        self.port = free_port()
        config = uvicorn.Config(asgi, host="127.0.0.1", port=self.port, timeout_keep_alive=1, log_level="error", **ssl)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def plain_uvicorn() -> Iterator[Uvicorn]:
    with Uvicorn() as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_content_length_chunked_and_a_query_from_uvicorn_on_one_kept_connection(plain_uvicorn) -> None:
    client = AgentClient(AgentSpec(name="uv", url=f"http://127.0.0.1:{plain_uvicorn.port}"))
    try:
        first = await client.request("GET", "/plain", {"a": "1 2", "b": "x/y"})
        assert first.json() == {"path": "/plain", "query": "a=1+2&b=x%2Fy"}  # encoded as httpx encodes it
        chunked = await client.request("GET", "/chunked")
        assert chunked.json() == {"parts": ["a", "b"]}
        with pytest.raises(AgentError) as info:
            await client.request("GET", "/missing")
        assert info.value.kind is ErrorKind.HTTP_4XX and info.value.status_code == 404
        assert client._get is not None and client._get.connections == 1
        # uvicorn closes a connection idle for timeout_keep_alive (1 s): the next GET reopens, no error.
        await asyncio.sleep(1.6)
        again = await client.request("GET", "/plain")
        assert again.json()["path"] == "/plain" and client._get.connections == 2
    finally:
        await client.aclose()


async def test_https_with_the_shared_context_and_a_bad_certificate_said_as_tls(tls_files) -> None:
    cert, key = tls_files
    with Uvicorn(ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        url = f"https://127.0.0.1:{server.port}"
        good = AgentClient(AgentSpec(name="tls", url=url, verify=str(cert)))
        untrusted = AgentClient(AgentSpec(name="tls", url=url))  # the system CAs do not know it
        try:
            assert (await good.request("GET", "/chunked")).json() == {"parts": ["a", "b"]}
            assert (await good.request("GET", "/plain")).json()["path"] == "/plain"
            assert good._get is not None and good._get.connections == 1
            with pytest.raises(AgentError) as info:
                await untrusted.request("GET", "/plain")
            assert info.value.kind is ErrorKind.TLS
        finally:
            await good.aclose()
            await untrusted.aclose()


async def test_a_close_delimited_body_a_hang_up_a_non_http_peer_and_a_refused_port() -> None:
    replies = {
        b"/close": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"ok": true}',
        b"/hangup": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut',
        b"/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(replies[head.split(b" ")[1]])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    get = KeepAliveGet("127.0.0.1", port)
    try:
        answer = await get.get("/close")
        assert answer.status == 200 and answer.body == b'{"ok": true}'
        client = AgentClient(AgentSpec(name="odd", url=f"http://127.0.0.1:{port}"))
        with pytest.raises(AgentError) as cut:
            await client.request("GET", "/hangup")
        with pytest.raises(AgentError) as garbage:
            await client.request("GET", "/garbage")
        await client.aclose()
    finally:
        await get.aclose()
        server.close()
    assert cut.value.kind is ErrorKind.UNREACHABLE and "closed" in cut.value.message
    assert garbage.value.kind is ErrorKind.PROTOCOL and "not an HTTP/1.1 answer" in garbage.value.message
    server_port = free_port()  # nothing listens there
    refused = AgentClient(AgentSpec(name="none", url=f"http://127.0.0.1:{server_port}"))
    with pytest.raises(AgentError) as info:
        await refused.request("GET", "/x")
    await refused.aclose()
    assert info.value.kind is ErrorKind.REFUSED and info.value.message == "connection refused"
