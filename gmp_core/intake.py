"""Checking what clients send: message and account payloads in, valid models out.

Every problem becomes an :class:`InvalidInput` whose text names the field, so one bad message
is rejected alone with a reason the client can act on ("missing to", "invalid address: x",
"invalid header: Subject contains CR or LF").
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from functools import lru_cache
from typing import Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gmp_core.models import PRIORITY_LABELS, Account, Address, Attachment, Message, TlsMode

M = TypeVar("M", bound=BaseModel)

# The largest integer a database column holds (SQLite INTEGER, PostgreSQL BIGINT): a bigger
# one must be a validation error naming the field, not an overflow in the store.
MAX_INT = 2**63 - 1


class InvalidInput(ValueError):
    """A payload cannot be accepted; ``str(exc)`` is the reason given to the client."""


# ---------------------------------------------------------------- wire schemas (OpenAPI too)

AddressList = list[str] | str


class AttachmentIn(BaseModel):
    filename: str
    storage_path: str = Field(description="volume:subpath, e.g. base64:SGVsbG8=")
    mime_type: str | None = None


class MessageIn(BaseModel):
    """One message of ``POST /commands/add-messages`` (SPEC §2)."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True)

    id: str = Field(min_length=1, description="the client's unique key")
    account_id: str | None = None
    from_: str = Field(alias="from", min_length=1)
    to: AddressList
    cc: AddressList | None = None
    bcc: AddressList | None = None
    reply_to: str | None = None
    return_path: str | None = None
    subject: str = ""
    body: str = ""
    content_type: Literal["plain", "html"] | None = Field(
        None, description="the type of body (default plain)"
    )
    html: bool | str | None = Field(
        None,
        description="true: body is HTML (the original's clients send this); "
        "a string: the HTML alternative of a plain body",
    )
    from_name: str | None = Field(None, description="display name of from, unless it has one")
    headers: dict[str, str | int | float] | None = None
    message_id: str | None = None
    attachments: list[AttachmentIn] | None = None
    priority: int | str | None = Field(None, description="0-3 or immediate|high|medium|low")
    deferred_ts: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="unix seconds, not before"
    )


class AccountIn(BaseModel):
    """``POST /account`` (SPEC §2, account fields)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    id: str = Field(min_length=1, max_length=200)
    host: str | None = Field(
        None, max_length=255, description="required for SMTP; other transports may need none"
    )
    port: int = Field(587, ge=1, le=65535)
    user: str | None = None
    password: str | None = None
    tls: TlsMode | None = None
    use_tls: bool | None = Field(
        None, description="legacy: true -> ssl on 465, else starttls; false -> none"
    )
    limit_per_minute: int | None = Field(None, ge=0, le=MAX_INT)
    limit_per_hour: int | None = Field(None, ge=0, le=MAX_INT)
    limit_per_day: int | None = Field(None, ge=0, le=MAX_INT)
    limit_behavior: Literal["defer", "reject"] = "defer"
    batch_size: int | None = Field(None, ge=1, le=MAX_INT)
    max_connections: int = Field(4, ge=1, le=100)
    ttl: float = Field(300.0, ge=0, allow_inf_nan=False)
    transport: str = "smtp"


# ---------------------------------------------------------------- messages

# Headers the proxy writes itself: a client may not set or override them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "x-gmp-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "return-path",
        "sender",
    }
)
MAX_HEADER_NAME = 76  # RFC 5322 asks for lines of at most 78 characters
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'
_CONTROL = re.compile(r"[\r\n\x00]")
# What may not appear in header text (subject, header values, display names, filenames):
# CR, LF and NUL, which would end or cut the header, and every other control character, which
# Python's email package (like other readers) also treats as a line break (\x0b, \x0c,
# \x1c-\x1e, \x85, U+2028, U+2029) or drops. Tab is folding whitespace and stays allowed.
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_REASON = "contains CR, LF, NUL or another control character"


def parse_priority(value: object) -> int | None:
    """0-3, a label, or a numeric string; ``None`` stays ``None`` (use a default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):  # a list, an object...
        raise InvalidInput(
            f"invalid priority: {value!r:.40} (use 0-3 or immediate|high|medium|low)"
        )
    if isinstance(value, str):
        label = value.strip().lower()
        if label in PRIORITY_LABELS:
            return PRIORITY_LABELS[label]
        if not label.isdigit():
            raise InvalidInput(
                f"invalid priority: {value!r} (use 0-3 or immediate|high|medium|low)"
            )
        value = int(label)
    if not 0 <= value <= 3:
        raise InvalidInput(f"invalid priority: {value} (use 0-3)")
    return value


def parse_message(
    item: Any,
    *,
    default_priority: int,
    default_account: str | None,
    message_id_domain: str | None = None,
) -> Message:
    """Validate one add-messages item into a :class:`Message` or raise :class:`InvalidInput`.

    The account is not looked up here (that needs the store); the caller checks it exists.
    """
    data = _validated(MessageIn, item, "each message")
    if _HEADER_CONTROL.search(data.id):  # it goes out as the X-GMP-ID header
        raise InvalidInput(f"invalid id: {CONTROL_REASON}")
    account_id = data.account_id or default_account
    if not account_id:
        raise InvalidInput("missing account_id (and no default account is configured)")
    priority = parse_priority(data.priority)
    sender = _sender(data.from_, data.from_name)
    to = _addresses(data.to, "to")
    if not to:
        raise InvalidInput("missing to")
    _no_control(data.subject, "Subject")
    headers = _headers(data.headers)
    return Message(
        id=data.id,
        account_id=account_id,
        sender=sender,
        to=to,
        cc=_addresses(data.cc, "cc"),
        bcc=_addresses(data.bcc, "bcc"),
        reply_to=_one_address(data.reply_to, "reply_to") if data.reply_to else None,
        return_path=_one_address(data.return_path, "return_path")[1] if data.return_path else None,
        # A reader never shows spaces around a header's text: dropped here, so the subject
        # stored is the subject received (the same for header values and display names).
        subject=data.subject.strip(),
        body=data.body,
        content_type=_content_type(data.content_type, data.html),
        html=data.html if isinstance(data.html, str) else None,
        headers=headers,
        message_id=_message_id(data.message_id, sender, message_id_domain),
        attachments=[_attachment(a) for a in data.attachments or ()],
        priority=default_priority if priority is None else priority,
        deferred_ts=data.deferred_ts,
    )


def unknown_fields(item: Any) -> list[str]:
    """Keys of an add-messages item that the proxy does not know: ignored, as the original
    did, and named back to the client as warnings (``"to "`` or ``"subjet"`` are typos)."""
    if not isinstance(item, dict):
        return []
    unknown = [str(key) for key in item if key not in MESSAGE_FIELDS]
    attachments = item.get("attachments")
    for index, attachment in enumerate(attachments if isinstance(attachments, list) else ()):
        if isinstance(attachment, dict):
            unknown.extend(
                f"attachments[{index}].{key}" for key in attachment if key not in ATTACHMENT_FIELDS
            )
    return unknown


def _field_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(
        name for field, info in model.model_fields.items() for name in (field, info.alias) if name
    )


MESSAGE_FIELDS = _field_names(MessageIn)
ATTACHMENT_FIELDS = _field_names(AttachmentIn)


def _content_type(content_type: str | None, html: bool | str | None) -> str:
    """``html: true`` says the body is HTML (as ``content_type: "html"``), ``false`` that it
    is plain; a string ``html`` is an alternative part and leaves ``content_type`` alone."""
    if not isinstance(html, bool):
        return content_type or "plain"
    wanted = "html" if html else "plain"
    if content_type is not None and content_type != wanted:
        raise InvalidInput(f"invalid html: {str(html).lower()} contradicts content_type")
    return wanted


def _sender(value: str, from_name: str | None) -> Address:
    """The ``from`` address; ``from_name`` names it unless ``from`` has a display name."""
    name, addr = _one_address(value, "from")
    if from_name is None:
        return name, addr
    from_name = _display_name(from_name, "from_name")  # checked even where unused
    return (name or from_name), addr


def _validated(model: type[M], item: Any, what: str) -> M:
    if not isinstance(item, dict):
        raise InvalidInput(f"invalid payload: {what} must be a JSON object")
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """The first pydantic error as a reason naming the field: 'missing to', 'invalid ...'."""
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = error["loc"]
    field = str(loc[0]) if loc else "payload"
    if field == "attachments" and len(loc) >= 3:  # point at the attachment and its key
        field = f"attachments[{loc[1]}].{loc[2]}"
    if error["type"] == "missing":
        return f"missing {field}"
    return f"invalid {field}: {error['msg']}"


def _no_control(value: str, field: str) -> None:
    if _HEADER_CONTROL.search(value):
        raise InvalidInput(f"invalid header: {field} {CONTROL_REASON}")


def _addresses(value: str | list[str] | None, field: str) -> list[Address]:
    """A list, or a comma string: quoted display names with commas survive."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    result: list[Address] = []
    for item in items:
        if not item.strip():
            continue
        if _HEADER_CONTROL.search(item):
            raise InvalidInput(f"invalid address: {field} {CONTROL_REASON}")
        for name, addr in _split_addresses(item):
            if not addr or not _valid_addr_spec(addr):
                raise InvalidInput(f"invalid address: {item}")
            result.append((_display_name(name, field), addr))
    return result


def _display_name(name: str, field: str) -> str:
    """A display name as readers show it: runs of spaces collapsed, none at its ends."""
    if _HEADER_CONTROL.search(name):  # also =0D=0A inside an encoded word, once decoded
        raise InvalidInput(f"invalid address: {field} {CONTROL_REASON}")
    if "=?" in name:  # left after decoding: readers would each show it differently
        raise InvalidInput(
            f"invalid address: {field} display name contains '=?' outside an encoded word"
        )
    return " ".join(name.split())


# The common shapes, "a@b.c" and "Name <a@b.c>", without getaddresses' general parser
# (it cost more than everything else in intake together).
_BARE_ADDRESS = re.compile(r"\s*([^\s<>\"(),:;@]+@[^\s<>\"(),:;@]+)\s*")
_NAMED_ADDRESS = re.compile(r"\s*([^<>\"(),:;@]*?)\s*<([^\s<>\"(),:;@]+@[^\s<>\"(),:;@]+)>\s*")


def _split_addresses(item: str) -> list[Address]:
    simple = _BARE_ADDRESS.fullmatch(item)
    if simple:
        return [("", simple.group(1))]
    if "=?" in item:
        return _read_as_a_mail_reader(item)
    named = _NAMED_ADDRESS.fullmatch(item)
    if named:
        return [(named.group(1), named.group(2))]
    return email.utils.getaddresses([item])


def _read_as_a_mail_reader(item: str) -> list[Address]:
    """Addresses with RFC 2047 encoded words in their display names, decoded.

    Clients that build addresses with ``email.utils.formataddr`` send non-ASCII names encoded
    (``=?utf-8?b?...?=``). The stdlib's modern header parser decodes them exactly as a mail
    reader would (text that only looks like an encoded word stays as is), so the name stored
    is the name recipients see; the builder encodes it again."""
    try:
        header = email.policy.default.header_factory("To", item)
    except Exception:  # the parser has bugs of its own on broken input (a Group where an
        return [("", "")]  # address should be): that is not an address list either
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def _one_address(value: str, field: str) -> Address:
    addresses = _addresses(value, field)
    if len(addresses) != 1:
        raise InvalidInput(f"invalid address: {field} must be one address")
    return addresses[0]


# An addr-spec that is certainly valid: an ASCII dot-atom local part at a host name.
_PLAIN_ADDR_SPEC = re.compile(
    r"(?=.{3,254}$)(?=[^@]{1,64}@)"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*"
)


def _valid_addr_spec(addr: str) -> bool:
    return _PLAIN_ADDR_SPEC.fullmatch(addr) is not None or _valid_unusual_addr_spec(addr)


@lru_cache(maxsize=4096)
def _valid_unusual_addr_spec(addr: str) -> bool:
    """Quoted local parts, internationalised addresses, literals: email-validator decides
    (syntax only, no DNS; intranet domains without a dot are fine for a relay)."""
    try:
        validate_email(
            addr, check_deliverability=False, globally_deliverable=False, allow_domain_literal=True
        )
    except EmailNotValidError:
        return False
    return True


def _headers(raw: dict[str, str | int | float] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in (raw or {}).items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"invalid header: {name[:80]!r} is not a valid header name")
        if len(name) > MAX_HEADER_NAME:  # the name and its value must fit a 998-octet line
            raise InvalidInput(
                f"invalid header: {name[:20]}... is longer than {MAX_HEADER_NAME} characters"
            )
        if name.lower() in RESERVED_HEADERS:
            raise InvalidInput(f"invalid header: {name} may not be set through headers")
        text = str(value).strip()
        _no_control(text, name)
        headers[name] = text
    return headers


def _message_id(value: str | None, sender: Address, domain: str | None) -> str:
    if value is None:
        # Generated once here and stored, so every retry carries the same Message-ID.
        return email.utils.make_msgid(domain=domain or sender[1].rpartition("@")[2])
    value = value.strip()
    if _HEADER_CONTROL.search(value):
        raise InvalidInput(f"invalid message_id: {CONTROL_REASON}")
    if any(c.isspace() for c in value) or "@" not in value:
        raise InvalidInput("invalid message_id: expected <local@domain>")
    return value if value.startswith("<") else f"<{value}>"


def _attachment(item: AttachmentIn) -> Attachment:
    _no_control(item.filename, "attachment filename")
    # Mail readers drop spaces around a filename parameter: so does intake, so the name stored
    # is the name received.
    filename = item.filename.strip()
    if not filename:
        raise InvalidInput("invalid attachments: filename is empty")
    volume, sep, subpath = item.storage_path.partition(":")
    if not sep or not volume or not subpath:
        raise InvalidInput(
            f"invalid storage_path: {item.storage_path[:80]!r} (expected volume:subpath)"
        )
    if item.mime_type is not None and not re.fullmatch(r"[\w.+-]+/[\w.+-]+", item.mime_type):
        raise InvalidInput(f"invalid mime_type: {item.mime_type!r}")
    return Attachment(filename, item.storage_path, item.mime_type)


# ---------------------------------------------------------------- accounts


def parse_account(item: Any) -> Account:
    """Validate a ``POST /account`` payload into an :class:`Account`."""
    data = _validated(AccountIn, item, "the account")
    if not data.host and data.transport == "smtp":
        raise InvalidInput("missing host")
    for field in ("id", "host", "user"):
        value = getattr(data, field)
        if value and (_CONTROL.search(value) or (field == "host" and " " in value)):
            raise InvalidInput(f"invalid {field}: contains spaces or control characters")
    return Account(
        id=data.id,
        host=data.host or "",
        port=data.port,
        user=data.user or None,
        password=data.password or None,
        tls=_tls_mode(data.tls, data.use_tls, data.port),
        limit_per_minute=data.limit_per_minute or None,
        limit_per_hour=data.limit_per_hour or None,
        limit_per_day=data.limit_per_day or None,
        limit_behavior=data.limit_behavior,
        batch_size=data.batch_size,
        max_connections=data.max_connections,
        ttl=data.ttl,
        transport=data.transport,
    )


def _tls_mode(tls: TlsMode | None, use_tls: bool | None, port: int) -> TlsMode:
    """Explicit ``tls`` wins; the legacy ``use_tls`` maps (true: ssl on 465, else starttls;
    false: none); naming neither, ssl on 465 and opportunistic STARTTLS elsewhere.

    The original service sent plaintext to accounts that named no mode; its clients create
    accounts that way and must keep working with relays that offer no STARTTLS.
    """
    if tls is not None:
        return tls
    if use_tls is False:
        return TlsMode.NONE
    if port == 465:
        return TlsMode.SSL
    return TlsMode.STARTTLS if use_tls else TlsMode.OPPORTUNISTIC
