"""Property tests of the whole path, over HTTP, against a real service (issue #15).

Hypothesis generates every field of every endpoint from the whole of Unicode: every general
category (lone surrogates too, which JSON carries as ``\\ud800`` escapes), digits of other
scripts (``'²'`` once failed a whole batch with 500), controls, bidirectional overrides,
encoded-word look-alikes, lengths up to tens of thousands of characters, and values of the
wrong JSON type. The promises checked on every example:

* no answer is a 5xx, and every 4xx is ``{"ok": false, "error": "<reason>"}``;
* a bad message is rejected alone, with a reason naming the field it got wrong, while the
  valid messages of the same call are queued; within a call the last copy of an id decides;
* everything accepted is delivered to a real SMTP server (the ``SmtpSink``), as a mail whose
  lines fit 998 octets and whose headers a strict parser (``email.policy.strict``) reads
  without a defect, all ASCII except raw UTF-8 addresses sent with SMTPUTF8 (RFC 6532); the
  structured headers (Message-ID, MIME-Version, Content-*, Date) always ASCII;
* everything accepted renders: in ``GET /messages``, ``GET /messages/{id}`` (which reads back
  what the mail carries), the delivery report posted to a real HTTP endpoint, ``/metrics``
  (parsed by the Prometheus client's own parser) and ``GET /accounts``.

The service runs on an event loop of its own on a background thread (hypothesis' tests are
synchronous); the test talks to it over its socket like any client, and waits on its events.

Bounded for CI (``EXAMPLES``, about 15 s for the whole file); ``GMP_PROPERTY_PROFILE=deep``
runs 20 times as many, ``GMP_API_PROPERTY_EXAMPLES=N`` exactly N. On CI (``CI=true``) the
examples are derandomised, so a red build is reproducible.
"""

from __future__ import annotations

import asyncio
import email
import email.errors
import email.message
import email.policy
import itertools
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gmp_core import Config, Event, Service, hookimpl
from gmp_core.testing import ReportReceiver, SmtpSink, fast_tables, merge
from tests.rest.rest_support import TOKEN, MemoryVolumes

DEEP = os.environ.get("GMP_PROPERTY_PROFILE") == "deep"
EXAMPLES = int(os.environ.get("GMP_API_PROPERTY_EXAMPLES", "800" if DEEP else "40"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=bool(os.environ.get("CI")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    # GMP_PROPERTY_NO_SHRINK=1 reports the first failing example as drawn: over HTTP,
    # shrinking one can take minutes
    phases=[Phase.explicit, Phase.generate]
    if os.environ.get("GMP_PROPERTY_NO_SHRINK")
    else list(Phase),
)
SCOPED_TOKEN = "property-scoped-token-0123"

# ---------------------------------------------------------------- the proxy under test


class LiveProxy:
    """A started service with its SMTP sink and report endpoint, on a loop of their own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gmp-properties")
        self.finals = Finals()
        self._mails_seen: list[Any] = []
        self._mails_by_id: dict[str, Any] = {}
        self._requests_seen = 0
        self._reports: dict[str, dict[str, Any]] = {}
        self.sink = SmtpSink()
        self.receiver = ReportReceiver()
        self.service: Service | None = None

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def __enter__(self) -> LiveProxy:
        self.thread.start()
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # the loop's thread too: never a test run that hangs
            raise

    def _start(self) -> LiveProxy:
        self.run(self.sink.start())
        self.run(self.receiver.start())
        tables = merge(
            fast_tables(self.tmp_path),
            {
                "plugins": {"disable": []},
                "rest": {"port": 0},
                "token_auth": {
                    "api_token": TOKEN,
                    "account_tokens": [{"token": SCOPED_TOKEN, "accounts": ["scoped"]}],
                },
                "proxy_sync": {"url": self.receiver.url},
            },
        )
        service = Service(Config(tables, environ={}), plugins=[MemoryVolumes(), self.finals])
        self.run(service.start())
        self.service = service
        return self

    def __exit__(self, *exc: object) -> None:
        if self.service is not None:
            self.run(self.service.stop())
        self.run(self.sink.stop())  # each stops only what it started
        self.run(self.receiver.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    @property
    def url(self) -> str:
        assert self.service is not None
        return str(self.service.state["rest"].url)

    def sent_or_failed(self, message_id: str) -> str:
        """Wait for the message's final event: ``sent``, or ``error <detail>``."""

        async def final() -> str:
            async with asyncio.timeout(15), self.finals.changed:
                await self.finals.changed.wait_for(lambda: message_id in self.finals.kinds)
            return self.finals.kinds[message_id]

        return str(self.run(final()))

    def mails(self, ids: set[str]) -> dict[str, Any]:
        """The mails the sink received for ``ids``, by their X-GMP-ID (each mail parsed once:
        examples add up, and the deep profile runs thousands)."""
        for mail in self.sink.mails[len(self._mails_seen) :]:
            parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
            self._mails_seen.append(mail)
            self._mails_by_id[str(parsed["X-GMP-ID"])] = mail
        return {i: self._mails_by_id[i] for i in ids if i in self._mails_by_id}

    def reported(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """Wait until every id in ``ids`` was reported; their report items."""

        def index() -> bool:
            for request in self.receiver.requests[self._requests_seen :]:
                self._requests_seen += 1
                for item in json.loads(request.body)["delivery_report"]:
                    self._reports[item["id"]] = item
            return ids <= set(self._reports)

        self.run(self.receiver.wait(lambda _: index()))
        return {i: self._reports[i] for i in ids}


class Finals:
    """A plugin keeping each message's final event (``sent`` or ``error``), by id."""

    __name__ = "property-finals"

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.changed = asyncio.Condition()

    @hookimpl
    async def gmp_event(self, event: Event) -> None:
        if event.kind in ("sent", "error"):
            async with self.changed:
                self.kinds[event.message_id] = event.kind + (
                    f" {event.detail}" if event.kind == "error" else ""
                )
                self.changed.notify_all()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path_factory.mktemp("properties")) as live:
        yield live


@pytest.fixture(scope="module")
def http(proxy: LiveProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, headers={"X-API-Token": TOKEN}, timeout=30) as client:
        yield client


def send(http: httpx.Client, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    """One request; the answer must be no 5xx, and a 4xx must be our JSON failure. The body
    is written by the stdlib's json (ASCII, so lone surrogates travel as escapes)."""
    content = None if body is None else as_json(body)
    response = http.request(method, path, content=content, **kw)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        failure = response.json()
        assert failure["ok"] is False and failure["error"].strip(), failure
    return response


def as_json(body: Any) -> str:
    deep: dict[str, Deep] = {}

    def placeholder(value: Any) -> str:
        assert isinstance(value, Deep)
        marker = f"@@deep-{len(deep)}@@"
        deep[marker] = value
        return marker

    text = json.dumps(body, default=placeholder)
    for marker, value in deep.items():
        text = text.replace(f'"{marker}"', value.text)
    return text


def quoted(value: str) -> str:
    """A path parameter, every reserved character percent-encoded ('/' too)."""
    return urllib.parse.quote(value, safe="")


# ---------------------------------------------------------------- text from all of Unicode

# hypothesis leaves lone surrogates out of its default characters; JSON can carry them
any_char = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]),  # controls and spaces
    st.characters(categories=["Nd", "Nl", "No"]),  # digits of every script: '²', '٣', 'Ⅻ'
    st.sampled_from("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\t\r\n\x00\x85"),
)
TRICKY = [
    "²",
    "٣",
    "\uff11",
    "=?utf-8?q?x?=",
    "=?",
    '"',
    "\\",
    ",",
    "<",
    ">",
    "@",
    ":",
    ";",
    " ",
    "  ",
    ".",
    "..",
    "/",
    "%2F",
    "?",
    "#",
    "é",
    "東",
    "😀",
    "\u200b",
    "\ufeff",
]
short_text = st.text(any_char, max_size=12)
tricky_text = st.lists(st.one_of(st.sampled_from(TRICKY), short_text), max_size=6).map("".join)
# Up to tens of thousands of characters, cheaply: a short piece repeated.
long_text = st.builds(
    lambda piece, length: (piece * (length // len(piece) + 1))[:length],
    st.text(any_char, min_size=1, max_size=4),
    st.integers(200, 30_000),
)
hostile_text = st.one_of(short_text, tricky_text, long_text)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
any_json = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(short_text, inner, max_size=3)
    ),
    max_leaves=6,
)


class Deep:
    """JSON nested ``depth`` levels deep: written as text when the body is (the stdlib's
    encoder, like hypothesis' printer, would recurse as deep), as ``[{"k": [{"k": ...``."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"

    @property
    def text(self) -> str:
        return '[{"k":' * (self.depth // 2) + '"x"' + "}]" * (self.depth // 2)


# Within what the JSON parser can read (deeper: the whole body is a 400, see below)
wrong_or_deep = st.one_of(any_json, st.integers(30, 800).map(Deep))

# ---------------------------------------------------------------- message fields

label = st.from_regex(r"[a-z0-9]{1,8}(-[a-z0-9]{1,5})?", fullmatch=True)
domain = st.one_of(
    st.builds(lambda labels: ".".join([*labels, "com"]), st.lists(label, min_size=1, max_size=2)),
    st.sampled_from(["bücher.de", "例え.テスト", "xn--bcher-kva.de", "[127.0.0.1]", "ex.it"]),
)
local_part = st.one_of(
    st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}", fullmatch=True),
    st.sampled_from(["josé", "用户", '"quoted local"', "a.b", "x" * 64]),
    short_text,
)
addr_spec = st.builds(lambda local, host: f"{local}@{host}", local_part, domain)
display_name = st.one_of(st.just(""), tricky_text, long_text)


@st.composite
def address(draw: st.DrawFn) -> str:
    name, addr = draw(display_name), draw(addr_spec)
    quoted_name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return draw(st.sampled_from([addr, f"{name} <{addr}>", f"{quoted_name} <{addr}>", f"<{addr}>"]))


address_field = st.one_of(
    st.lists(address(), min_size=1, max_size=3),
    st.lists(address(), min_size=1, max_size=3).map(", ".join),
    hostile_text,
)
header_name = st.one_of(
    st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
    st.sampled_from(["Content-Disposition", "content-language", "MIME-Version", "Bcc", "X"]),
    hostile_text,
)
storage_path = st.one_of(
    st.builds(lambda sub: f"mem:{sub}", st.text(min_size=1, max_size=20)),
    st.sampled_from(["base64:SGVsbG8=", "base64:!!", "nocolon", "unknown:x", "mem:"]),
    hostile_text,
)
attachment = st.fixed_dictionaries(
    {"filename": st.one_of(st.just("report.pdf"), hostile_text), "storage_path": storage_path},
    optional={
        "mime_type": st.one_of(
            st.sampled_from(["application/pdf", "text/plain", "téxt/plain", "a/b/c"]),
            hostile_text,
        )
    },
)
message_id = st.one_of(
    st.builds(lambda local, host: f"<{local}@{host}>", local_part, domain),
    st.builds(lambda n: f"<{'x' * n}@example.com>", st.integers(230, 3000)),
    hostile_text,
)
priority = st.one_of(
    st.integers(-2, 5),
    st.sampled_from(["0", "3", "high", " LOW ", "²", "٣", "\uff11", "03", "+1", "urgent"]),
    hostile_text,
)
deferred_ts = st.one_of(
    st.floats(0, 1e300, allow_nan=False),
    st.integers(-5, 2**70),
    st.sampled_from(["1e300", "0", "soon"]),
)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": hostile_text,
    "account_id": hostile_text,
    "from": st.one_of(address(), hostile_text),
    "to": address_field,
    "cc": address_field,
    "bcc": address_field,
    "reply_to": st.one_of(address(), hostile_text),
    "return_path": st.one_of(addr_spec, hostile_text),
    "subject": hostile_text,
    "body": hostile_text,
    "content_type": st.sampled_from(["plain", "html", "markdown", ""]),
    "html": st.one_of(st.booleans(), hostile_text),
    "from_name": st.one_of(tricky_text, long_text),
    "headers": st.dictionaries(header_name, st.one_of(hostile_text, st.integers()), max_size=4),
    "message_id": message_id,
    "attachments": st.lists(attachment, max_size=3),
    "priority": priority,
    "deferred_ts": deferred_ts,
}
# What a rejection of each field says: its name (case aside), or the word it uses for it.
NAMED_AS: dict[str, tuple[str, ...]] = {
    "any": ("",),  # test_what_intake_accepts...: nothing made bad, any honest reason will do
    "account_id": ("account",),
    "headers": ("header",),
    "attachments": ("attachments", "storage_path", "volume"),
    "html": ("html", "content_type"),
}

counter = itertools.count()


def base(account_id: str) -> dict[str, Any]:
    n = next(counter)
    return {
        "id": f"p{n}",
        "account_id": account_id,
        "from": "Sender <sender@example.com>",
        "to": ["rcpt@example.com"],
        "subject": f"subject {n}",
        "body": f"body {n}",
    }


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, Any]:
    """One field and the value it gets: a hostile value of its kind, or any JSON at all."""
    field = draw(st.sampled_from(sorted(FIELDS)))
    return field, draw(st.one_of(FIELDS[field], wrong_or_deep))


# ---------------------------------------------------------------- reading a mail


def strict_mail(data: bytes, smtputf8: bool) -> email.message.EmailMessage:
    """The mail as a strict reader sees it: lines within 998 octets and CRLF-ended; headers
    ASCII but for raw UTF-8 addresses sent with SMTPUTF8; no defect anywhere."""
    assert data.count(b"\n") == data.count(b"\r\n"), "a bare LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998, "a line over 998 octets"
    text = data.decode("utf-8")  # strict: valid UTF-8, or an error
    raw = email.message_from_string(text, policy=email.policy.compat32)  # headers as written
    for part in raw.walk():
        for name, value in part.items():
            if not value.isascii():
                assert smtputf8, f"non-ASCII {name} in a mail sent without SMTPUTF8"
                assert name.lower() in ("from", "to", "cc", "reply-to"), f"non-ASCII {name}"
    mail = email.message_from_string(text.replace("\r\n", "\n"), policy=email.policy.strict)
    assert isinstance(mail, email.message.EmailMessage)
    for part in mail.walk():
        assert not part.defects, part.defects
        for name, header in part.items():
            defects = [d for d in header.defects if not (smtputf8 and _rfc6532(d))]
            assert not defects, (name, defects)
    return mail


def _rfc6532(defect: Exception) -> bool:
    """Python's parser knows RFC 5322 only: it counts a UTF-8 local part (RFC 6532, sent
    with SMTPUTF8) as a defect."""
    return isinstance(defect, email.errors.NonASCIILocalPartDefect)


def read_addresses(mail: email.message.EmailMessage, name: str) -> list[tuple[str, str]]:
    header = mail[name]
    return [] if header is None else [(a.display_name, a.addr_spec) for a in header.addresses]


def as_written(rendered: list[str]) -> list[tuple[str, str]]:
    """Addresses as GET /messages/{id} renders them, read back the way a mail reader reads."""
    found = []
    for text in rendered:
        [one] = email.policy.strict.header_factory("To", text).addresses
        found.append((one.display_name, one.addr_spec))
    return found


def same_names(one: list[tuple[str, str]], other: list[tuple[str, str]]) -> bool:
    """Equal addresses and display names, whitespace aside: a long name goes as several
    encoded words, and Python's parser shows a space between them (RFC 2047 says none)."""
    return [("".join(n.split()), a) for n, a in one] == [("".join(n.split()), a) for n, a in other]


# ---------------------------------------------------------------- the properties


def new_account(http: httpx.Client, proxy: LiveProxy, wanted: Any) -> str:
    """An account delivering to the sink under a generated id; a refused id is named."""
    n = next(counter)
    # Each example has an account of its own: GET /messages lists only its messages
    candidates = [f"a{n}-{wanted}"] if isinstance(wanted, str) else []
    if not isinstance(wanted, str):  # refused for its id, or (a number) for the bad host
        refused = send(http, "POST", "/account", {"id": wanted, "host": "no host"})
        assert refused.status_code in (400, 422)
        assert re.match(r"invalid (JSON body: )?(id|host)\b", refused.json()["error"])
    for account_id in [*candidates, f"acct-{n}"]:
        body = {"id": account_id, "host": proxy.sink.host, "port": proxy.sink.port, "tls": "none"}
        answer = send(http, "POST", "/account", body)
        if answer.status_code == 200:
            return account_id
        assert answer.status_code in (400, 422)
        assert "id" in answer.json()["error"]
    raise AssertionError("the fallback account id was refused")


Item = tuple[dict[str, Any], "str | None"]  # a message, and the one field made bad (if any)


def add_and_check(proxy: LiveProxy, http: httpx.Client, account: str, items: list[Item]) -> None:
    """Post ``items`` in one call and check every promise of the module docstring."""
    answer = send(http, "POST", "/commands/add-messages", {"messages": [i for i, _ in items]})
    body = answer.json()
    accepted = outcomes(items, body)
    assert answer.status_code == (200 if accepted or not items else 400), answer.text[:300]
    assert body["queued"] == len(accepted)
    event(f"accepted: {min(len(accepted), 3)}{'+' if len(accepted) > 3 else ''}")

    due = {i: m for i, m in accepted.items() if _due_now(m)}
    for item_id in due:
        assert proxy.sent_or_failed(item_id) == "sent", item_id
    mails = proxy.mails(set(due))
    assert set(mails) == set(due), "a mail's X-GMP-ID is not its id"
    for item_id, mail in mails.items():
        reads_back(http, item_id, strict_mail(mail.data, mail.smtputf8), accepted[item_id])
    for item_id in set(accepted) - set(due):  # scheduled: they render before they are due
        shown = send(http, "GET", f"/messages/{quoted(item_id)}")
        assert shown.json()["message"]["status"] == "scheduled"

    listed = send(http, "GET", "/messages", params={"account_id": account, "limit": 1000})
    assert {m["id"] for m in listed.json()["messages"]} == set(accepted)
    if due:
        reports = proxy.reported(set(due))
        assert {(i["account_id"], i["status"]) for i in reports.values()} == {(account, "sent")}
    metrics = send(http, "GET", "/metrics")
    sent = {
        sample.labels.get("account_id"): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
        if sample.name == "gmp_sent_total"
    }
    assert sent[account] == len(due)
    accounts = send(http, "GET", "/accounts").json()["accounts"]
    assert account in {a["id"] for a in accounts}


def outcomes(items: list[Item], body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The accepted messages by id, having checked every rejection: only messages made bad
    are rejected, each naming the field made bad; by id, the last copy decides."""
    reasons = {r["id"]: r["reason"] for r in body["rejected"] if r["id"] is not None}
    unnamed = [r["reason"] for r in body["rejected"] if r["id"] is None]
    decided: dict[str, Item] = {}
    for item, field in items:
        item_id = item.get("id")
        if isinstance(item_id, str):
            decided.pop(item_id, None)
            decided[item_id] = (item, field)
        else:  # no id to name it by: its rejection names the id
            assert field == "id" and any("id" in reason for reason in unnamed), body["rejected"]
    accepted = {}
    for item_id, (item, field) in decided.items():
        if item_id not in reasons:
            accepted[item_id] = item
            continue
        reason = reasons[item_id]
        assert field is not None, f"a valid message was rejected: {reason}"
        assert any(word in reason.lower() for word in NAMED_AS.get(field, (field,))), (
            field,
            reason,
        )
        event(f"rejected for {field}: {reason.split(':')[0]}")
    return accepted


def reads_back(
    http: httpx.Client, item_id: str, mail: email.message.EmailMessage, item: dict[str, Any]
) -> None:
    """GET /messages/{id} renders the message, and says what the mail carries."""
    shown = send(http, "GET", f"/messages/{quoted(item_id)}")
    assert shown.status_code == 200
    record = shown.json()["message"]
    assert record["id"] == item_id and record["status"] == "sent"
    assert str(mail["X-GMP-ID"]) == item_id
    assert str(mail["Message-ID"]) == record["message_id"]
    assert str(mail["Subject"]) == record["subject"]
    assert same_names(read_addresses(mail, "From"), as_written([record["from"]]))
    assert same_names(read_addresses(mail, "To"), as_written(record["to"]))
    assert same_names(read_addresses(mail, "Cc"), as_written(record["cc"]))
    reply_to = [record["reply_to"]] if record["reply_to"] else []
    assert same_names(read_addresses(mail, "Reply-To"), as_written(reply_to))
    assert mail["Bcc"] is None
    for name, value in record["headers"].items():
        assert str(mail[name]) == value, name
    filenames = [part.get_filename() for part in mail.iter_attachments()]
    assert filenames == [a["filename"] for a in record["attachments"]]
    if item.get("subject") == "the last copy":
        assert record["subject"] == "the last copy"


def _due_now(item: dict[str, Any]) -> bool:
    ts = item.get("deferred_ts")
    return float(ts or 0) <= time.time()


@SETTINGS
@given(
    account_id=st.one_of(hostile_text, st.just("plain-account"), any_json),
    mutations=st.lists(mutation(), min_size=1, max_size=4),
    repeat=st.sampled_from(["none", "valid-then-valid", "valid-then-invalid"]),
)
def test_a_bad_message_is_rejected_alone_and_what_is_accepted_is_sent_and_renders(
    proxy: LiveProxy,
    http: httpx.Client,
    account_id: Any,
    mutations: list[tuple[str, Any]],
    repeat: str,
) -> None:
    account = new_account(http, proxy, account_id)
    anchor = base(account)  # valid: must be queued whatever the others hold
    items: list[Item] = [(anchor, None)]
    for field, value in mutations:
        item = base(account)
        if field == "id" and isinstance(value, str | int | float) and not isinstance(value, bool):
            # unique per example (never 'already sent'), the generated text at either end
            value = f"{item['id']}{value}" if len(items) % 2 else f"{value}{item['id']}"
        item[field] = value
        items.append((item, field))
    if repeat != "none":  # the same id twice in one call: the last copy decides
        first = base(account)
        last = {**first, "subject": "the last copy"}
        if repeat == "valid-then-invalid":
            last["to"] = "not an address"
        items += [(first, None), (last, "to" if repeat == "valid-then-invalid" else None)]
    add_and_check(proxy, http, account, items)


# Messages made of plausible values only, every field at once: most get through intake, so
# the builder, the transport and every reader meet the odd text that is valid.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "from": address(),
    "to": st.lists(address(), min_size=1, max_size=3),
    "cc": st.lists(address(), max_size=2),
    "bcc": st.lists(address(), max_size=2),
    "reply_to": address(),
    "return_path": addr_spec,
    "subject": st.one_of(tricky_text, long_text),
    "body": st.one_of(tricky_text, long_text),
    "html": st.one_of(st.booleans(), tricky_text),
    "from_name": tricky_text,
    "headers": st.dictionaries(
        st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
        st.one_of(tricky_text, long_text.map(lambda text: text[:4000])),
        max_size=3,
    ),
    "message_id": st.builds(lambda local, host: f"<{local}@{host}>", local_part, domain),
    "attachments": st.lists(
        st.fixed_dictionaries(
            {
                "filename": st.one_of(tricky_text, long_text.map(lambda text: text[:4000])),
                "storage_path": st.sampled_from(["base64:SGVsbG8=", "mem:some/file.pdf"]),
            }
        ),
        max_size=2,
    ),
    "priority": st.sampled_from([0, 1, 2, 3, "high", "low", "2"]),
    "deferred_ts": st.sampled_from([0, 1_000_000_000]),
}


@st.composite
def plausible_message(draw: st.DrawFn, account: str) -> dict[str, Any]:
    item = base(account)
    for field in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), unique=True)):
        item[field] = draw(PLAUSIBLE[field])
    if isinstance(item.get("html"), bool):
        item.pop("content_type", None)
    return item


@SETTINGS
@given(data=st.data())
def test_what_intake_accepts_of_odd_but_plausible_messages_is_sent_and_renders(
    proxy: LiveProxy, http: httpx.Client, data: st.DataObject
) -> None:
    account = new_account(http, proxy, data.draw(st.one_of(tricky_text, st.just(""))))
    messages = data.draw(st.lists(plausible_message(account), min_size=1, max_size=4))
    # Nothing was made bad on purpose: a rejection may name any field (a display name with
    # '=?', a local part email-validator refuses), but what is accepted must go through.
    items: list[Item] = [(m, "any") for m in messages]
    add_and_check(proxy, http, account, items)


# ---------------------------------------------------------------- every endpoint

# Path and query text from all of Unicode, as percent-encoded UTF-8; a lone surrogate goes
# as the bytes it would have (not UTF-8: the server must say so, not fail).
url_text = st.one_of(hostile_text, st.sampled_from(["", ".", "..", "acc", "mem"])).map(
    lambda text: urllib.parse.quote(text[:2000].encode("utf-8", "surrogatepass"), safe="")
)  # (cut: httpx refuses URLs over 64 KiB; the server answers 414 or 431 before that)
raw_body = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"{", b"[1,", b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe", b'"\\ud800"', b"null"]
    ),
    st.integers(900, 5000).map(lambda depth: b"[" * depth + b"]" * depth),  # past the parser
)


@st.composite
def request_of_any_endpoint(draw: st.DrawFn) -> tuple[str, str, Any, bytes | None]:
    """(method, path with query, JSON body or None, raw body or None)."""
    query = draw(
        st.dictionaries(
            st.sampled_from(["account_id", "status", "limit", "cursor", "force", "x"]),
            url_text,
            max_size=3,
        )
    )
    qs = "&".join(f"{key}={value}" for key, value in query.items())
    segment = draw(url_text)
    body_value = draw(st.one_of(any_json, st.integers(30, 800).map(Deep)))
    endpoint = draw(
        st.sampled_from(
            [
                (
                    "POST",
                    "/commands/add-messages",
                    {"messages": "messages", "default_priority": "x"},
                ),
                ("POST", "/commands/delete-messages", {"ids": "x"}),
                ("POST", "/commands/cleanup-messages", {"older_than_seconds": "x"}),
                ("POST", "/commands/run-now", {}),
                (
                    "POST",
                    "/account",
                    {
                        "id": "x",
                        "port": "x",
                        "user": "x",
                        "password": "x",
                        "tls": "x",
                        "use_tls": "x",
                        "limit_per_minute": "x",
                        "limit_behavior": "x",
                        "batch_size": "x",
                        "max_connections": "x",
                        "ttl": "x",
                        "transport": "x",
                    },
                ),
                (
                    "POST",
                    "/volume",
                    {"name": "x", "backend": "x", "config": "x", "account_id": "x"},
                ),
                ("GET", "/messages", None),
                ("GET", f"/messages/{segment}", None),
                ("GET", "/accounts", None),
                ("DELETE", f"/account/{segment}", None),
                ("GET", "/volumes", None),
                ("GET", f"/volume/{segment}", None),
                ("DELETE", f"/volume/{segment}", None),
                ("GET", "/status", None),
                ("GET", "/metrics", None),
                ("GET", "/health", None),
                ("GET", "/ready", None),
                ("GET", "/openapi.json", None),
                ("GET", "/sandbox/messages", None),
                ("GET", f"/sandbox/messages/{segment}", None),
                ("DELETE", "/sandbox/messages", None),
            ]
        )
    )
    method, path, fields = endpoint
    if fields is None:
        return method, f"{path}?{qs}" if qs else path, None, None
    shape = draw(st.sampled_from(["fields", "any", "raw"]))
    if shape == "raw":
        return method, path, None, draw(raw_body)
    if shape == "any":
        return method, path, body_value, None
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True)) if fields else []
    body = {name: draw(st.one_of(any_json, st.just(body_value))) for name in names}
    if path == "/account":  # whatever else it holds, an account may point at 127.0.0.1 only
        body.update(host="127.0.0.1", port=9)
    if path == "/volume" and body.get("backend") in ("s3", "http", "webdav"):
        body["backend"] = "memory"  # no lookups of generated host names from here
    if path == "/commands/add-messages" and isinstance(body.get("messages"), list):
        body["messages"] = body["messages"][:5]
    return method, path, body, None


@SETTINGS
@given(request=request_of_any_endpoint(), scoped=st.booleans())
def test_no_request_to_any_endpoint_gets_a_5xx(
    proxy: LiveProxy, request: tuple[str, str, Any, bytes | None], scoped: bool
) -> None:
    method, path, body, raw = request
    token = SCOPED_TOKEN if scoped else TOKEN
    with httpx.Client(base_url=proxy.url, headers={"X-API-Token": token}, timeout=30) as client:
        if raw is not None:
            response = client.request(method, path, content=raw)
            assert response.status_code < 500, (path, response.text[:300])
            if response.status_code >= 400:
                assert response.json()["ok"] is False and response.json()["error"]
        else:
            send(client, method, path, body)
