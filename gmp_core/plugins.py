"""The plugin manager: a fresh one per service, never a module global.

Order: block what ``[plugins] disable`` names (a blocked entry point is never imported), load
the entry points of group ``gmp`` (bundled plugins are found there too, exactly like a third
party's), register any extra plugin objects the caller passes, then ``check_pending()`` so a
misspelt hook name fails loudly instead of never being called.

An exception raised inside a hook carries a note naming the plugin (``raised by plugin 'x' in
gmp_startup``), whichever way the hook was called: see :func:`blame`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from gmp_core import hookspecs

ENTRY_POINT_GROUP = "gmp"
BUNDLED_DISTRIBUTION = "genro-mail-proxy"


def make_plugin_manager(
    disabled: Iterable[str] = (),
    *,
    load_entrypoints: bool = True,
    extra_plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gmp")
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    pm.check_pending()
    pm.add_hookcall_monitoring(_ignore_call, _blame_failed_call)
    return pm


async def await_me_maybe(value: Any) -> Any:
    """Notification hooks may return a value, an awaitable, or nothing."""
    if inspect.isawaitable(value):
        return await value
    return value


async def call_each(hook: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call a notification hook one implementation at a time (pluggy's order: last registered
    first), awaiting each result. The first exception propagates, marked with the plugin that
    raised it (see :func:`blame`); later plugins are not called, and no coroutine is left
    un-awaited."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            await await_me_maybe(impl.function(*(kwargs[name] for name in impl.argnames)))
        except Exception as exc:
            blame(exc, f"plugin {impl.plugin_name!r} in {hook.name}")
            raise


async def notify_each(hook: pluggy.HookCaller, log: logging.Logger, **kwargs: Any) -> None:
    """Like :func:`call_each`, but a failing plugin is logged with its name and never keeps
    the others from hearing."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            await await_me_maybe(impl.function(*(kwargs[name] for name in impl.argnames)))
        except Exception:
            log.exception("plugin %r failed in %s", impl.plugin_name, hook.name)


BLAME_PREFIX = "raised by "


def blame(exc: BaseException, culprit: str) -> None:
    """Note on ``exc`` which plugin raised it, keeping its type (callers may catch it). The
    note shows in logged tracebacks and in :func:`describe_failure`."""
    exc.add_note(BLAME_PREFIX + culprit)


def culprits(exc: BaseException) -> list[str]:
    """Who raised ``exc``, as :func:`blame` noted it (innermost first)."""
    notes = getattr(exc, "__notes__", ())
    return [note.removeprefix(BLAME_PREFIX) for note in notes if note.startswith(BLAME_PREFIX)]


def describe_failure(exc: BaseException) -> str:
    """``RuntimeError: boom (raised by plugin 'signer' in gmp_prepare_message)``."""
    text = f"{type(exc).__name__}: {exc}"
    blamed = culprits(exc)
    return f"{text} (raised by {blamed[0]})" if blamed else text


def _ignore_call(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Any) -> None:
    pass


def _blame_failed_call(
    outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Any
) -> None:
    """Hooks called through ``pm.hook`` (registration and firstresult hooks) name the plugin
    that raised, as :func:`call_each` does: pluggy does not say which one it was, so look for
    the implementation's code among the frames the exception went through."""
    try:
        outcome.get_result()
    except Exception as exc:
        if culprits(exc):
            return  # already blamed (a hook called from inside another)
        codes = {getattr(impl.function, "__code__", None): impl for impl in impls}
        frame = exc.__traceback__
        while frame is not None:
            impl = codes.get(frame.tb_frame.f_code)
            if impl is not None:
                blame(exc, f"plugin {impl.plugin_name!r} in {hook_name}")
                return
            frame = frame.tb_next


@dataclass(slots=True)
class PluginInfo:
    name: str
    version: str | None
    source: str  # "bundled", "installed" or "registered"
    hooks: list[str]
    enabled: bool


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every plugin the manager knows, blocked ones included, for ``gmp plugins``."""
    distributions = {plugin: dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked by [plugins] disable
            infos.append(PluginInfo(name, None, "disabled", [], enabled=False))
            continue
        dist = distributions.get(plugin)
        if dist is None:
            source, version = "registered", None
        else:
            source = "bundled" if dist.project_name == BUNDLED_DISTRIBUTION else "installed"
            version = dist.version
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        infos.append(PluginInfo(name, version, source, hooks, enabled=True))
    return sorted(infos, key=lambda info: info.name)
