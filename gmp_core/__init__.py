"""genro-mail-proxy's core. Plugin authors import only from here::

from gmp_core import hookimpl, SendResult

@hookimpl
def gmp_register_transports(register, service):
    register("maildir", MaildirTransport(service.config.section("maildir")))
"""

import pluggy

from gmp_core.captures import Capture, CaptureStore
from gmp_core.config import Config, ConfigError, Settings, setting
from gmp_core.intake import InvalidInput
from gmp_core.interfaces import (
    AttachmentError,
    DeliveryReport,
    RateDecision,
    RateLimitPolicy,
    Reporter,
    ReportReply,
    RouteAnswer,
    RouteRequest,
    Transport,
    VolumeBackend,
)
from gmp_core.models import (
    Account,
    Attachment,
    Event,
    Message,
    Outcome,
    OutgoingMessage,
    Principal,
    SendResult,
    State,
    TlsMode,
)
from gmp_core.rate_windows import RateWindowStore
from gmp_core.service import AccountBusy, Forbidden, NotFound, Service
from gmp_core.store import (
    AccountDeletion,
    Claim,
    DeleteResult,
    EnqueueResult,
    MessageRecord,
    QueueDepth,
    Store,
    StoreCannotWrite,
    require_capability,
)
from gmp_core.volume_records import VolumeRecord, VolumeStore

hookimpl = pluggy.HookimplMarker("gmp")

__all__ = [
    "Account",
    "AccountBusy",
    "AccountDeletion",
    "Attachment",
    "AttachmentError",
    "Capture",
    "CaptureStore",
    "Claim",
    "Config",
    "ConfigError",
    "DeleteResult",
    "DeliveryReport",
    "EnqueueResult",
    "Event",
    "Forbidden",
    "InvalidInput",
    "Message",
    "MessageRecord",
    "NotFound",
    "Outcome",
    "OutgoingMessage",
    "Principal",
    "QueueDepth",
    "RateDecision",
    "RateLimitPolicy",
    "RateWindowStore",
    "ReportReply",
    "Reporter",
    "RouteAnswer",
    "RouteRequest",
    "SendResult",
    "Service",
    "Settings",
    "State",
    "Store",
    "StoreCannotWrite",
    "TlsMode",
    "Transport",
    "VolumeBackend",
    "VolumeRecord",
    "VolumeStore",
    "hookimpl",
    "require_capability",
    "setting",
]
