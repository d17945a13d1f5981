"""Real servers on 127.0.0.1 for the volume tests: a small HTTP file server with redirects,
hanging paths and a hit counter; moto's S3; wsgidav's WebDAV; a TCP proxy counting
connections; a DNS server answering what the test scripts."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gmp_core.testing import ReceivedMail


class FileServer:
    """Serves ``files`` (path -> bytes). ``redirects`` (path -> Location) answer 302;
    requests for a path in ``hanging`` wait until the server stops, sending nothing; those
    for a path in ``trickling`` get the headers at once, then one byte every 0.2 s."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.files = dict(files or {})
        self.redirects: dict[str, str] = {}
        self.hanging: set[str] = set()
        self.trickling: set[str] = set()
        self.streams: dict[str, int] = {}  # path -> bytes sent with no Content-Length
        self.streamed = 0
        self.hits: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.released = threading.Event()
        self.hung = threading.Event()  # set once a request for a hanging path arrived
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path
                server.hits[path] += 1
                server.authorizations.append(self.headers.get("Authorization"))
                if path in server.hanging:
                    server.hung.set()
                    server.released.wait(30)
                    return
                if path in server.streams:
                    self._stream(server.streams[path])
                    return
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.trickling:
                    self._trickle(body)
                    return
                self.wfile.write(body)

            def _trickle(self, body: bytes) -> None:
                try:
                    for byte in body:
                        if server.released.wait(0.2):  # the server's pace; stop() ends it
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # the client hung up

            def _stream(self, size: int) -> None:
                self.send_response(200)
                self.end_headers()  # no length: the body ends when the connection closes
                chunk = b"s" * 65536
                try:
                    while server.streamed < size:
                        self.wfile.write(chunk)
                        server.streamed += len(chunk)
                except OSError:
                    pass  # the client hung up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class WebdavServer:
    """wsgidav over cheroot, serving ``root`` to user ``u`` (password ``p`` unless told)."""

    def __init__(self, root: Path, password: str = "p") -> None:
        from cheroot import wsgi
        from wsgidav.wsgidav_app import WsgiDAVApp

        app = WsgiDAVApp(
            {
                "provider_mapping": {"/": str(root)},
                "simple_dc": {"user_mapping": {"*": {"u": {"password": password}}}},
                "http_authenticator": {
                    "accept_basic": True,
                    "accept_digest": False,
                    "default_to_digest": False,
                },
                "verbose": 0,
                "logging": {"enable": False, "enable_loggers": []},
            }
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = wsgi.Server(("127.0.0.1", self.port), app)
        self._thread = threading.Thread(target=self.server.serve, daemon=True)

    def start(self) -> WebdavServer:
        self.server.prepare()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def attachments_of(mail: ReceivedMail) -> list[tuple[str | None, str, bytes]]:
    """(file name, content type, decoded bytes) of each attachment of a delivered mail."""
    return [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in mail.message.iter_attachments()
    ]


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host, port) that counts the
    connections made to it: the proof that something did, or never did, connect."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.connections = 0
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy.connections += 1
                with socket.create_connection(proxy.target, timeout=30) as upstream:
                    pump = threading.Thread(target=_pipe, args=(upstream, self.request))
                    pump.daemon = True
                    pump.start()
                    _pipe(self.request, upstream)
                    pump.join(30)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing side."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class ScriptedDns:
    """A DNS server on 127.0.0.1 (UDP, dnslib) whose answers the test writes: for a name,
    the n-th query of a record type gets the n-th answer of its list (the last one from then
    on; ``None``: no record). Unknown names do not exist. ``queries`` counts them."""

    def __init__(self) -> None:
        from dnslib.server import DNSLogger, DNSServer

        self.scripts: dict[str, dict[str, list[str | None]]] = {}
        self.queries: Counter[tuple[str, str]] = Counter()
        self.server = DNSServer(
            self, address="127.0.0.1", port=0, logger=DNSLogger(log="-request,-reply,-error")
        )
        self.port: int = self.server.server.server_address[1]

    def script(self, name: str, **answers: list[str | None]) -> None:
        self.scripts[name.lower()] = answers

    def resolve(self, request: Any, handler: Any) -> Any:  # dnslib's resolver interface
        from dnslib import AAAA, QTYPE, RCODE, RR, A

        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        script = self.scripts.get(name)
        if script is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        seen = self.queries[(name, kind)]
        self.queries[(name, kind)] += 1
        answers = script.get(kind) or [None]
        answer = answers[min(seen, len(answers) - 1)]
        if answer is not None:
            record = A(answer) if kind == "A" else AAAA(ipaddress.ip_address(answer).exploded)
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=record, ttl=0))
        return reply

    def start(self) -> ScriptedDns:
        self.server.start_thread()
        return self

    def stop(self) -> None:
        self.server.stop()
