"""What a volume is: a name, a backend, the backend's settings and, optionally, the one
account it serves. Definitions come from ``plugins.toml`` or from ``POST /volume``; both are
validated here, so a bad one is refused with the field it got wrong.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BUILT_IN = "base64"
REDACTED = "***"

# A config key naming any of these holds a secret: never shown, never logged.
_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "auth")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The original service's names (its genro-storage keys, its VOLUMES.md) for our keys:
    # volumes written its way keep working (see with_our_names).
    ORIGINAL_NAMES: ClassVar[dict[str, str]] = {}


class LocalConfig(_BackendConfig):
    ORIGINAL_NAMES = {"path": "base_path"}
    base_path: str = Field(min_length=1, description="directory holding the files")


class MemoryConfig(_BackendConfig):
    """In-process files, for tests and demos; nothing survives a restart."""


class S3Config(_BackendConfig):
    # genro-storage read key/secret/prefix; VOLUMES.md documented access_key/secret_key.
    ORIGINAL_NAMES = {"key": "access_key", "secret": "secret_key", "prefix": "base_path"}
    bucket: str = Field(min_length=3)
    base_path: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    anon: bool = False


class _WebConfig(_BackendConfig):
    username: str | None = None
    password: str | None = None
    token: str | None = None
    # Private, loopback and link-local addresses are refused unless listed here.
    allow_networks: list[Network] = Field(default_factory=list)
    ca_bundle: str | None = None  # CA file for servers with a private certificate authority
    verify_ssl: bool = True  # False: no certificate check at all (plugins.toml only)
    timeout: float | None = Field(None, gt=0)  # one read's deadline, within fetch_timeout

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v for v in value
            ]
        return value


class HttpConfig(_WebConfig):
    base_url: str

    @field_validator("base_url")
    @classmethod
    def _web_url(cls, value: str) -> str:
        return _check_web_url(value)


class WebdavConfig(_WebConfig):
    ORIGINAL_NAMES = {"base_url": "url"}
    url: str

    @field_validator("url")
    @classmethod
    def _web_url(cls, value: str) -> str:
        return _check_web_url(value)


BACKEND_CONFIGS: dict[str, type[_BackendConfig]] = {
    "local": LocalConfig,
    "memory": MemoryConfig,
    "s3": S3Config,
    "http": HttpConfig,
    "webdav": WebdavConfig,
}

Backend = Literal["local", "memory", "s3", "http", "webdav"]


class VolumeDefinition(BaseModel):
    """One named volume. With ``account_id`` only that account's messages may use it; a
    name may exist once globally and once per account (the account's own wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    backend: Backend
    config: dict[str, Any] = Field(default_factory=dict)
    account_id: str | None = Field(None, min_length=1)

    @field_validator("name")
    @classmethod
    def _not_built_in(cls, value: str) -> str:
        if value == BUILT_IN:
            raise ValueError("'base64' is built in and cannot be redefined")
        return value

    def backend_config(self) -> Any:
        """The ``config`` validated for the backend (the original's key names accepted);
        errors name ``config.<key>``."""
        model = BACKEND_CONFIGS[self.backend]
        try:
            return model.model_validate(with_our_names(self.config, model.ORIGINAL_NAMES))
        except ValidationError as exc:
            raise ValueError(f"config.{describe(exc)}") from None

    def public(self) -> dict[str, Any]:
        """The definition as the API shows it: secrets redacted."""
        return {
            "name": self.name,
            "backend": self.backend,
            "config": redact(self.config),
            "account_id": self.account_id,
        }


def with_our_names(config: Mapping[str, Any], original_names: Mapping[str, str]) -> dict[str, Any]:
    """``config`` with the original service's key names replaced by ours. Both forms of one
    key may be given only with the same value."""
    renamed = dict(config)
    for original, ours in original_names.items():
        if original not in renamed:
            continue
        value = renamed.pop(original)
        if ours in renamed and renamed[ours] != value:
            raise ValueError(
                f"config.{original}: the original service's name of {ours}, which is given "
                "too, with another value: give one of them"
            )
        renamed[ours] = value
    return renamed


def describe(error: Exception) -> str:
    """A validation error as "field: problem", never echoing the value (it may be a secret;
    pydantic's own text shows the input)."""
    if isinstance(error, ValidationError):
        first = error.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    return str(error)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to show: secret values replaced, passwords in URLs removed."""
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if any(word in key.lower() for word in _SECRET_WORDS) and value not in (None, ""):
            shown[key] = REDACTED
        elif isinstance(value, str) and "@" in value and "://" in value:
            shown[key] = _without_userinfo(value)
        else:
            shown[key] = value
    return shown


def expand_environment(
    config: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Replace ``${NAME}`` in string values by the environment variable (plugins.toml only:
    secrets stay out of the file). A missing variable is an error naming the key, not the
    value."""
    env = os.environ if environ is None else environ

    def expand(key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ValueError(f"{where}.config.{key}: environment variable {name} is not set")
            return env[name]

        return _ENV_REFERENCE.sub(lookup, value)

    return {key: expand(key, value) for key, value in config.items()}


def _check_web_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (use username and password)")
    return value


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
