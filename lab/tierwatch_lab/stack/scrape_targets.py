"""Scrape jobs for real traffic: HAProxy's built-in exporter (job ``haproxy``) and the app servers'
own ``/metrics`` (job ``app``), each target labelled with the tierwatch label model (``tier``,
``cluster``, ``target``, ``region``) as rules/traffic.rules.yml expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from .haproxy import HAProxy
from .prometheus import ScrapeJob

HAPROXY_JOB = "haproxy"
APP_JOB = "app"


class Scrapable(Protocol):
    """An app server that serves Prometheus metrics (stack.express.ExpressApp)."""

    name: str
    region: str

    @property
    def metrics_address(self) -> str: ...


def labelled_job(name: str, targets: Sequence[tuple[str, Mapping[str, str]]]) -> ScrapeJob:
    """A scrape job whose every ``host:port`` has its own target labels (one static config each;
    ``options`` replaces the single unlabelled static config prometheus_config would write)."""
    configs = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
    return ScrapeJob(name, [address for address, _ in targets], options={"static_configs": configs})


def traffic_jobs(
    lbs: Iterable[HAProxy],
    apps: Iterable[Scrapable],
    *,
    lb_cluster: str = "edge",
    app_cluster: str = "web",
    lb_region: str = "primary",
) -> list[ScrapeJob]:
    """The ``haproxy`` job (every LB with a metrics frontend) and the ``app`` job (``apps``);
    a job with no target is left out."""
    haproxy = [
        (lb.metrics_address, {"tier": "lb", "cluster": lb_cluster, "target": lb.name, "region": lb_region})
        for lb in lbs
        if lb.metrics_address is not None
    ]
    app = [
        (a.metrics_address, {"tier": "app", "cluster": app_cluster, "target": a.name, "region": a.region})
        for a in apps
    ]
    jobs = ((HAPROXY_JOB, haproxy), (APP_JOB, app))
    return [labelled_job(name, targets) for name, targets in jobs if targets]
