"""docs/first-plugin.md stays true: its plugin and its test are run as written."""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path

from gmp_core.testing import ServiceStarter, SmtpSink, account

GUIDE = Path(__file__).parent.parent / "docs" / "first-plugin.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.DOTALL)


def test_the_guide_declares_the_entry_point() -> None:
    pyproject = tomllib.loads(code_blocks("toml")[0])
    assert pyproject["project"]["entry-points"]["gmp"] == {"stamp": "gmp_stamp"}
    assert pyproject["project"]["optional-dependencies"]["test"] == ["genro-mail-proxy[testing]"]


async def test_the_guides_plugin_passes_the_guides_test(
    make_gmp_service: ServiceStarter, gmp_smtp_sink: SmtpSink
) -> None:
    plugin_source, test_source = code_blocks("python")[:2]
    plugin = types.ModuleType("gmp_stamp")
    exec(compile(plugin_source, "gmp_stamp.py", "exec"), plugin.__dict__)
    tests: dict[str, object] = {}
    exec(compile(test_source, "test_stamp.py", "exec"), tests)

    # What installing the plugin does: every service loads it.
    service = await make_gmp_service(plugins=[plugin])
    await service.put_account(account(gmp_smtp_sink))
    test = tests["test_every_message_is_stamped"]
    assert callable(test)
    await test(gmp_service=service, gmp_smtp_sink=gmp_smtp_sink)
    assert len(gmp_smtp_sink.mails) == 1
