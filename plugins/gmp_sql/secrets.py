"""Secrets at rest: SMTP passwords and volume credentials, sealed with AES-GCM.

With a key configured (``[secrets] key``, usually as ``GMP_SECRETS_KEY``, or ``key_file``),
the store writes each secret as the text::

    gmp:v1:<key id>:<base64url of nonce + ciphertext + tag>

The text says how it was made, so one table may hold a mix: values written in clear before a
key was set are read as they are, and values sealed with an older key are read as long as
that key is still listed (``old_keys``, or the next lines of the key file). New writes always
use the current key; ``gmp secrets rotate`` re-seals everything with it (docs/security.md).

Each value is bound to where it lives (AES-GCM associated data: the table, the row and the
field), so a sealed password copied into another account's row does not open there: whoever
can write the database cannot make the proxy send one account's password to another's host.

Neither keys nor secrets ever appear in an error or a log line: errors name the account or
volume, and the key by its id (a hash prefix, which says nothing about the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationInfo, field_validator

from gmp_core import ConfigError, Settings, setting

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "gmp:v1:"


def _aes_gcm(key: bytes) -> AESGCM:
    """Imported on first use: cryptography adds 6 MB to the process, which most deployments
    (no key configured) never need."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per value (2^32 values per key are safe)
NEW_KEY_HINT = "make one with: gmp secrets new-key"

# A volume config key naming one of these holds a secret (the rule gmp_volumes redacts by).
_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "auth")


class SecretsSettings(Settings):
    """``[secrets]``: the keys that seal SMTP passwords and volume credentials in the store.
    Keys are checked here, so ``gmp check-config`` finds a bad one and the error names where
    it came from; a key file is read when the store is made."""

    key: str = setting(
        "",
        description="current key: 32 random bytes in base64 (prefer the environment); "
        "empty, with no key_file: secrets are stored in clear",
        repr=False,
    )
    key_file: str = setting(
        "",
        description="file holding the current key on its first line and older keys on the "
        "next ones; refused when other users may read it",
    )
    old_keys: list[str] = setting(
        [],
        description="older keys (base64): values sealed with them still read, during a rotation",
        repr=False,
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value:
            _decode_key(value)
        return value

    @field_validator("old_keys")
    @classmethod
    def _old_keys(cls, values: list[str]) -> list[str]:
        for value in values:
            _decode_key(value)
        return values

    @field_validator("key_file")
    @classmethod
    def _one_current_key(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("key"):
            raise ValueError("set key or key_file, not both")
        return value


NO_KEY_TO_ROTATE_TO = "no current key to rotate to: set [secrets] key or key_file"


class SecretError(ConfigError):
    """A stored secret cannot be opened (or sealed). The message names the account or volume
    and the key id, never a secret or a key."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a secret lives: bound into its ciphertext, and named in errors."""

    aad: bytes
    label: str


def account_place(account_id: str) -> Place:
    return Place(
        _aad("accounts", account_id, "password"), f"the password of account {account_id!r}"
    )


def volume_place(name: str, owner: str | None, field: str) -> Place:
    whose = f" of account {owner!r}" if owner else ""
    return Place(
        _aad("volumes", owner or "", name, field), f"config.{field} of volume {name!r}{whose}"
    )


def _aad(*parts: str) -> bytes:
    return json.dumps(parts).encode()  # unambiguous whatever the ids contain


def is_secret_field(name: str) -> bool:
    """Whether a volume config key holds a credential (S3 keys, HTTP/WebDAV password, token)."""
    return any(word in name.lower() for word in _SECRET_WORDS)


def secret_fields(config: Mapping[str, Any]) -> list[str]:
    """The keys of a volume's config that hold a credential (and have a value)."""
    return [k for k, v in config.items() if is_secret_field(k) and isinstance(v, str) and v]


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def key_id(key: bytes) -> str:
    """A short, stable name for a key: enough to tell keys apart in a value and an error."""
    return hashlib.sha256(b"gmp-secrets-key-id\0" + key).hexdigest()[:8]


def new_key() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class Keyring:
    """The current key (None: secrets are written in clear) and older keys kept for reading."""

    def __init__(self, current: bytes | None = None, old: tuple[bytes, ...] = ()) -> None:
        self._current = current
        self.current_id = key_id(current) if current is not None else None
        self._keys = {key_id(key): key for key in old}
        if current is not None:
            self._keys[key_id(current)] = current

    @classmethod
    def from_settings(cls, settings: SecretsSettings) -> Keyring:
        current: bytes | None = None
        old = [_decode_key(text) for text in settings.old_keys]
        if settings.key:
            current = _decode_key(settings.key)
        elif settings.key_file:
            first, *older = read_key_file(Path(settings.key_file).expanduser())
            current = first
            old += older
        return cls(current, tuple(old))

    @property
    def encrypts(self) -> bool:
        return self._current is not None

    def seal(self, value: str, place: Place) -> str:
        """``value`` as stored: sealed with the current key, or as it is without one."""
        if self._current is None:
            return value
        nonce = os.urandom(NONCE_BYTES)
        sealed = _aes_gcm(self._current).encrypt(nonce, value.encode(), place.aad)
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{PREFIX}{self.current_id}:{token}"

    def open(self, stored: str, place: Place) -> str:
        """The secret behind a stored value; a value in clear (written before any key was
        set) is returned as it is."""
        if not is_sealed(stored):
            return stored
        kid, _, token = stored.removeprefix(PREFIX).partition(":")
        key = self._keys.get(kid)
        if key is None:
            raise SecretError(
                f"cannot decrypt {place.label}: it was encrypted with key {kid}, which is not "
                "configured ([secrets] key, key_file or old_keys)"
            )
        from cryptography.exceptions import InvalidTag

        try:
            blob = base64.urlsafe_b64decode(token.encode())
            value = _aes_gcm(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], place.aad)
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretError(
                f"cannot decrypt {place.label} with key {kid}: the stored value was altered, "
                "or copied from another row"
            ) from None
        return value.decode()

    def is_current(self, stored: str) -> bool:
        """Sealed with the current key already (rotation leaves it alone)."""
        return self.current_id is not None and stored.startswith(f"{PREFIX}{self.current_id}:")


def read_key_file(path: Path) -> list[bytes]:
    """The keys in a key file, current first. Refused when other users may read it: a key
    anyone on the host can read protects nothing."""
    where = f"[secrets] key_file {path}"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(
                f"{where}: other users may read or change it (mode {mode:o}); run: chmod 600 {path}"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    texts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not texts:
        raise ConfigError(f"{where}: holds no key ({NEW_KEY_HINT})")
    keys = []
    for n, text in enumerate(texts, 1):
        try:
            keys.append(_decode_key(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: key {n}: {exc}") from None
    return keys


def _decode_key(text: str) -> bytes:
    """A key from its base64 text (standard or URL-safe). Errors never echo the text."""
    try:
        key = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"must be {KEY_BYTES} random bytes in base64 ({NEW_KEY_HINT})")
    return key
