"""Where attachment bytes come from: inline base64, and genro-storage mounts (local
directories, memory). HTTP and WebDAV are in ``web.py``, S3 in ``s3.py``: those connect
through the address guard (``guard.py``).

Every source reads at most ``limit`` bytes and says why it could not: an
:class:`~gmp_core.AttachmentError` that is ``temporary`` (retried with back-off) when the
source may come back, permanent when asking again cannot help.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
from typing import TYPE_CHECKING, Any, Protocol

from gmp_core import AttachmentError

if TYPE_CHECKING:
    from genro_storage import StorageManager

_mount_ids = itertools.count(1)


class Source(Protocol):
    """A mounted volume, ready to read from."""

    async def read(self, subpath: str, limit: int) -> bytes: ...

    async def close(self) -> None: ...


def not_found(subpath: str) -> AttachmentError:
    return AttachmentError(f"not found: {subpath[:200]}", temporary=False)


def too_large(limit: int) -> AttachmentError:
    return AttachmentError(f"too large: over the limit of {limit} bytes", temporary=False)


def forbidden(why: str) -> AttachmentError:
    return AttachmentError(f"forbidden: {why}", temporary=False)


def unreachable(why: str) -> AttachmentError:
    return AttachmentError(f"source unreachable: {why}", temporary=True)


def check_subpath(subpath: str) -> str:
    """Refuse paths that try to leave the volume: ``..`` segments, absolute paths,
    backslashes and NULs. (Symbolic links are checked by the backend, after resolving.)"""
    if subpath.startswith("/") or "\\" in subpath or "\0" in subpath:
        raise forbidden("absolute or malformed path")
    if ".." in subpath.split("/"):
        raise forbidden("'..' in path")
    return subpath


class Base64Volume:
    """The built-in ``base64:<data>`` volume: the path is the attachment itself."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def accepts(self, account_id: str) -> bool:
        return True

    async def read(self, subpath: str, account_id: str) -> bytes:
        encoded = "".join(subpath.split())  # line breaks are common in base64 text
        if len(encoded) // 4 * 3 > self.limit + 2:  # refuse before decoding
            raise too_large(self.limit)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise AttachmentError("invalid base64 data", temporary=False) from None
        if len(data) > self.limit:
            raise too_large(self.limit)
        return data


class StorageSource:
    """A genro-storage mount. Reads run in worker threads, so a read that hangs costs a
    thread until the backend gives up, never the event loop."""

    def __init__(self, manager: StorageManager, mount: dict[str, Any]) -> None:
        self.manager = manager
        self.mount = f"gmp-volume-{next(_mount_ids)}"  # unique: names may repeat per account
        manager.add_mount({**mount, "name": self.mount})

    async def read(self, subpath: str, limit: int) -> bytes:
        path = f"{self.mount}:{check_subpath(subpath)}"
        try:
            return await asyncio.to_thread(self._read_bounded, path, limit)
        except AttachmentError:
            raise
        except FileNotFoundError:
            raise not_found(subpath) from None
        except IsADirectoryError:
            raise AttachmentError(f"not a file: {subpath[:200]}", temporary=False) from None
        except PermissionError:
            raise forbidden("the source refused access") from None
        except ValueError as exc:
            # genro-storage: "Path escapes base directory" (a symbolic link leading out),
            # "Path is a directory". Its text names server paths: keep them out of reports.
            if "escapes" in str(exc):
                raise forbidden("path leads outside the volume") from None
            raise AttachmentError(f"not a file: {subpath[:200]}", temporary=False) from None
        except Exception as exc:  # connection errors of each backend's client library
            raise unreachable(type(exc).__name__) from None

    def _read_bounded(self, path: str, limit: int) -> bytes:
        """In a worker thread (genro-storage's calls are plain blocking ones there): the size
        first (a stat, an S3 HEAD), then at most ``limit + 1`` bytes, so memory stays bounded
        even if the file grows meanwhile."""
        node = self.manager.node(path)
        if node.size() > limit:
            raise too_large(limit)
        with node.open("rb") as file:
            data = file.read(limit + 1)
        assert isinstance(data, bytes)  # opened "rb"
        if len(data) > limit:
            raise too_large(limit)
        return data

    async def write(self, subpath: str, data: bytes) -> None:
        """Put a file in the volume (memory volumes: tests and embedding)."""
        await self.manager.node(f"{self.mount}:{check_subpath(subpath)}").write_bytes(data)

    async def close(self) -> None:
        self.manager.delete_mount(self.mount)
