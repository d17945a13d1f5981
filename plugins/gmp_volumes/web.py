"""HTTP and WebDAV volumes: a GET under the volume's URL, guarded against server-side
request forgery (``guard.py``).

Each request resolves the host through the guard, which refuses private, loopback,
link-local, cloud metadata and other non-public addresses unless the volume allow-lists
them, and then connects to the very address it checked (the URL's host is replaced by the
address, with ``Host`` and the TLS server name kept), so a DNS answer that changes between
the check and the connection cannot slip through. Redirects are followed by hand, each hop
checked the same way. genro-storage's HTTP and WebDAV mounts offer no place for such a
check, so these two backends use httpx directly; reading a WebDAV file is a plain GET.

``verify_ssl = false`` (the original's key, plugins.toml only) turns off the certificate
check and nothing else: the connection still goes to an address the guard checked.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import quote

from gmp_core import AttachmentError
from gmp_volumes.guard import Address, AddressGuard
from gmp_volumes.install import pip_install
from gmp_volumes.sources import check_subpath, forbidden, not_found, too_large, unreachable

try:
    import httpx
except ImportError:  # pragma: no cover - depends on the installation
    httpx = None  # type: ignore[assignment]

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
TEMPORARY_STATUSES = (408, 425, 429, 500, 502, 503, 504)


class WebSource:
    """Reads ``<base URL>/<subpath>`` with a GET, through the address guard."""

    def __init__(self, base_url: str, config: Any, guard: AddressGuard) -> None:
        if httpx is None:
            raise RuntimeError(f"HTTP and WebDAV volumes need httpx: {pip_install('httpx')}")
        self.base_url = base_url.rstrip("/") + "/"
        self.guard = guard
        self.auth: tuple[str, str] | None = None
        self.headers: dict[str, str] = {}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"
        elif config.username is not None:
            self.auth = (config.username, config.password or "")
        self.timeout: float | None = config.timeout
        tls: ssl.SSLContext | bool = config.verify_ssl
        if config.ca_bundle and config.verify_ssl:
            tls = ssl.create_default_context(cafile=config.ca_bundle)
        self.client = httpx.AsyncClient(
            verify=tls,
            timeout=None,  # the registry bounds each whole read, redirects included
            follow_redirects=False,  # each hop goes through the guard
            trust_env=False,  # a proxy from the environment would bypass the guard
        )
        self.origin = httpx.URL(self.base_url).copy_with(path="/", query=None)

    async def read(self, subpath: str, limit: int) -> bytes:
        """The file, within this volume's own ``timeout`` if it has one (the registry bounds
        every read by ``[volumes] fetch_timeout`` too)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(subpath, limit)
        except TimeoutError:
            raise AttachmentError(
                f"source timed out after {self.timeout:g}s", temporary=True
            ) from None

    async def _follow(self, subpath: str, limit: int) -> bytes:
        url = httpx.URL(self.base_url + quote(check_subpath(subpath), safe="/"))
        for _ in range(MAX_REDIRECTS + 1):
            location = await self._get(url, subpath, limit)
            if isinstance(location, bytes):
                return location
            url = location
        raise AttachmentError(f"more than {MAX_REDIRECTS} redirects", temporary=False)

    async def _get(self, url: httpx.URL, subpath: str, limit: int) -> bytes | httpx.URL:
        """The body, or where a redirect points."""
        if url.scheme not in ("http", "https") or not url.host:
            raise forbidden(f"redirect to a {url.scheme or 'relative'} URL")
        addresses = await self.guard.resolve(url.host)
        try:
            response = await self._send_pinned(url, addresses)
        except httpx.TransportError as exc:
            raise unreachable(type(exc).__name__) from None
        try:
            if response.status_code in REDIRECTS and "location" in response.headers:
                return url.join(response.headers["location"])
            self._check_status(response.status_code, subpath)
            return await _read_capped(response, limit)
        finally:
            await response.aclose()

    async def _send_pinned(self, url: httpx.URL, addresses: list[Address]) -> httpx.Response:
        """GET ``url`` from the checked addresses, one after the other until one connects.
        The URL's host is replaced by the address; ``Host`` and the TLS server name stay the
        URL's, so virtual hosts work and certificates are verified for the name."""
        headers = {"Host": url.netloc.decode("ascii"), **self._credentials_for(url)}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        auth = self.auth if self._same_origin(url) else None
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = url.copy_with(host=str(address))
            request = self.client.build_request(
                "GET", pinned, headers=headers, extensions=extensions
            )
            try:
                return await self.client.send(request, stream=True, auth=auth)
            except httpx.ConnectError as exc:
                failure = exc  # the next address may answer
        assert failure is not None  # resolve() never returns an empty list
        raise failure

    def _same_origin(self, url: httpx.URL) -> bool:
        return url.copy_with(path="/", query=None, fragment=None) == self.origin

    def _credentials_for(self, url: httpx.URL) -> dict[str, str]:
        """Bearer tokens go only to the volume's own origin, never to a redirect target."""
        return self.headers if self._same_origin(url) else {}

    @staticmethod
    def _check_status(status: int, subpath: str) -> None:
        if status == 200:
            return
        if status in (404, 410):
            raise not_found(subpath)
        if status in (401, 403):
            raise forbidden(f"the source answered HTTP {status}")
        if status in TEMPORARY_STATUSES or status >= 500:
            raise AttachmentError(f"source answered HTTP {status}", temporary=True)
        raise AttachmentError(f"source answered HTTP {status}", temporary=False)

    async def close(self) -> None:
        await self.client.aclose()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit``: never more than that in memory."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except httpx.TransportError as exc:
        raise unreachable(type(exc).__name__) from None
    return bytes(body)
