"""Checking what clients send: message and account payloads in, valid models out.

Every problem becomes an :class:`InvalidInput` whose text names the field, so one bad message
is rejected alone with a reason the client can act on ("missing to", "invalid address: to: x",
"invalid header: Subject contains CR or LF"). Whatever goes wrong while one field is checked,
even an error nobody foresaw, is that field's rejection (:func:`_checked`): nothing a message
contains can fail the batch it came in.

What intake accepts can always be stored, sent and read back: every string is Unicode text
(no lone surrogates), every field that ends up in a header line has a length limit, and the
structured headers (Message-ID, Content-Type) take ASCII only.
"""

from __future__ import annotations

import email.policy
import email.utils
import ipaddress
import logging
import re
import time
import traceback
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from gmp_core.models import PRIORITY_LABELS, Account, Address, Attachment, Message, TlsMode

log = logging.getLogger("gmp.intake")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# The largest integer a database column holds (SQLite INTEGER, PostgreSQL BIGINT): a bigger
# one must be a validation error naming the field, not an overflow in the store.
MAX_INT = 2**63 - 1
# Lengths, in characters, of what ends up in a header line. An id or a Message-ID cannot be
# folded: 250 leaves room for the header's name within the 998 octets of RFC 5322. Longer
# text (a subject, a header value, a display name, a file name) is folded by the builder;
# the limit keeps a mail's header block within what relays accept (Exchange refuses header
# blocks over 256 KiB).
MAX_ID = 250
MAX_ACCOUNT_ID = 200
MAX_HEADER_TEXT = 4096
MAX_CUSTOM_HEADERS = 100
MAX_MIME_TYPE = 255  # RFC 6838: at most 127 characters on each side of the "/"
DEFAULT_MAX_DEFER_SECONDS = 365 * 86400


class InvalidInput(ValueError):
    """A payload cannot be accepted; ``str(exc)`` is the reason given to the client."""


# ---------------------------------------------------------------- text

# JSON can carry lone surrogates ("\ud800"): Python decodes them into strings that no UTF-8
# encoder (the store's, a mail's, an answer's) accepts.
_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_REASON = "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"


def _unicode_text(value: str) -> str:
    if not value.isascii() and _SURROGATE.search(value):  # isascii() costs nothing
        raise ValueError(SURROGATE_REASON)
    return value


def shown(value: str, limit: int = 80) -> str:
    """Client text for a reason: cut to ``limit`` characters, lone surrogates replaced."""
    cut = value if len(value) <= limit else value[:limit] + "…"
    return _SURROGATE.sub("\ufffd", cut)


# Constraints go before the validator: pydantic then checks them in its core, with its own
# clear messages ("String should have at most 250 characters").
Text = Annotated[str, AfterValidator(_unicode_text)]
IdText = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_unicode_text)]
HeaderText = Annotated[str, Field(max_length=MAX_HEADER_TEXT), AfterValidator(_unicode_text)]


# ---------------------------------------------------------------- wire schemas (OpenAPI too)

AddressList = list[Text] | Text


class AttachmentIn(BaseModel):
    filename: HeaderText
    storage_path: Text = Field(description="volume:subpath, e.g. base64:SGVsbG8=")
    mime_type: (
        Annotated[str, Field(max_length=MAX_MIME_TYPE), AfterValidator(_unicode_text)] | None
    ) = None


class MessageIn(BaseModel):
    """One message of ``POST /commands/add-messages`` (SPEC §2)."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True)

    id: IdText = Field(description="the client's unique key")
    account_id: (
        Annotated[str, Field(max_length=MAX_ACCOUNT_ID), AfterValidator(_unicode_text)] | None
    ) = None
    from_: Text = Field(alias="from", min_length=1)
    to: AddressList
    cc: AddressList | None = None
    bcc: AddressList | None = None
    reply_to: Text | None = None
    return_path: Text | None = None
    subject: HeaderText = ""
    body: Text = ""
    content_type: Literal["plain", "html"] | None = Field(
        None, description="the type of body (default plain)"
    )
    html: bool | Text | None = Field(
        None,
        description="true: body is HTML (the original's clients send this); "
        "a string: the HTML alternative of a plain body",
    )
    from_name: HeaderText | None = Field(
        None, description="display name of from, unless it has one"
    )
    headers: dict[str, HeaderText | int | float] | None = Field(None, max_length=MAX_CUSTOM_HEADERS)
    message_id: Annotated[str, Field(max_length=MAX_ID), AfterValidator(_unicode_text)] | None = (
        None
    )
    attachments: list[AttachmentIn] | None = None
    priority: int | str | None = Field(None, description="0-3 or immediate|high|medium|low")
    deferred_ts: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="unix seconds, not before; at most [service] max_defer_seconds ahead",
    )


class AccountIn(BaseModel):
    """``POST /account`` (SPEC §2, account fields)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    id: Annotated[
        str, Field(min_length=1, max_length=MAX_ACCOUNT_ID), AfterValidator(_unicode_text)
    ]
    host: Annotated[str, Field(max_length=255), AfterValidator(_unicode_text)] | None = Field(
        None, description="required for SMTP; other transports may need none"
    )
    port: int = Field(587, ge=1, le=65535)
    user: Annotated[str, Field(max_length=1024), AfterValidator(_unicode_text)] | None = None
    password: Annotated[str, Field(max_length=1024), AfterValidator(_unicode_text)] | None = None
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
    transport: Annotated[str, Field(max_length=100), AfterValidator(_unicode_text)] = "smtp"


# ---------------------------------------------------------------- messages

# Headers the proxy writes itself: a client may not set or override them. Besides these,
# every header whose name starts with "Content-" (MIME's: Content-Type, -Disposition, ...).
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
        "return-path",
        "sender",
    }
)
RESERVED_PREFIX = "content-"
MAX_HEADER_NAME = 76  # RFC 5322 asks for lines of at most 78 characters
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'
# What may not appear in header text (subject, header values, display names, filenames):
# CR, LF and NUL, which would end or cut the header, and every other control character, which
# Python's email package (like other readers) also treats as a line break (\x0b, \x0c,
# \x1c-\x1e, \x85, U+2028, U+2029) or drops. Tab is folding whitespace and stays allowed.
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Names (an id, an account, a host, a user) take no control character at all, tab included.
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_REASON = "contains CR, LF, NUL or another control character"
# Bidirectional embeddings, overrides and isolates: a mail reader shows "\u202egnp.exe" as
# "exe.png". In a display name (or a file name) they only serve to disguise it.
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
BIDI_REASON = "contains a bidirectional control character (U+202A-U+202E, U+2066-U+2069)"
# ASCII digits only: str.isdigit() and int() also take '²' or '٣', which are not priorities.
_DIGITS = re.compile(r"[0-9]+")


def parse_priority(value: object) -> int | None:
    """0-3, a label, or a numeric string; ``None`` stays ``None`` (use a default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):  # a list, an object...
        raise InvalidInput(
            f"invalid priority: a {type(value).__name__} (use 0-3 or immediate|high|medium|low)"
        )
    if isinstance(value, str):
        label = value.strip().lower()
        if label in PRIORITY_LABELS:
            return PRIORITY_LABELS[label]
        if not _DIGITS.fullmatch(label):
            raise InvalidInput(
                f"invalid priority: {shown(value, 40)!r} (use 0-3 or immediate|high|medium|low)"
            )
        value = int(label)
    if not 0 <= value <= 3:
        number = str(value) if abs(value) < 10**12 else "out of range"
        raise InvalidInput(f"invalid priority: {number} (use 0-3)")
    return value


def parse_message(
    item: Any,
    *,
    default_priority: int,
    default_account: str | None,
    message_id_domain: str | None = None,
    max_defer_seconds: float | None = DEFAULT_MAX_DEFER_SECONDS,
    now: float | None = None,
) -> Message:
    """Validate one add-messages item into a :class:`Message` or raise :class:`InvalidInput`.

    The account is not looked up here (that needs the store); the caller checks it exists.
    Fields are checked in the order of the keywords below; the first bad one is the reason.
    """
    data = _validated(MessageIn, item, "each message")
    from_name = _checked("from_name", _optional_display_name, data.from_name)
    sender = _checked("from", _sender, data.from_, from_name)
    to = _checked("to", _addresses, data.to, "to")
    if not to:
        raise InvalidInput("missing to")
    return Message(
        id=_checked("id", _message_key, data.id),
        account_id=_checked("account_id", _account_of, data.account_id, default_account),
        sender=sender,
        to=to,
        cc=_checked("cc", _addresses, data.cc, "cc"),
        bcc=_checked("bcc", _addresses, data.bcc, "bcc"),
        reply_to=_checked("reply_to", _optional_address, data.reply_to, "reply_to"),
        return_path=_checked("return_path", _envelope_sender, data.return_path),
        subject=_checked("subject", _subject, data.subject),
        body=data.body,
        content_type=_checked("content_type", _content_type, data.content_type, data.html),
        html=data.html if isinstance(data.html, str) else None,
        headers=_checked("headers", _headers, data.headers),
        message_id=_checked("message_id", _message_id, data.message_id, sender, message_id_domain),
        attachments=[
            _checked(f"attachments[{index}]", _attachment, attachment, index)
            for index, attachment in enumerate(data.attachments or ())
        ],
        priority=_checked("priority", _priority_or, data.priority, default_priority),
        deferred_ts=_checked("deferred_ts", _deferral, data.deferred_ts, now, max_defer_seconds),
    )


def _checked(field: str, check: Callable[..., T], *args: Any) -> T:
    """``check(*args)``: the check of one field. Whatever it raises rejects the message naming
    that field: an :class:`InvalidInput` with its own reason, anything else (a case nobody
    foresaw, in our code or a library's: int('²') once failed a whole batch with 500) as
    "cannot be checked", logged with where it was raised but not with the client's text."""
    try:
        return check(*args)
    except InvalidInput:
        raise
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "checking %s of a message raised %s (%s:%s): the message was rejected",
            field,
            type(exc).__name__,
            where.filename,
            where.lineno,
        )
        raise InvalidInput(f"invalid {field}: cannot be checked") from None


def storable_id(value: Any) -> str | None:
    """``value`` if it can be a message's id (the key of a stored history), else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or _SURROGATE.search(value):
        return None
    try:
        return _message_key(value)
    except InvalidInput:
        return None


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


def _message_key(value: str) -> str:
    """The client's id: it goes out as the X-GMP-ID header and back in every report, so a
    reader must show it as it is: no control character, no space at either end."""
    if _NAME_CONTROL.search(value):
        raise InvalidInput(f"invalid id: {CONTROL_REASON}")
    if value != value.strip():
        raise InvalidInput("invalid id: starts or ends with a space")
    if value in DOT_SEGMENTS:
        raise InvalidInput(f"invalid id: {DOT_SEGMENTS_REASON}")
    return value


# RFC 3986 makes every client drop "." and ".." from a URL's path: GET /messages/.. can
# never reach a message of that id, nor DELETE /account/.. an account.
DOT_SEGMENTS = frozenset({".", ".."})
DOT_SEGMENTS_REASON = "'.' and '..' cannot be named in a URL"


def _account_of(account_id: str | None, default_account: str | None) -> str:
    account_id = account_id or default_account
    if not account_id:
        raise InvalidInput("missing account_id (and no default account is configured)")
    return account_id


def _priority_or(value: int | str | None, default: int) -> int:
    priority = parse_priority(value)
    return default if priority is None else priority


def _deferral(ts: float | None, now: float | None, max_ahead: float | None) -> float | None:
    """Not before ``ts``; refused when further ahead than ``[service] max_defer_seconds``
    (``1e300`` would wait forever, and no client means that)."""
    if ts is None or max_ahead is None:
        return ts
    if ts > (time.time() if now is None else now) + max_ahead:
        raise InvalidInput(
            f"invalid deferred_ts: more than {max_ahead:.0f} seconds ahead "
            "([service] max_defer_seconds)"
        )
    return ts


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
    return (name or from_name or ""), addr


def _optional_display_name(name: str | None) -> str | None:
    """``from_name``, checked even where ``from`` has a name of its own."""
    return None if name is None else _display_name(name, "from_name")


def _subject(subject: str) -> str:
    _no_control(subject, "Subject")
    # A reader never shows spaces around a header's text: dropped here, so the subject
    # stored is the subject received (the same for header values and display names).
    return subject.strip()


def _validated(model: type[M], item: Any, what: str) -> M:
    if not isinstance(item, dict):
        raise InvalidInput(f"invalid payload: {what} must be a JSON object")
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc)) from None


# pydantic's errors that only say "not this type": where a field takes several types (a list
# or a string), the error of the type that was sent says more.
_TYPE_MISMATCH = re.compile(r".*_(type|parsing)")


def _describe(exc: ValidationError) -> str:
    """The first pydantic error as a reason naming the field: 'missing to', 'invalid ...'."""
    errors = exc.errors(include_url=False, include_input=False)
    error = _most_telling(errors)
    loc = error["loc"]
    field = str(loc[0]) if loc else "payload"
    if field == "attachments" and len(loc) >= 3:  # point at the attachment and its key
        field = f"attachments[{loc[1]}].{loc[2]}"
    elif field == "headers" and len(loc) >= 2 and isinstance(loc[1], str):  # and the header
        field = f"headers.{shown(loc[1], 40)}"
    if error["type"] == "missing":
        return f"missing {field}"
    if error["type"] == "string_unicode":  # pydantic's own words for a lone surrogate
        return f"invalid {field}: {SURROGATE_REASON}"
    if error["type"] == "value_error":  # raised by our validators: their text as it is
        return f"invalid {field}: {error.get('ctx', {}).get('error', error['msg'])}"
    return f"invalid {field}: {error['msg']}"


def _most_telling(errors: list[ErrorDetails]) -> ErrorDetails:
    first = errors[0]
    same_field = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    telling = [e for e in same_field if not _TYPE_MISMATCH.fullmatch(e["type"])]
    return (telling or same_field)[0]


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
                raise InvalidInput(f"invalid address: {field}: {shown(item)}")
            result.append((_display_name(name, field), addr))
    return result


def _display_name(name: str, field: str) -> str:
    """A display name as readers show it: runs of spaces collapsed, none at its ends."""
    if _HEADER_CONTROL.search(name):  # also =0D=0A inside an encoded word, once decoded
        raise InvalidInput(f"invalid address: {field} {CONTROL_REASON}")
    if _BIDI_CONTROL.search(name):
        raise InvalidInput(f"invalid address: {field} display name {BIDI_REASON}")
    if "=?" in name:  # left after decoding: readers would each show it differently
        raise InvalidInput(
            f"invalid address: {field} display name contains '=?' outside an encoded word"
        )
    name = " ".join(name.split())
    if len(name) > MAX_HEADER_TEXT:
        raise InvalidInput(
            f"invalid address: {field} display name is longer than {MAX_HEADER_TEXT} characters"
        )
    return name


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


def _optional_address(value: str | None, field: str) -> Address | None:
    return _one_address(value, field) if value else None


def _envelope_sender(value: str | None) -> str | None:
    return _one_address(value, "return_path")[1] if value else None


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


@lru_cache(maxsize=1024)
def ascii_domain(domain: str) -> str | None:
    """``domain`` as it goes in ASCII-only places (a Message-ID): an internationalised name
    as its A-label (IDNA, ``bücher.de`` -> ``xn--bcher-kva.de``); None if it is no domain."""
    try:
        checked = validate_email(
            f"postmaster@{domain}",
            check_deliverability=False,
            globally_deliverable=False,
            allow_domain_literal=True,
        )
    except EmailNotValidError:
        return None
    return checked.ascii_domain


def _headers(raw: dict[str, str | int | float] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in (raw or {}).items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"invalid header: {name[:80]!r} is not a valid header name")
        if len(name) > MAX_HEADER_NAME:  # the name and its value must fit a 998-octet line
            raise InvalidInput(
                f"invalid header: {name[:20]}... is longer than {MAX_HEADER_NAME} characters"
            )
        lowered = name.lower()
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX):
            raise InvalidInput(f"invalid header: {name} may not be set through headers")
        text = str(value).strip()
        _no_control(text, name)
        headers[name] = text
    return headers


# RFC 5322 §3.6.4: msg-id = "<" dot-atom-text "@" (dot-atom-text / "[" *dtext "]") ">"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_MSG_ID = re.compile(rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])")


def _message_id(value: str | None, sender: Address, domain: str | None) -> str:
    if value is None:
        # Generated once here and stored, so every retry carries the same Message-ID. Its
        # domain goes as ASCII: Message-ID is structured and takes no encoded words.
        return email.utils.make_msgid(domain=domain or _sender_domain(sender[1]))
    value = value.strip()
    if _HEADER_CONTROL.search(value):
        raise InvalidInput(f"invalid message_id: {CONTROL_REASON}")
    if not value.isascii():
        raise InvalidInput(
            "invalid message_id: must be ASCII (an internationalised domain as its A-label)"
        )
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not _MSG_ID.fullmatch(inner):
        raise InvalidInput("invalid message_id: expected <local@domain> (RFC 5322)")
    return f"<{inner}>"


def _sender_domain(addr: str) -> str:
    domain = addr.rpartition("@")[2]
    if domain.isascii():
        return domain
    converted = ascii_domain(domain)
    if converted is None:  # email-validator accepted the address: it has an A-label
        raise InvalidInput("invalid from: its domain has no ASCII form for the Message-ID")
    return converted


# RFC 6838 restricted-name, on either side of the "/"
_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


def _attachment(item: AttachmentIn, index: int) -> Attachment:
    field = f"attachments[{index}]"
    _no_control(item.filename, f"{field}.filename")
    if _BIDI_CONTROL.search(item.filename):
        raise InvalidInput(f"invalid {field}.filename: {BIDI_REASON}")
    # Mail readers drop spaces around a filename parameter: so does intake, so the name stored
    # is the name received.
    filename = item.filename.strip()
    if not filename:
        raise InvalidInput(f"invalid {field}.filename: empty")
    volume, sep, subpath = item.storage_path.partition(":")
    if not sep or not volume or not subpath:
        raise InvalidInput(
            f"invalid {field}.storage_path: {shown(item.storage_path)!r} (expected volume:subpath)"
        )
    if item.mime_type is not None and not _MIME_TYPE.fullmatch(item.mime_type):
        raise InvalidInput(
            f"invalid {field}.mime_type: {shown(item.mime_type)!r} "
            "(expected type/subtype in ASCII, such as application/pdf)"
        )
    return Attachment(filename, item.storage_path, item.mime_type)


# ---------------------------------------------------------------- accounts

# A host name (labels of letters, digits, '-' and '_', which intranets use) or an IP address.
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def parse_account(item: Any) -> Account:
    """Validate a ``POST /account`` payload into an :class:`Account`."""
    data = _validated(AccountIn, item, "the account")
    if not data.host and data.transport == "smtp":
        raise InvalidInput("missing host")
    for field in ("id", "user"):
        value = getattr(data, field)
        if value and _NAME_CONTROL.search(value):
            raise InvalidInput(f"invalid {field}: contains control characters")
    if data.id in DOT_SEGMENTS:
        raise InvalidInput(f"invalid id: {DOT_SEGMENTS_REASON}")
    return Account(
        id=data.id,
        host=_host(data.host) if data.host else "",
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


def _host(host: str) -> str:
    """A host name (internationalised ones too) or an IP address; nothing else can be
    connected to, and a tab or a line break would end up in logs and errors as they are."""
    if _HOST_NAME.fullmatch(host):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if not host.isascii() and not _NAME_CONTROL.search(host) and ascii_domain(host):
        return host
    raise InvalidInput(f"invalid host: {shown(host)!r} is not a host name or an IP address")


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
