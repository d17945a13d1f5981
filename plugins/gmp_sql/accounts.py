"""Accounts: the SMTP (or other transport) settings messages are sent with. The password is
sealed as it is written and opened as it is read (``secrets.py``): the core and the other
plugins only ever see it in clear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gmp_core import Account, AccountDeletion, Event, State
from gmp_sql.base import UNSENT, chunks, dicts
from gmp_sql.mapping import account_columns, account_of
from gmp_sql.reports import ReportQueue
from gmp_sql.runner import on_db_thread
from gmp_sql.secrets import account_place


class AccountMethods(ReportQueue):
    """The accounts of :class:`gmp_core.Store`."""

    @on_db_thread
    def put_account(self, account: Account, now: float) -> None:
        row = self.schema.Account
        values = account_columns(account)
        if account.password:
            values["password"] = self.keyring.seal(account.password, account_place(account.id))
        values.update(created_at=now, updated_at=now)
        update = {k: v for k, v in values.items() if k not in ("id", "created_at")}
        with self._write():
            row.insert(**values).on_conflict(conflict_target=[row.id], update=update).execute()

    @on_db_thread
    def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]:
        row = self.schema.Account
        ids = list(ids)
        found = dicts(row.select().where(row.id.in_(ids))) if ids else []
        return {r["id"]: self._account(r) for r in found}

    @on_db_thread
    def list_accounts(self) -> list[Account]:
        row = self.schema.Account
        rows = dicts(row.select().order_by(row.id))
        return [self._account(r) for r in rows]

    def _account(self, row: dict[str, Any]) -> Account:
        if row["password"]:
            row = {**row, "password": self.keyring.open(row["password"], account_place(row["id"]))}
        return account_of(row)

    @on_db_thread
    def delete_account(self, account_id: str, *, force: bool, now: float) -> AccountDeletion:
        msg, account = self.schema.Message, self.schema.Account
        with self._write():
            if not account.select().where(account.id == account_id).exists():
                return AccountDeletion(found=False)
            unsent_rows = self._sql(
                "SELECT id, state FROM messages WHERE account_id = ? AND state IN (?, ?, ?)",
                (account_id, *UNSENT),
            )
            if unsent_rows and not force:
                return AccountDeletion(found=True, unsent=len(unsent_rows))
            # Messages being sent right now finish; their next attempt finds no account.
            waiting = [id_ for id_, state in unsent_rows if state != State.SENDING]
            for chunk in chunks(waiting):
                msg.update(
                    state=State.ERROR,
                    error="account deleted",
                    error_ts=now,
                    updated_at=now,
                    reported_ts=self._reported_mark(now),
                ).where(msg.id.in_(chunk)).execute()
            events = [
                Event("error", id_, account_id, now, detail="account deleted") for id_ in waiting
            ]
            self._insert_events(events)
            account.delete().where(account.id == account_id).execute()
        return AccountDeletion(found=True, deleted=True, unsent=len(unsent_rows), events=events)
