"""The tables, as peewee models, bound to one database per store instance.

Models are built by :func:`bind_schema` for each database rather than bound globally, so
several stores (tests build many services in one process) never share a binding.

The indexes follow the dispatcher's queries: each state it looks for has a partial index, so
finding due work reads O(batch) rows however many sent messages the table keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

SCHEMA_VERSION = 4

# What turns a database of version N-1 into version N, beyond the tables and indexes that
# ``create_tables(safe=True)`` adds by itself. Statements must suit SQLite and PostgreSQL.
# 2: the report queue and the volumes (new tables only).
# 3: leases (a new table only).
# 4: captured mail, kept for the sandbox transport (a new table only).
MIGRATIONS: dict[int, tuple[str, ...]] = {2: (), 3: (), 4: ()}


class _Table(pw.Model):
    class Meta:
        legacy_table_names = False


class _MessageRow(_Table):
    pk = pw.AutoField()  # arrival order: kept when a queued message is replaced
    id = pw.TextField(unique=True)  # the client's id
    account_id = pw.TextField()
    priority = pw.SmallIntegerField()
    state = pw.TextField()
    attempts = pw.IntegerField(default=0)
    deferred_ts = pw.DoubleField(null=True)
    claimed_by = pw.TextField(null=True)
    lease_until = pw.DoubleField(null=True)
    sent_ts = pw.DoubleField(null=True)
    error_ts = pw.DoubleField(null=True)
    error = pw.TextField(null=True)
    reported_ts = pw.DoubleField(null=True)
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()


class _PayloadRow(_Table):
    """What the message says (JSON of ``Message.to_payload()``), apart from its state: the
    many state changes of a message then rewrite a small row, not its whole text."""

    pk = pw.IntegerField(primary_key=True)  # the message's pk
    payload = pw.TextField()


class _EventRow(_Table):
    pk = pw.AutoField()
    message_id = pw.TextField()
    account_id = pw.TextField(null=True)
    ts = pw.DoubleField()
    kind = pw.TextField()
    code = pw.IntegerField(null=True)
    detail = pw.TextField(default="")
    data = pw.TextField(default="{}")  # JSON
    reported_ts = pw.DoubleField(null=True)


class _SentIdRow(_Table):
    """Tombstones: ids sent and purged, refused as 'already sent' for the idempotency window."""

    id = pw.TextField(primary_key=True)
    sent_ts = pw.DoubleField()


class _SendSlotRow(_Table):
    """One row per reserved send: the sliding windows of the rate limits, shared by every
    process using the store."""

    account_id = pw.TextField()
    ts = pw.DoubleField()

    class Meta:
        primary_key = False


class _AccountRow(_Table):
    id = pw.TextField(primary_key=True)
    host = pw.TextField()
    port = pw.IntegerField()
    user = pw.TextField(null=True)
    password = pw.TextField(null=True)
    tls = pw.TextField()
    limit_per_minute = pw.IntegerField(null=True)
    limit_per_hour = pw.IntegerField(null=True)
    limit_per_day = pw.IntegerField(null=True)
    limit_behavior = pw.TextField()
    batch_size = pw.IntegerField(null=True)
    max_connections = pw.IntegerField()
    ttl = pw.DoubleField()
    transport = pw.TextField()
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()


class _FlagRow(_Table):
    name = pw.TextField(primary_key=True)
    value = pw.TextField()


class _LeaseRow(_Table):
    """A job one process at a time does for all that share the database (posting one
    reporter's reports): who has it, and until when unless renewed."""

    name = pw.TextField(primary_key=True)
    holder = pw.TextField()
    expires = pw.DoubleField()


class _ReportQueueRow(_Table):
    """A report waiting for one reporter: rows go when that reporter acknowledges."""

    reporter = pw.TextField()
    event_pk = pw.IntegerField()
    message_id = pw.TextField()

    class Meta:
        primary_key = pw.CompositeKey("reporter", "event_pk")


class _VolumeRow(_Table):
    """Attachment volumes defined over the API. ``owner`` is the account id, or "" for a
    volume every account may use ("" rather than NULL: NULLs never clash in a key)."""

    name = pw.TextField()
    owner = pw.TextField()
    backend = pw.TextField()
    config = pw.TextField()  # JSON
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()

    class Meta:
        primary_key = pw.CompositeKey("name", "owner")


class _BytesField(pw.Field):
    """Bytes as they are: BLOB on SQLite, BYTEA on PostgreSQL. (peewee's BlobField wraps
    values in the psycopg2 driver's Binary type, which asyncpg has no use for.)"""

    field_type = "BLOB"


class _CaptureRow(_Table):
    """A message a transport captured instead of delivering it (the sandbox), with its
    envelope and bytes (``captures.py``). ``data`` comes last: listings, which leave it out,
    then never read its overflow pages on SQLite."""

    pk = pw.AutoField()  # the capture's id
    account_id = pw.TextField()
    gmp_id = pw.TextField()  # the client's message id
    mail_from = pw.TextField()
    rcpt_to = pw.TextField()  # JSON list
    subject = pw.TextField()
    date = pw.TextField()
    size = pw.IntegerField()
    captured_at = pw.DoubleField()
    data = _BytesField()


class _SchemaRow(_Table):
    version = pw.IntegerField(primary_key=True)


@dataclass(frozen=True)
class Schema:
    Message: type[_MessageRow]
    Payload: type[_PayloadRow]
    Event: type[_EventRow]
    SentId: type[_SentIdRow]
    SendSlot: type[_SendSlotRow]
    Account: type[_AccountRow]
    Flag: type[_FlagRow]
    Lease: type[_LeaseRow]
    ReportQueue: type[_ReportQueueRow]
    Version: type[_SchemaRow]
    Volume: type[_VolumeRow]
    Capture: type[_CaptureRow]

    @property
    def models(self) -> list[type[pw.Model]]:
        return [
            self.Message,
            self.Payload,
            self.Event,
            self.SentId,
            self.SendSlot,
            self.Account,
            self.Flag,
            self.Lease,
            self.ReportQueue,
            self.Version,
            self.Volume,
            self.Capture,
        ]


def bind_schema(db: pw.Database) -> Schema:
    def model(base: type[pw.Model], table: str) -> type:
        meta = type("Meta", (), {"database": db, "table_name": table})
        return type(base.__name__.lstrip("_"), (base,), {"Meta": meta, "__module__": __name__})

    schema = Schema(
        Message=model(_MessageRow, "messages"),
        Payload=model(_PayloadRow, "message_payloads"),
        Event=model(_EventRow, "message_events"),
        SentId=model(_SentIdRow, "sent_ids"),
        SendSlot=model(_SendSlotRow, "send_slots"),
        Account=model(_AccountRow, "accounts"),
        Flag=model(_FlagRow, "flags"),
        Lease=model(_LeaseRow, "leases"),
        ReportQueue=model(_ReportQueueRow, "report_queue"),
        Version=model(_SchemaRow, "gmp_schema"),
        Volume=model(_VolumeRow, "volumes"),
        Capture=model(_CaptureRow, "captures"),
    )
    m = schema.Message
    m.add_index(m.index(m.priority, m.pk, where=m.state == "queued", name="ix_messages_queued"))
    m.add_index(m.index(m.deferred_ts, where=m.state == "scheduled", name="ix_messages_scheduled"))
    m.add_index(m.index(m.lease_until, where=m.state == "sending", name="ix_messages_sending"))
    m.add_index(m.index(m.account_id, m.state, name="ix_messages_account"))
    m.add_index(
        m.index(m.reported_ts, where=m.state.in_(["sent", "error"]), name="ix_messages_final")
    )
    e = schema.Event
    e.add_index(e.index(e.message_id, e.pk, name="ix_events_message"))
    q = schema.ReportQueue
    q.add_index(q.index(q.message_id, name="ix_report_queue_message"))
    s = schema.SendSlot
    s.add_index(s.index(s.account_id, s.ts, name="ix_send_slots"))
    c = schema.Capture
    c.add_index(c.index(c.account_id, c.pk, name="ix_captures_account"))
    c.add_index(c.index(c.gmp_id, name="ix_captures_gmp_id"))
    c.add_index(c.index(c.captured_at, name="ix_captures_time"))
    return schema
