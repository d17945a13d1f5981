"""The HTTP edge: limits that keep hostile or broken clients from hurting the service.

The REST server shares its event loop with the dispatcher, so a client that never finishes
its request must cost little and not for long.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url
from tests.support import message


async def open_raw(service: Service) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    server = service.state["rest"]
    return await asyncio.open_connection(server.host, server.port)


async def test_a_silent_client_is_disconnected(start_service: ServiceFactory) -> None:
    service = await start_service(rest={"read_timeout": 0.3})
    reader, writer = await open_raw(service)
    writer.write(b"GET /health HTTP/1.1\r\nHost: proxy\r\n")  # ... and never the blank line
    await writer.drain()
    async with asyncio.timeout(10):
        leftover = await reader.read()  # returns when the server closes the connection
    assert b"200 OK" not in leftover
    writer.close()


async def test_oversized_headers_are_refused(start_service: ServiceFactory) -> None:
    service = await start_service(rest={"max_header_bytes": 2048})
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        assert (await http.get("/health")).status_code == 200
        refused = await http.get("/health", headers={"X-Padding": "a" * 4096})
        assert refused.status_code == 431
        assert refused.json() == {"ok": False, "error": "request headers too large"}
        assert (await http.get("/health")).status_code == 200  # and the server goes on


async def test_a_body_that_never_arrives_gets_408(start_service: ServiceFactory) -> None:
    service = await start_service(rest={"body_timeout": 0.3})
    reader, writer = await open_raw(service)
    writer.write(
        b"POST /commands/add-messages HTTP/1.1\r\nHost: proxy\r\n"
        b"X-API-Token: " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"messages": ['
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    assert status_line.split()[1] == b"408"
    writer.close()


async def test_many_slow_clients_do_not_stop_the_dispatcher(
    start_service: ServiceFactory, sink: SmtpSink
) -> None:
    service = await start_service(rest={"read_timeout": 30})
    stalled = [await open_raw(service) for _ in range(200)]
    for _, writer in stalled:
        writer.write(b"POST /commands/add-messages HTTP/1.1\r\nHost: proxy\r\n")
        await writer.drain()
    async with httpx.AsyncClient(
        base_url=base_url(service), headers={"X-API-Token": TOKEN}
    ) as http:
        account = {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
        assert (await http.post("/account", json=account)).status_code == 200
        body = {"messages": [message(f"m{i}") for i in range(50)]}
        answer = await http.post("/commands/add-messages", content=json.dumps(body))
        assert answer.json()["queued"] == 50
        await sink.wait_for(50)  # sent while 200 requests hang half-way
    for _, writer in stalled:
        writer.close()
