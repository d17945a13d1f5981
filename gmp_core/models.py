"""What the core talks about: messages, accounts, events and outcomes.

Plain dataclasses with no I/O. Validation of what clients send lives in ``intake.py``; these
objects are always valid once built.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

PRIORITY_LABELS = {"immediate": 0, "high": 1, "medium": 2, "low": 3}
IMMEDIATE = 0

# A display name and an addr-spec, as email.utils.getaddresses returns them.
Address = tuple[str, str]


class State(StrEnum):
    """Where a message is in its life; the wire names of SPEC §3."""

    QUEUED = "queued"  # due now, waiting for a dispatcher
    SCHEDULED = "scheduled"  # due later: client schedule, retry back-off or rate limit
    SENDING = "sending"  # claimed under a lease by one dispatcher
    SENT = "sent"
    ERROR = "error"


FINAL_STATES = (State.SENT, State.ERROR)


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"  # required: never falls back to plaintext
    SSL = "ssl"  # implicit TLS, usually port 465
    # STARTTLS when offered (certificate not verified), plaintext otherwise: what an account
    # naming no mode gets, the original service's plaintext default made safer
    OPPORTUNISTIC = "opportunistic"


@dataclass(slots=True)
class Attachment:
    filename: str
    storage_path: str  # "volume:subpath"
    mime_type: str | None = None

    @property
    def volume(self) -> str:
        return self.storage_path.partition(":")[0]

    @property
    def subpath(self) -> str:
        return self.storage_path.partition(":")[2]


@dataclass(slots=True)
class Message:
    """One email as the client asked for it, validated and normalised."""

    id: str
    account_id: str
    sender: Address  # the "from" field
    to: list[Address]
    subject: str = ""
    body: str = ""
    content_type: str = "plain"  # "plain" | "html": the type of `body`
    html: str | None = None  # with a plain `body`, makes multipart/alternative
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: Address | None = None
    return_path: str | None = None  # envelope sender (MAIL FROM)
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str = ""  # generated once at intake when the client gives none
    attachments: list[Attachment] = field(default_factory=list)
    priority: int = 2
    deferred_ts: float | None = None

    @property
    def envelope_sender(self) -> str:
        return self.return_path or self.sender[1]

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients: to, cc and bcc, each once, in that order."""
        return list(dict.fromkeys(addr for _, addr in (*self.to, *self.cc, *self.bcc)))

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able dict for the store; :meth:`from_payload` reverses it. (Written out:
        ``dataclasses.asdict`` deep-copies every value and was the costliest step of intake.)
        """
        return {
            "sender": self.sender,
            "to": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "reply_to": self.reply_to,
            "return_path": self.return_path,
            "subject": self.subject,
            "body": self.body,
            "content_type": self.content_type,
            "html": self.html,
            "headers": self.headers,
            "message_id": self.message_id,
            "attachments": [
                {"filename": a.filename, "storage_path": a.storage_path, "mime_type": a.mime_type}
                for a in self.attachments
            ],
        }

    @classmethod
    def from_payload(
        cls,
        payload: dict[str, Any],
        *,
        id: str,
        account_id: str,
        priority: int,
        deferred_ts: float | None = None,
    ) -> Message:
        reply_to = payload.get("reply_to")
        return cls(
            id=id,
            account_id=account_id,
            priority=priority,
            deferred_ts=deferred_ts,
            sender=_address(payload["sender"]),
            to=[_address(a) for a in payload["to"]],
            cc=[_address(a) for a in payload.get("cc", ())],
            bcc=[_address(a) for a in payload.get("bcc", ())],
            reply_to=_address(reply_to) if reply_to else None,
            subject=payload.get("subject", ""),
            body=payload.get("body", ""),
            content_type=payload.get("content_type", "plain"),
            html=payload.get("html"),
            return_path=payload.get("return_path"),
            headers=payload.get("headers", {}),
            message_id=payload.get("message_id", ""),
            attachments=[Attachment(**a) for a in payload.get("attachments", ())],
        )


def _address(value: list[str] | tuple[str, str]) -> Address:
    return (value[0], value[1])


# What RFC 5322 does not allow in a display name unquoted (email.utils' own list).
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def format_address(address: Address) -> str:
    """``("Doe, John", "j@x")`` -> ``'"Doe, John" <j@x>'``, for people and for the API: the
    text as it is, non-ASCII names and internationalised addresses included (never encoded
    words), and read back by intake as the same address. (``email.utils.formataddr`` encodes
    a non-ASCII name and raises on an internationalised address.)"""
    name, addr = address
    if not name:
        return addr
    if _SPECIALS.search(name):
        name = f'"{email.utils.quote(name)}"'
    return f"{name} <{addr}>"


@dataclass(slots=True)
class Account:
    """An SMTP account (or, through ``transport``, any delivery channel)."""

    id: str
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = None
    tls: TlsMode = TlsMode.STARTTLS
    limit_per_minute: int | None = None
    limit_per_hour: int | None = None
    limit_per_day: int | None = None
    limit_behavior: str = "defer"  # "defer" | "reject"
    batch_size: int | None = None  # most messages of this account claimed at once
    max_connections: int = 4  # pool size
    ttl: float = 300.0  # idle connection lifetime, seconds
    transport: str = "smtp"
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def rate_limits(self) -> list[tuple[int, int]]:
        """``(window_seconds, limit)`` for every limit that is set."""
        pairs = (
            (60, self.limit_per_minute),
            (3600, self.limit_per_hour),
            (86400, self.limit_per_day),
        )
        return [(window, limit) for window, limit in pairs if limit]

    def public(self) -> dict[str, Any]:
        """The account as the API shows it: never the password."""
        data = asdict(self)
        data["has_password"] = bool(data.pop("password"))
        return data


@dataclass(slots=True)
class Principal:
    """Who is making an API request, as an auth plugin identified them."""

    name: str
    # Account ids this principal may touch; None means every account, and the whole proxy.
    accounts: frozenset[str] | None = None

    @property
    def scoped(self) -> bool:
        """Limited to some accounts: it may not run what acts on the whole proxy."""
        return self.accounts is not None

    def may_use(self, account_id: str | None) -> bool:
        """Whether it may touch account ``account_id`` (None: things of no account)."""
        return self.accounts is None or account_id in self.accounts


@dataclass(slots=True)
class OutgoingMessage:
    """A message on its way out, handed to ``gmp_prepare_message`` and then to a transport.

    ``data`` is the RFC 5322 bytes, built by the core just before sending; a plugin may
    replace it (to sign it, say). Transports that speak an HTTP API may ignore ``data`` and
    read ``message`` instead.
    """

    message: Message
    attempt: int  # 1 for the first attempt
    extra_headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None

    @property
    def sender(self) -> str:
        return self.message.envelope_sender

    @property
    def recipients(self) -> list[str]:
        return self.message.recipients


@dataclass(slots=True)
class SendResult:
    """What a transport says about one attempt.

    ``accepted`` is true when the server took the message for at least one recipient;
    ``refused`` lists recipients refused one by one (address -> "code text"). When nothing
    was accepted, ``temporary`` says whether trying again later may succeed.
    """

    accepted: bool
    temporary: bool = False
    code: int | None = None
    detail: str = ""
    refused: dict[str, str] = field(default_factory=dict)

    @classmethod
    def ok(cls, refused: dict[str, str] | None = None) -> SendResult:
        return cls(accepted=True, refused=refused or {})

    @classmethod
    def failed(cls, detail: str, *, temporary: bool, code: int | None = None) -> SendResult:
        return cls(accepted=False, temporary=temporary, code=code, detail=detail)


@dataclass(slots=True)
class Event:
    """Something that happened to a message. Stored as its history, reported, observed."""

    kind: str  # queued | sent | error | deferred | rejected | released
    message_id: str
    account_id: str | None
    ts: float
    code: int | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """The end of one dispatch attempt, as the dispatcher asks the store to record it."""

    message_id: str
    state: State  # SENT, ERROR, SCHEDULED (retry or rate limit) or QUEUED (released)
    event: Event | None  # None only for a release at shutdown
    deferred_ts: float | None = None
    attempts: int = 0  # failed attempts so far, after this one
    error: str | None = None
