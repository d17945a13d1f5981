"""Helpers of the REST API tests: configuration, payload builders, a test volume plugin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gmp_core import Config, Service, hookimpl

TOKEN = "secret-token-value"
ServiceFactory = Callable[..., Awaitable[Service]]


class MemoryVolumes:
    """A plugin with a volume ``mem`` (attachments in tests without a real backend)."""

    __name__ = "test-rest-volumes"

    @hookimpl
    def gmp_register_volume_backends(
        self, register: Callable[[str, Any], None], service: Service
    ) -> None:
        register("mem", self)

    def accepts(self, account_id: str) -> bool:
        return True

    async def read(self, subpath: str, account_id: str) -> bytes:
        return subpath.encode()


def rest_config(tmp_path: Path, **tables: dict[str, Any]) -> Config:
    merged: dict[str, dict[str, Any]] = {
        "sql": {"url": str(tmp_path / "gmp.db")},
        "rest": {"port": 0},
        "token_auth": {"api_token": TOKEN},
    }
    for table, values in tables.items():
        merged.setdefault(table, {}).update(values)
    return Config(merged, environ={})


def base_url(service: Service) -> str:
    return str(service.state["rest"].url)


def account(id: str = "acc", **fields: Any) -> dict[str, Any]:
    # Nothing listens on port 9 of 127.0.0.1 (discard): delivery is never asserted.
    return {"id": id, "host": "127.0.0.1", "port": 9, "tls": "none", **fields}


def message(id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": id,
        "account_id": "acc",
        "from": "sender@example.com",
        "to": "rcpt@example.com",
        "subject": f"message {id}",
        "body": "hello",
        **fields,
    }
