"""docs/security.md links each claim to the test that proves it: those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[(test_\w+|[\w.]+\.py)\]\(\.\./(tests/[\w/]+\.py)\)")


def test_every_test_the_threat_model_names_exists() -> None:
    links = LINK.findall((ROOT / "docs" / "security.md").read_text())
    assert len(links) > 20
    for name, path in links:
        source = (ROOT / path).read_text()  # a whole file, or a test in it
        if not name.endswith(".py"):
            assert re.search(rf"def {name}\(", source), f"{path} has no {name}"
