"""The store's side of secrets at rest: at start-up every stored secret is opened once (a
wrong or missing key stops the start naming what it cannot open), and ``gmp secrets rotate``
re-seals them all with the current key. The keys and the sealing are ``secrets.py``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from gmp_sql.base import SqlBase, dumps
from gmp_sql.runner import on_db_thread
from gmp_sql.secrets import (
    NO_KEY_TO_ROTATE_TO,
    Place,
    SecretError,
    account_place,
    is_sealed,
    secret_fields,
    volume_place,
)

secrets_log = logging.getLogger("gmp.secrets")


class SecretMethods(SqlBase):
    """Checking the stored secrets at open, and rotating them."""

    def _check_secrets(self) -> None:
        """At start-up, open every stored secret once: a wrong or missing key stops the
        start naming what it cannot open, instead of failing sends later. Also say plainly
        when secrets are, or are still, stored in clear."""
        problems, clear = [], 0
        for place, stored in self._stored_secrets():
            try:
                self.keyring.open(stored, place)
            except SecretError as exc:
                problems.append(str(exc))
            clear += not is_sealed(stored)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SecretError(problems[0] + more)
        if not self.keyring.encrypts:
            secrets_log.warning(
                "no secrets key is configured ([secrets] key or key_file, GMP_SECRETS_KEY): "
                "SMTP passwords and volume credentials are stored in clear"
            )
        elif clear:
            secrets_log.warning(
                "%d stored secret(s) still in clear: run 'gmp secrets rotate' to encrypt them",
                clear,
            )
        else:
            secrets_log.info("stored secrets are encrypted (key %s)", self.keyring.current_id)

    def _stored_secrets(self) -> Iterable[tuple[Place, str]]:
        """Every secret in the store, as stored, with where it lives."""
        for account_id, password in self._sql(
            "SELECT id, password FROM accounts WHERE password <> '' ORDER BY id"
        ):
            yield account_place(account_id), password
        for name, owner, config in self._sql(
            "SELECT name, owner, config FROM volumes ORDER BY name, owner"
        ):
            values = json.loads(config)
            for field in secret_fields(values):
                yield volume_place(name, owner or None, field), values[field]

    @on_db_thread
    def rotate_secrets(self) -> tuple[int, int]:
        """Seal every stored secret with the current key: values in clear and values sealed
        with an older key. Returns (values re-sealed, values already current).

        Each row is rewritten only if it still holds what was read (compare and set), so a
        password changed over the API meanwhile is never put back to its old value; readers
        meanwhile see the old or the new text, and can open both. A row changed meanwhile is
        left as it now is (the change was sealed by whoever made it) and not counted."""
        if not self.keyring.encrypts:
            raise SecretError(NO_KEY_TO_ROTATE_TO)
        resealed = current = 0
        with self._write():
            for account_id, stored in self._sql(
                "SELECT id, password FROM accounts WHERE password <> ''"
            ):
                if self.keyring.is_current(stored):
                    current += 1
                    continue
                place = account_place(account_id)
                sealed = self.keyring.seal(self.keyring.open(stored, place), place)
                resealed += len(
                    self._sql(
                        "UPDATE accounts SET password = ? WHERE id = ? AND password = ? "
                        "RETURNING id",
                        (sealed, account_id, stored),
                    )
                )
            for name, owner, stored_config in self._sql("SELECT name, owner, config FROM volumes"):
                config = json.loads(stored_config)
                fields = secret_fields(config)
                stale = [f for f in fields if not self.keyring.is_current(config[f])]
                current += len(fields) - len(stale)
                if not stale:
                    continue
                for field in stale:
                    place = volume_place(name, owner or None, field)
                    config[field] = self.keyring.seal(
                        self.keyring.open(config[field], place), place
                    )
                changed = self._sql(
                    "UPDATE volumes SET config = ? WHERE name = ? AND owner = ? AND config = ? "
                    "RETURNING name",
                    (dumps(config), name, owner, stored_config),
                )
                resealed += len(stale) if changed else 0
        return resealed, current
