"""Fixtures of the volume tests: files on disk and an HTTP server, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.volumes.servers import FileServer


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A volume root with a few files, and a secret beside it that no path may reach."""
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(b"outside the volume")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dirlink").symlink_to(tmp_path)
    return root


@pytest.fixture
def web() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()
