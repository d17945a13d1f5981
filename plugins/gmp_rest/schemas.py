"""What the REST API accepts and answers, as pydantic models.

Request bodies are validated *loosely* (the envelope only): each message of add-messages is
checked by the core, so one bad message lands in ``rejected`` instead of failing the batch.
The strict models (``MessageIn``, ``AccountIn``) are used for the OpenAPI description only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from gmp_core.intake import MAX_INT, AccountIn, MessageIn

Status = Literal["queued", "scheduled", "sending", "sent", "error"]


# ---------------------------------------------------------------- request bodies (validated)


class AddMessagesBody(BaseModel):
    messages: list[Any]
    default_priority: Any = None


class DeleteMessagesBody(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    ids: list[str]


class CleanupBody(BaseModel):
    older_than_seconds: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="default: [service] delivery_report_retention_seconds",
    )


# ---------------------------------------------------------------- request bodies (documented)


class AddMessagesRequest(BaseModel):
    """Each message is checked on its own: a bad one is listed in ``rejected``."""

    messages: list[MessageIn]
    default_priority: int | str | None = Field(
        None, description="for messages that give none: 0-3 or immediate|high|medium|low"
    )


AccountRequest = AccountIn


# ---------------------------------------------------------------- query strings


class ListMessagesQuery(BaseModel):
    status: Status | None = Field(None, description="only messages in this state")
    account_id: str | None = Field(None, description="only this account's messages")
    limit: int = Field(100, ge=1, le=1000, description="most messages in the page")
    cursor: int | None = Field(
        None, ge=0, le=MAX_INT, description="next_cursor of the previous page"
    )


class DeleteAccountQuery(BaseModel):
    force: bool = Field(
        False, description="delete even with unsent messages (they end as error 'account deleted')"
    )


# ---------------------------------------------------------------- answers (documented)
#
# Timestamps: every ``*_ts`` field, event ``ts``, ``started_at`` and the heartbeats are unix
# seconds as integers (rounded down), as the original's ``_ts`` columns were; ``created_at``
# and ``updated_at`` are ISO 8601 text in UTC (the original's were text too).

UnixSeconds = int
IsoTime = Annotated[str, Field(description="ISO 8601, UTC: 2025-01-31T12:00:00Z")]


class Ok(BaseModel):
    ok: Literal[True]


class Failure(BaseModel):
    """Every failure: ``ok`` false and a sentence naming the problem."""

    ok: Literal[False]
    error: str


class HealthAnswer(Ok):
    status: Literal["ok"] = Field(description='the original service\'s body was {"status": "ok"}')


class HealthFailure(Failure):
    """A background loop has died (or, for /ready, the store does not answer)."""

    status: Literal["error"]


class QueueCounts(BaseModel):
    queued: int
    scheduled: int
    sending: int
    sent: int
    error: int


class Heartbeats(BaseModel):
    dispatcher: UnixSeconds = Field(description="when the claim loop last turned (0: not yet)")
    recorder: UnixSeconds = Field(description="when outcomes were last written (0: not yet)")


class ReporterStatus(BaseModel):
    heartbeat: UnixSeconds = Field(description="when its loop last turned (0: not yet)")
    leading: bool = Field(description="this process posts this reporter's reports (its lease)")
    failures: int = Field(description="failed posts in a row")
    last_acknowledged: UnixSeconds | None = Field(description="last batch the client took")


class StatusAnswer(Ok):
    active: bool = Field(description="sending is not suspended")
    queue: QueueCounts = Field(description="messages per state, in the whole store")
    in_hand: int = Field(description="messages this process has claimed and not finished")
    heartbeats: Heartbeats
    reporters: dict[str, ReporterStatus] = Field(description="each enabled reporter, by name")
    started_at: UnixSeconds | None
    worker: str = Field(description="this process, as its claims name it")


class RejectionOut(BaseModel):
    id: str | None
    reason: str


class WarningOut(BaseModel):
    id: str | None = Field(description="the message's id")
    field: str = Field(description="the field the proxy did not use")
    warning: str = Field(description="unknown field ignored")


class AddMessagesAnswer(Ok):
    """At least one message was queued, or every one was already there (a retry)."""

    queued: int
    rejected: list[RejectionOut]
    warnings: list[WarningOut] = Field(description="fields ignored, per message; empty when none")


class AllRejectedDetail(BaseModel):
    error: Literal["all messages rejected"]
    rejected: list[RejectionOut]


class AllRejected(Failure):
    """Every message of the call was rejected for its content, as the original answered.

    ``detail`` repeats the rejections in the original's body shape."""

    error: Literal["all messages rejected"]
    queued: Literal[0]
    rejected: list[RejectionOut]
    warnings: list[WarningOut]
    detail: AllRejectedDetail


class AddMessagesFailure(RootModel[AllRejected | Failure]):
    """400: every message rejected (``all messages rejected``), or the call itself unusable
    (``invalid JSON body: ...``, ``messages must be a list``, ``Cannot enqueue more than ...``)."""


class ActiveAnswer(Ok):
    active: bool


class SkippedOut(BaseModel):
    id: str
    reason: str


class DeleteMessagesAnswer(Ok):
    removed: int
    not_found: list[str]
    skipped: list[SkippedOut] = Field(description="being sent right now: not deleted")


class CleanupAnswer(Ok):
    removed: int


class MessageOut(BaseModel):
    id: str
    account_id: str
    priority: int
    status: Status
    deferred_ts: UnixSeconds | None
    sent_ts: UnixSeconds | None
    error_ts: UnixSeconds | None
    error: str | None
    reported_ts: UnixSeconds | None
    attempts: int = Field(description="failed attempts so far")
    created_at: IsoTime
    updated_at: IsoTime


class MessagesAnswer(Ok):
    messages: list[MessageOut]
    next_cursor: int | None = Field(description="pass back as cursor; null: last page")


class AttachmentOut(BaseModel):
    filename: str
    storage_path: str = Field(description="volume and a shortened path; never inline data")
    mime_type: str | None


class MessageDetail(MessageOut):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: str | None
    return_path: str | None
    subject: str
    content_type: str
    message_id: str
    headers: dict[str, str]
    attachments: list[AttachmentOut]
    body_size: int = Field(description="bytes of body plus html (UTF-8); the texts are omitted")


class EventOut(BaseModel):
    kind: str
    ts: UnixSeconds
    code: int | None
    detail: str
    data: dict[str, Any]


class MessageAnswer(Ok):
    message: MessageDetail
    events: list[EventOut] = Field(description="the message's history, oldest first")


class AccountOut(BaseModel):
    id: str
    host: str
    port: int
    user: str | None
    has_password: bool
    tls: str
    limit_per_minute: int | None
    limit_per_hour: int | None
    limit_per_day: int | None
    limit_behavior: str
    batch_size: int | None
    max_connections: int
    ttl: float
    transport: str
    created_at: IsoTime | None
    updated_at: IsoTime | None


class AccountsAnswer(Ok):
    accounts: list[AccountOut]


# ---------------------------------------------------------------- volumes (plugin gmp_volumes)


class VolumeRequest(BaseModel):
    name: str = Field(description="the volume part of storage_path (volume:subpath)")
    backend: Literal["local", "memory", "s3", "http", "webdav"]
    config: dict[str, Any] = Field(default_factory=dict, description="the backend's settings")
    account_id: str | None = Field(None, description="only this account may use it")


class VolumeOwner(BaseModel):
    """The one field of ``POST /volume`` that the API checks itself (authorisation needs it)."""

    account_id: str | None = None


class VolumeQuery(BaseModel):
    account_id: str | None = Field(
        None, description="the account's own volume (none: the global one, or every one)"
    )


class VolumeOut(BaseModel):
    name: str
    backend: str
    config: dict[str, Any] = Field(description="credentials redacted as '***'")
    account_id: str | None
    source: Literal["config", "api"] = Field(description="plugins.toml or POST /volume")
    created_at: IsoTime | None
    updated_at: IsoTime | None


class VolumeSetAnswer(Ok):
    volume: VolumeOut


class VolumesAnswer(Ok):
    volumes: list[VolumeOut]


class VolumeAnswer(Ok, VolumeOut):
    """The volume's fields at the top level (as the original service answered), with ``ok``."""
