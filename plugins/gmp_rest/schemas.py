"""What the REST API accepts and answers, as pydantic models.

Request bodies are validated *loosely* (the envelope only): each message of add-messages is
checked by the core, so one bad message lands in ``rejected`` instead of failing the batch.
The strict models (``MessageIn``, ``AccountIn``) are used for the OpenAPI description only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    status: Status | None = None
    account_id: str | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: int | None = Field(
        None, ge=0, le=MAX_INT, description="next_cursor of the previous page"
    )


class DeleteAccountQuery(BaseModel):
    force: bool = Field(
        False, description="delete even with unsent messages (they end as error 'account deleted')"
    )


# ---------------------------------------------------------------- answers (documented)


class Ok(BaseModel):
    ok: bool = True


class Failure(BaseModel):
    ok: bool = False
    error: str


class StatusAnswer(Ok):
    active: bool
    queue: dict[str, int]
    in_hand: int
    heartbeats: dict[str, float]
    started_at: float | None
    worker: str


class RejectionOut(BaseModel):
    id: str | None
    reason: str


class AddMessagesAnswer(Ok):
    queued: int
    rejected: list[RejectionOut]


class ActiveAnswer(Ok):
    active: bool


class SkippedOut(BaseModel):
    id: str
    reason: str


class DeleteMessagesAnswer(Ok):
    removed: int
    not_found: list[str]
    skipped: list[SkippedOut]


class CleanupAnswer(Ok):
    removed: int


class MessageOut(BaseModel):
    id: str
    account_id: str
    priority: int
    status: Status
    deferred_ts: int | None
    sent_ts: int | None
    error_ts: int | None
    error: str | None
    reported_ts: int | None
    attempts: int
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str = Field(description="ISO 8601, UTC")


class MessagesAnswer(Ok):
    messages: list[MessageOut]
    next_cursor: int | None


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
    ts: float
    code: int | None
    detail: str
    data: dict[str, Any]


class MessageAnswer(Ok):
    message: MessageDetail
    events: list[EventOut]


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
    created_at: float | None
    updated_at: float | None


class AccountsAnswer(Ok):
    accounts: list[AccountOut]


# ---------------------------------------------------------------- volumes (plugin gmp_volumes)


class VolumeRequest(BaseModel):
    name: str = Field(description="the volume part of storage_path (volume:subpath)")
    backend: Literal["local", "memory", "s3", "http", "webdav"]
    config: dict[str, Any] = Field(default_factory=dict, description="the backend's settings")
    account_id: str | None = Field(None, description="only this account may use it")


class VolumeQuery(BaseModel):
    account_id: str | None = None


class VolumeOut(BaseModel):
    name: str
    backend: str
    config: dict[str, Any] = Field(description="credentials redacted as '***'")
    account_id: str | None
    source: Literal["config", "api"] = Field(description="plugins.toml or POST /volume")
    created_at: float | None
    updated_at: float | None


class VolumeSetAnswer(Ok):
    volume: VolumeOut


class VolumesAnswer(Ok):
    volumes: list[VolumeOut]


class VolumeAnswer(Ok, VolumeOut):
    """The volume's fields at the top level (as the original service answered), with ``ok``."""
