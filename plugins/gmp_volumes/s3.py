"""S3 volumes (AWS, or any S3-compatible store at ``endpoint_url``) through s3fs.

Read in the event loop with s3fs's asynchronous API (aiobotocore over aiohttp). A volume set
over the API is guarded like an HTTP one (``guard.py``): its aiohttp connector resolves host
names through the address guard, which refuses the name when any of its addresses is not
permitted, and hands aiohttp only the checked addresses; every socket is checked once more
against the address it is about to connect to (address literals never meet a resolver).
No DNS cache, and no proxy from the environment, which would reach the name on our behalf.
genro-storage's S3 mount offers no place for such hooks, hence s3fs directly; volumes of
``plugins.toml`` are the operator's and go unguarded, as they always did.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any

from gmp_core import AttachmentError
from gmp_volumes.install import MissingLibrary
from gmp_volumes.sources import check_subpath, forbidden, not_found, too_large, unreachable

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

    from gmp_volumes.guard import AddressGuard


class S3Source:
    def __init__(self, config: Any, guard: AddressGuard | None) -> None:
        try:
            import aiohttp  # noqa: F401  the guarded connector's (and aiobotocore's)
            import s3fs
        except ImportError as exc:  # uninstalled by hand: say what brings it back
            raise MissingLibrary("s3", exc, "s3fs", "aiohttp") from None

        self.root = "/".join(part.strip("/") for part in (config.bucket, config.base_path) if part)
        config_kwargs: dict[str, Any] = {}
        if guard is not None:
            config_kwargs = {"connector_args": _guarded_connector(guard), "proxies": {}}
        self.fs = s3fs.S3FileSystem(
            asynchronous=True,
            skip_instance_cache=True,  # never share a (guarded or not) client with another volume
            anon=config.anon,
            key=config.access_key or None,
            secret=config.secret_key or None,
            endpoint_url=config.endpoint_url or None,
            client_kwargs={"region_name": config.region} if config.region else {},
            config_kwargs=config_kwargs,
        )
        self.fs.retries = 1  # s3fs would retry 5 times; the dispatcher retries, with back-off

    async def read(self, subpath: str, limit: int) -> bytes:
        path = f"{self.root}/{check_subpath(subpath)}"
        try:
            info = await self.fs._info(path)
            if info.get("type") != "file":
                raise AttachmentError(f"not a file: {subpath[:200]}", temporary=False)
            if int(info.get("size") or 0) > limit:
                raise too_large(limit)
            data: bytes = await self.fs._cat_file(path, start=0, end=limit + 1)
        except AttachmentError:
            raise
        except FileNotFoundError:
            raise not_found(subpath) from None
        except PermissionError:
            raise forbidden("the source refused access") from None
        except Exception as exc:  # connection errors of botocore and aiohttp
            refusal = _guard_refusal(exc)  # aiobotocore wraps it in an HTTPClientError
            if refusal is not None:
                raise refusal from None
            raise unreachable(type(exc).__name__) from None
        if len(data) > limit:
            raise too_large(limit)
        return data

    async def close(self) -> None:
        """Close the clients s3fs opened (one per region it met, without endpoint_url)."""
        creator = getattr(self.fs, "_s3creator", None)  # set by the first request
        if creator is not None:
            await creator.__aexit__(None, None, None)


def _guard_refusal(error: BaseException) -> AttachmentError | None:
    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 10:
        if isinstance(cause, AttachmentError):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _guarded_connector(guard: AddressGuard) -> dict[str, Any]:
    """aiohttp connector settings for aiobotocore (``AioConfig(connector_args=...)``)."""
    from aiohttp.abc import AbstractResolver

    class GuardedResolver(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            addresses = await guard.resolve(host)
            return [
                {
                    "hostname": host,
                    "host": str(address),
                    "port": port,
                    "family": _family(address),
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
                for address in addresses
                if family in (socket.AF_UNSPEC, _family(address))
            ]

        async def close(self) -> None:
            pass

    def checked_socket(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        guard.check(ipaddress.ip_address(sockaddr[0]))  # what connect() is about to reach
        return socket.socket(family, kind, proto)

    return {"resolver": GuardedResolver(), "socket_factory": checked_socket, "use_dns_cache": False}


def _family(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> socket.AddressFamily:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET
