"""Running the app under hypercorn, inside the service's event loop.

We bind the listening socket ourselves, before hypercorn starts: a port in use or a bad host
then fails ``gmp_startup`` at once with a clear message, and port 0 (tests) gives a known port.
hypercorn is handed the bound socket through :meth:`Config.create_sockets`, which its
``serve()`` calls once the ASGI lifespan has started.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from quart import Quart

from gmp_core import ConfigError

log = logging.getLogger("gmp.rest")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; :class:`ConfigError` when that is impossible."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"[rest] host: cannot resolve {host!r}: {exc.strerror}") from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"REST API cannot listen on {where}: {exc.strerror or exc} "
            "(see [rest] host and port, GMP_HOST / GMP_PORT)"
        ) from None
    sock.setblocking(False)
    return sock


class _BoundConfig(HypercornConfig):
    """A hypercorn config serving one socket we bound ourselves; tells us when it is in use."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.serving = asyncio.Event()

    def create_sockets(self) -> Sockets:
        self.serving.set()
        return Sockets(secure_sockets=[], insecure_sockets=[self._sock], quic_sockets=[])


@dataclass
class RestServer:
    """The running server, kept in ``service.state["rest"]``."""

    host: str
    port: int
    task: asyncio.Task[None]
    shutdown_event: asyncio.Event

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    async def start(
        cls,
        app: Quart,
        host: str,
        port: int,
        *,
        keep_alive_timeout: float,
        graceful_timeout: float,
        access_log: bool,
        read_timeout: float | None = 30.0,
        max_header_bytes: int = 16 * 1024,
        keep_alive_max_requests: int = 1000,
    ) -> RestServer:
        """Serve ``app`` on ``host:port``. The limits guard the event loop the dispatcher
        shares: a client silent for ``read_timeout`` is dropped (slowloris), a request whose
        line and headers pass ``max_header_bytes`` is refused, a keep-alive connection serves
        at most ``keep_alive_max_requests``."""
        sock = bind_socket(host, port)
        config = _BoundConfig(sock)
        config.keep_alive_timeout = keep_alive_timeout
        config.graceful_timeout = graceful_timeout
        config.read_timeout = read_timeout  # type: ignore[assignment]  # typed int; any seconds do
        config.h11_max_incomplete_size = max_header_bytes
        config.h2_max_header_list_size = max_header_bytes
        config.keep_alive_max_requests = keep_alive_max_requests
        config.errorlog = logging.getLogger("gmp.rest.server")
        config.accesslog = logging.getLogger("gmp.rest.access") if access_log else None
        config.include_server_header = False
        shutdown_event = asyncio.Event()
        task = asyncio.create_task(
            serve(app, config, shutdown_trigger=shutdown_event.wait), name="gmp-rest"
        )
        serving = asyncio.create_task(config.serving.wait())
        try:
            await asyncio.wait({task, serving}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while starting: leave nothing behind
            task.cancel()
            sock.close()
            raise
        finally:
            serving.cancel()
        if task.done():  # hypercorn gave up before serving (the ASGI lifespan failed)
            sock.close()
            task.result()
            raise RuntimeError("the REST server stopped during start-up")
        server = cls(host, sock.getsockname()[1], task, shutdown_event)
        log.info("REST API listening on %s", server.url)
        return server

    async def stop(self) -> None:
        """Graceful: stop accepting, let requests in progress finish (``graceful_timeout``)."""
        self.shutdown_event.set()
        await asyncio.wait({self.task})
        if not self.task.cancelled() and self.task.exception() is not None:
            log.error("the REST server failed", exc_info=self.task.exception())
