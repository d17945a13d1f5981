"""Store capabilities: the core needs only the queue protocol (gmp_core.Store); a plugin that
keeps data of its own in the store asks for the capability it needs at start-up, and a store
without it stops the start with an error naming the plugin, the protocol and the ways on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import gmp_sql
import peewee as pw
import pytest
from gmp_sql import SqlStore

from gmp_core import (
    CaptureStore,
    Config,
    ConfigError,
    RateWindowStore,
    Service,
    Store,
    VolumeStore,
    hookimpl,
    require_capability,
)
from gmp_core.testing import EventLog, SmtpSink, account, fast_tables, merge, message

# Each plugin that keeps data of its own in the store, and the capability it needs.
NEEDS = {
    "sandbox": CaptureStore,
    "ratelimit": RateWindowStore,
    "volumes": VolumeStore,
}
CAPABILITIES = [Store, *NEEDS.values()]


def members(protocol: type) -> set[str]:
    """The methods a protocol asks for (typing.get_protocol_members is Python 3.13's)."""
    return {name for name in vars(protocol) if not name.startswith("_")}


class QueueOnlyStore:
    """A store of another plugin that offers no capability: the bundled one, with nothing but
    the queue protocol within reach."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name not in members(Store):
            raise AttributeError(name)
        return getattr(self.inner, name)


class QueueOnlyStorePlugin:
    __name__ = "queue-only-store"

    @hookimpl(tryfirst=True)  # asked before gmp_sql, which would answer too
    def gmp_make_store(self, config: Config) -> QueueOnlyStore:
        store = gmp_sql.gmp_make_store(config)
        assert store is not None
        return QueueOnlyStore(store)


@pytest.fixture
async def queue_only_service(
    tmp_path: Path, events: EventLog
) -> AsyncIterator[Callable[[list[str]], Service]]:
    """``make(disabled)``: a service on a :class:`QueueOnlyStore`, these plugins disabled (and
    the HTTP API); stopped after the test if it started."""
    made: list[Service] = []

    def make(disabled: list[str]) -> Service:
        tables = merge(fast_tables(tmp_path), {"plugins": {"disable": ["rest", *disabled]}})
        service = Service(Config(tables, environ={}), plugins=[events, QueueOnlyStorePlugin()])
        made.append(service)
        return service

    yield make
    for service in made:
        await service.stop()


def test_the_bundled_store_implements_every_capability(tmp_path: Path) -> None:
    store = SqlStore(pw.SqliteDatabase(str(tmp_path / "unopened.db")))
    for protocol in CAPABILITIES:
        assert isinstance(store, protocol), protocol.__name__
        assert require_capability(store, protocol, plugin="any", needs="needs it") is store


def test_require_capability_wants_a_runtime_checkable_protocol(tmp_path: Path) -> None:
    """A mistake of the plugin's author, told as one (not as a store lacking something)."""
    store = SqlStore(pw.SqliteDatabase(str(tmp_path / "unopened.db")))
    with pytest.raises(TypeError, match="is not a protocol class"):
        require_capability(store, lambda: None, plugin="any", needs="needs it")

    class NotRuntimeCheckable(Protocol):
        async def reserve_sends(self) -> None: ...

    with pytest.raises(TypeError, match="runtime_checkable"):
        require_capability(store, NotRuntimeCheckable, plugin="any", needs="needs it")


def test_each_method_belongs_to_one_protocol() -> None:
    """The queue protocol holds nothing a capability holds: a store without capabilities
    misses no method the core calls, and a capability is all of a plugin's data."""
    seen: dict[str, str] = {}
    for protocol in CAPABILITIES:
        for name in members(protocol):
            assert name not in seen, f"{name} is in {seen.get(name)} and {protocol.__name__}"
            seen[name] = protocol.__name__
    assert {"claim", "record", "enqueue", "hold_lease", "get_flag"} <= members(Store)
    assert members(RateWindowStore) == {"reserve_sends"}
    assert members(VolumeStore) == {"put_volume", "list_volumes", "delete_volume"}


@pytest.mark.parametrize("plugin", sorted(NEEDS))
async def test_a_store_lacking_a_capability_stops_start_up_naming_plugin_and_protocol(
    queue_only_service: Callable[[list[str]], Service], plugin: str
) -> None:
    others = [other for other in NEEDS if other != plugin]
    with pytest.raises(ConfigError) as raised:
        await queue_only_service(others).start()
    text = str(raised.value)
    assert text.startswith(f"the {plugin} plugin ")
    assert "the configured store (QueueOnlyStore) cannot" in text
    assert f"it does not implement gmp_core.{NEEDS[plugin].__name__}" in text
    assert "Use a store that does (the bundled 'sql')" in text
    assert text.endswith(f'[plugins] disable = ["{plugin}"]')


async def test_the_core_runs_on_the_queue_protocol_alone(
    queue_only_service: Callable[[list[str]], Service], sink: SmtpSink, events: EventLog
) -> None:
    """With the plugins that need capabilities disabled, a store offering only
    ``gmp_core.Store`` takes, sends, shows and purges messages."""
    service = queue_only_service(list(NEEDS))
    await service.start()
    assert isinstance(service.store, QueueOnlyStore)
    await service.put_account(account(sink, limit_per_minute=1))
    await service.add_messages([message("m1"), message("m2")])
    await events.wait("sent", "m2")  # no rate-limit policy: both go at once
    assert len(sink.mails) == 2
    record, history = await service.get_message("m1")
    assert record.status == "sent" and [e.kind for e in history] == ["queued", "sent"]
    assert (await service.store.queue_counts())["sent"] == 2
