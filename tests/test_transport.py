"""The lean HTTP/1.1 transport against raw servers: framing, keep-alive, stale connections, errors."""

import asyncio

import httpx
import pytest

from collector.llamacloud.transport import LeanTransport, build_transport
from tests.helpers import run_async


async def raw_server(answers):
    """A server that answers each request line with the next raw answer; None closes the connection."""
    requests = []

    async def handle(reader, writer):
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            requests.append(head)
            answer = answers.pop(0)
            if answer is None:
                writer.close()
                return
            writer.write(answer)
            await writer.drain()
            if answer.startswith(b"HTTP/1.0"):
                break  # an HTTP/1.0 server closes after each answer
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], requests


async def get(transport, port, path="/x"):
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
        return await client.get(path, params={"a": "b c"})


def test_content_length_chunked_and_close_framing():
    async def scenario():
        answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello",
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                   b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\ngone"]
        server, port, requests = await raw_server(answers)
        transport = LeanTransport()
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.get("/a", params={"q": "x y"}, headers={"Authorization": "Bearer k"})
            second = await client.get("/b")
            third = await client.get("/c")
        assert (first.status_code, first.text, first.headers["content-type"]) == (200, "hello", "application/json")
        assert second.text == "abcde" and "transfer-encoding" not in second.headers
        assert (third.status_code, third.text) == (404, "gone")
        assert requests[0].startswith(b"GET /a?q=x+y HTTP/1.1\r\n") and b"Authorization: Bearer k" in requests[0]
        assert len(requests) == 3  # one connection, kept alive
        server.close()
    run_async(scenario())


def test_a_stale_pooled_connection_is_retried_once():
    async def scenario():
        answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None]
        server, port, _ = await raw_server(answers)
        transport = LeanTransport()
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/1")).text == "ok"
            answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
            assert (await client.get("/2")).text == "again"  # the first connection was closed: a new one
        server.close()
    run_async(scenario())


@pytest.mark.parametrize("answer,error", [
    (None, httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", httpx.RemoteProtocolError),
    (b"garbage\r\n\r\n", httpx.RemoteProtocolError),
])
def test_broken_answers_raise_httpx_errors(answer, error):
    async def scenario():
        server, port, _ = await raw_server([answer])
        with pytest.raises(error):
            await get(LeanTransport(), port)
        server.close()
    run_async(scenario())


def test_timeouts_and_refused_connections():
    async def scenario():
        async def silent(reader, writer):
            await asyncio.sleep(5)
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(httpx.ReadTimeout):
            await get(LeanTransport(read_timeout=0.2), port)
        server.close()
        await server.wait_closed()
        with pytest.raises(httpx.ConnectError):
            await get(LeanTransport(), port)
    run_async(scenario())


def test_proxy_settings_fall_back_to_httpx():
    assert build_transport(8, 5, 30, environ={"HTTPS_PROXY": "http://proxy:3128"}) is None
    assert isinstance(build_transport(8, 5, 30, environ={}), LeanTransport)


def test_client_fast_path_builds_the_same_request_line():
    from collector.llamacloud.client import LlamaCloudClient

    async def scenario():
        body = b'{"session_id": "a/b", "last_updated_at": "t"}'
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        server, port, requests = await raw_server([answer, answer])
        client = LlamaCloudClient(base_url=f"http://127.0.0.1:{port}/prefix", api_key="llx-k", project_id="p 1")
        assert (await client.summary("a/b")).session_id == "a/b"
        await client.aclose()
        head = requests[0].decode()
        assert head.startswith("GET /prefix/api/v1/chat/a%2Fb/summary?project_id=p+1 HTTP/1.1\r\n")
        assert "Authorization: Bearer llx-k" in head and f"Host: 127.0.0.1:{port}" in head
        server.close()
    run_async(scenario())


def test_http_1_0_servers_gzip_and_no_content_type_are_understood():
    import gzip

    from collector.llamacloud.client import LlamaCloudClient

    async def scenario():
        body = gzip.compress(b'{"session_id": "s", "last_updated_at": "t"}')
        answers = [b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + body,  # no length, no type: read to EOF
                   b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + gzip.decompress(body)]
        server, port, requests = await raw_server(answers)
        client = LlamaCloudClient(base_url=f"http://127.0.0.1:{port}", api_key="k")
        assert (await client.summary("s")).session_id == "s"
        assert (await client.summary("s")).last_updated_at == "t"  # a new connection: 1.0 closed the first
        await client.aclose()
        assert b"Accept-Encoding: gzip" in requests[0]
        server.close()
    run_async(scenario())
