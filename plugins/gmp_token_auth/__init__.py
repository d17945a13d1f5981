"""Bundled auth plugin: one shared API token in the ``X-API-Token`` header.

The comparison is constant-time. With no token configured every request is let in as
``anonymous``: the REST plugin then refuses to listen anywhere but on loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from gmp_core import Config, Principal, Settings, hookimpl, setting

HEADER = "x-api-token"  # the core hands plugins lower-cased header names


class TokenAuthSettings(Settings):
    api_token: str = setting(
        "", env="GMP_API_TOKEN", description="the value clients send in X-API-Token"
    )


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("token_auth", TokenAuthSettings)


@hookimpl
def gmp_authenticate(headers: Mapping[str, str], config: Config) -> Principal | None:
    expected = config.section("token_auth").api_token.strip()
    if not expected:
        return Principal("anonymous")
    given = headers.get(HEADER, "")
    if hmac.compare_digest(given.encode(), expected.encode()):
        return Principal("token")
    return None
