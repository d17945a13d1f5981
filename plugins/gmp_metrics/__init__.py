"""Bundled metrics: Prometheus series of the whole message lifecycle, served at ``/metrics``.

Counters and histograms are fed only by ``gmp_event``; queue depths, pool sizes and loop
heartbeats are read when Prometheus scrapes. Each service has its own registry (tests build
many services in one process), kept in ``service.state["metrics"]``.
"""

from __future__ import annotations

from collections.abc import Callable

from gmp_core import Service, Settings, hookimpl, setting
from gmp_metrics.metrics import Metrics

__all__ = ["Metrics", "MetricsSettings"]

OBSERVER = "metrics-observer"


class MetricsSettings(Settings):
    public: bool = setting(
        True,
        description="serve /metrics without any token, every account's counters to anyone "
        "who reaches the port (false: the API token required)",
    )
    process_metrics: bool = setting(
        True, description="also export process_* and python_* series (CPU, memory, GC)"
    )
    store_timeout: float = setting(
        5.0, gt=0, description="longest wait for the store at a scrape; then gmp_store_up is 0"
    )


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("metrics", MetricsSettings)


@hookimpl
async def gmp_startup(service: Service) -> None:
    settings: MetricsSettings = service.config.section("metrics")
    metrics = Metrics(
        service, process_metrics=settings.process_metrics, store_timeout=settings.store_timeout
    )
    await metrics.refresh()  # every series exists from start-up, at 0
    service.state["metrics"] = metrics
    # The observer is registered with this service's plugin manager only: gmp_event carries
    # no service, and a module-level observer would mix the events of every instance.
    service.pm.register(metrics, name=OBSERVER)


@hookimpl
def gmp_shutdown(service: Service) -> None:
    if service.pm.has_plugin(OBSERVER):
        service.pm.unregister(name=OBSERVER)


@hookimpl
def gmp_register_routes(register: Callable[..., None], service: Service) -> None:
    settings: MetricsSettings = service.config.section("metrics")

    async def exposition() -> tuple[bytes | str, int, dict[str, str]]:
        """Prometheus metrics of this process.

        The text exposition format; no token needed unless `[metrics] public = false`.
        Scrape every process, not a load balancer in front of them (monitoring.md).
        """
        metrics: Metrics | None = service.state.get("metrics")
        if metrics is None:
            return "metrics are not ready yet\n", 503, {"Content-Type": "text/plain"}
        await metrics.refresh()
        return metrics.exposition()

    register("/metrics", exposition, public=settings.public)
