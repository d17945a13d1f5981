"""The shipped Grafana dashboard and Prometheus alert rules use only series we export."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from gmp_core import Config, DeliveryReport, ReportReply, Service, hookimpl
from tests.support import base_tables, merge

EXAMPLES = Path(__file__).parent.parent / "examples"
SERIES = re.compile(r"\b(?:gmp|process)_[a-z_]+\b")


class SilentReporter:
    """A reporter, so that the per-reporter series exist."""

    __name__ = "test-silent-reporter"
    report_deferred = False

    @hookimpl
    def gmp_register_reporters(self, register: Any, service: Service) -> None:
        register("sync", self)

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        return ReportReply(acknowledged=True)

    async def close(self) -> None:
        pass


async def exported_series(tmp_path: Path) -> set[str]:
    tables = merge(base_tables(tmp_path), {"plugins": {"disable": []}, "rest": {"port": 0}})
    service = Service(Config(tables, environ={}), plugins=[SilentReporter()])
    await service.start()
    try:
        await service.put_account({"id": "acc", "host": "127.0.0.1", "port": 9, "tls": "none"})
        async with httpx.AsyncClient(base_url=service.state["rest"].url) as http:
            text = (await http.get("/metrics")).text
    finally:
        await service.stop()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((EXAMPLES / "prometheus" / "gmp-alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((EXAMPLES / "grafana" / "genro-mail-proxy.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return variables + targets


async def test_alert_rules_and_dashboard_use_exported_series(tmp_path: Path) -> None:
    exported = await exported_series(tmp_path)
    rules = alert_rules()
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    queries = [rule["expr"] for rule in rules] + dashboard_queries()
    used = {name for query in queries for name in SERIES.findall(query)}
    assert {"gmp_oldest_due_message_age_seconds", "gmp_pool_connections_in_use"} <= used
    assert used - exported == set(), "queries name series that /metrics does not export"


def test_alerts_cover_what_operators_asked_for() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {"GmpOldestDueMessageOld", "GmpHighErrorRate", "GmpReportLag", "GmpPoolSaturated"} <= (
        names
    )
