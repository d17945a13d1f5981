"""Process logging for ``gmp serve``: standard ``logging`` to stderr, as text or JSON lines.

JSON lines (python-json-logger) carry ``time``, ``level``, ``logger``, ``message`` and whatever
a log call passes in ``extra`` (``event``, ``message_id``, ``account_id``, ...), so a log
pipeline can filter on them without parsing sentences.

What we log never includes passwords, tokens or message bodies; the loggers below are kept
above DEBUG because their DEBUG lines would (peewee prints SQL parameters: bodies, passwords).
"""

from __future__ import annotations

import logging
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from gmp_core.config import LoggingSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("peewee", "asyncio")


def configure_logging(
    settings: LoggingSettings, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Send every log record to ``stream`` (stderr), replacing handlers set before."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter() if settings.format == "json" else text_formatter())
    logging.basicConfig(level=(level or settings.level).upper(), handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT)


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
    )
