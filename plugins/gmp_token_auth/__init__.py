"""Bundled auth plugin: API tokens in the ``X-API-Token`` header.

``api_token`` administers the whole proxy. ``account_tokens`` give each application a token
of its own, limited to its accounts: it queues, reads and deletes their messages and manages
those accounts and their volumes, and nothing of any other account (the REST plugin refuses
the rest, see docs/security.md). Every configured token is compared, in constant time, on
every request. With no token configured every request is let in as ``anonymous``: the REST
plugin then refuses to listen anywhere but on loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gmp_core import Config, Principal, Settings, hookimpl, setting

HEADER = "x-api-token"  # the core hands plugins lower-cased header names
MIN_TOKEN_LENGTH = 16


class AccountToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str = Field(min_length=MIN_TOKEN_LENGTH)
    accounts: list[str] = Field(min_length=1)


class TokenAuthSettings(Settings):
    api_token: str = setting(
        "", env="GMP_API_TOKEN", description="the value clients send in X-API-Token"
    )
    account_tokens: list[AccountToken] = setting(
        [],
        description="tokens limited to some accounts: [[token_auth.account_tokens]] tables "
        f"with token (at least {MIN_TOKEN_LENGTH} characters) and accounts",
    )

    @field_validator("account_tokens")
    @classmethod
    def _distinct(cls, tokens: list[AccountToken]) -> list[AccountToken]:
        seen: set[str] = set()
        for index, entry in enumerate(tokens):
            if entry.token in seen:
                raise ValueError(f"account_tokens[{index}].token: used twice")
            seen.add(entry.token)
        return tokens


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("token_auth", TokenAuthSettings)


@hookimpl
def gmp_authenticate(headers: Mapping[str, str], config: Config) -> Principal | None:
    settings: TokenAuthSettings = config.section("token_auth")
    admin = settings.api_token.strip()
    if not admin and not settings.account_tokens:
        return Principal("anonymous")
    given = headers.get(HEADER, "").encode()
    # Compare with every token, whatever matched: the time taken says nothing of which.
    found = Principal("token") if admin and _same(given, admin) else None
    for index, entry in enumerate(settings.account_tokens):
        if _same(given, entry.token) and found is None:
            found = Principal(f"account_tokens[{index}]", accounts=frozenset(entry.accounts))
    return found


def _same(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode())
