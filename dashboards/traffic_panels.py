"""Real-traffic panels of the LB and app dashboards: what users' requests show, from the recording
rules of rules/traffic.rules.yml (HAProxy's built-in exporter, job ``haproxy``, and the app servers'
RED metrics, job ``app``), next to what the health checks show.

The rows are built with generate.py's helpers, which generate.py hands in as its own module (``kit``)
so this module imports nothing from it (generate.py runs as a script and as ``dashboards.generate``).
The records are 5-minute rates, the same the alerts read, so a panel and its alert agree.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

LB_WHERE = "both LBs of the pair summed, HAProxy's own Prometheus exporter (job haproxy), 5-minute rate"
APP_WHERE = (
    "user routes only (not /health, /ready, /metrics), from the app servers' own metrics (job app), "
    "5-minute rate"
)
SEEN_BY_LBS = (
    "HAProxy's per-server series summed per backend and per the app servers' region (server names "
    "are the app servers' target names)"
)


def lb_rows(kit: ModuleType) -> tuple[Any, ...]:
    """The LB dashboard's "Real traffic" row: per backend (``proxy``) of each LB cluster."""
    C, q, sel, ts = kit.C, kit.q, kit.sel, kit.ts
    legend = "{{cluster}} {{proxy}}"

    def record(name: str) -> str:
        return sel(f"cluster_proxy:tierwatch_haproxy_backend_{name}", C)

    return (
        kit.Row(
            "Real traffic by backend",
            (
                ts(
                    "Requests by backend",
                    f"User requests per second each backend receives ({LB_WHERE}).",
                    "reqps",
                    q(record("requests:rate5m"), legend),
                ),
                ts(
                    "5xx ratio by backend",
                    f"Share of each backend's responses that are 5xx, HAProxy's own included ({LB_WHERE}).",
                    "percentunit",
                    q(record("5xx:ratio_rate5m"), legend),
                ),
                ts(
                    "Response time by backend",
                    "How long the backend's servers take to answer: HAProxy's average over its last "
                    "1024 requests, weighted by each LB's request rate (an idle standby weighs nothing).",
                    "s",
                    q(record("response_time_seconds:avg5m"), legend),
                    alerts=("LBBackendLatencyHigh",),
                ),
                ts(
                    "Queue time by backend",
                    "How long requests wait for a free server slot (servers at their maxconn): "
                    "HAProxy's average, weighted by each LB's request rate.",
                    "s",
                    q(record("queue_time_seconds:avg5m"), legend),
                    alerts=("LBBackendQueueLatencyHigh",),
                ),
                ts(
                    "Retries by backend",
                    "Share of each backend's requests the LBs retried because a connection to a server "
                    f"failed ({LB_WHERE}).",
                    "percentunit",
                    q(record("retries:ratio_rate5m"), legend),
                    alerts=("LBBackendRetriesHigh",),
                ),
            ),
        ),
    )


def app_rows(kit: ModuleType) -> tuple[Any, ...]:
    """The app dashboard's rows of user traffic per region, as the apps and as the LBs saw it."""
    C, R, q, sel, ts = kit.C, kit.R, kit.q, kit.sel, kit.ts
    legend = "{{cluster}} {{region}}"
    by_backend = "{{proxy}} {{region}}"

    def lbs(name: str) -> str:
        return sel(f"cluster_proxy_region:tierwatch_haproxy_server_{name}", R)

    return (
        kit.Row(
            "User requests (the apps' own metrics)",
            (
                ts(
                    "Requests by region",
                    f"User requests per second the app servers of each region answered ({APP_WHERE}).",
                    "reqps",
                    q(sel("cluster_region:tierwatch_app_http_requests:rate5m", R), legend),
                ),
                ts(
                    "5xx ratio by region",
                    f"Share of user requests answered with a 5xx ({APP_WHERE}).",
                    "percentunit",
                    q(sel("cluster_region:tierwatch_app_http_5xx:ratio_rate5m", R), legend),
                    alerts=("AppTraffic5xxRatioHigh",),
                ),
                ts(
                    "Latency p95 by region",
                    f"95th percentile of user request duration, from the apps' histogram ({APP_WHERE}).",
                    "s",
                    q(sel("cluster_region:tierwatch_app_http_duration_seconds:p95_rate5m", R), legend),
                    alerts=("AppTrafficLatencyHigh",),
                ),
                ts(
                    "SLO burn rate (user requests)",
                    "5xx share of user requests over 5 minutes and 1 hour, as a multiple of the error "
                    "budget (0.1%): above 14.4 on both pages. Applies while the cluster has traffic; "
                    "without it the health-check burn rate above judges.",
                    "none",
                    q(
                        f"{sel('cluster:tierwatch_app_http_slo_errors:ratio_rate5m', C)} / 0.001",
                        "{{cluster}} 5m",
                    ),
                    q(
                        f"{sel('cluster:tierwatch_app_http_slo_errors:ratio_rate1h', C)} / 0.001",
                        "{{cluster}} 1h",
                    ),
                    alerts=("AppTrafficBurnRateCritical", "AppTrafficBurnRateTicket"),
                    width=24,
                ),
            ),
        ),
        kit.Row(
            "User requests seen by the load balancers",
            (
                ts(
                    "LB requests by backend and region",
                    f"Responses per second the LBs got from each region's servers ({SEEN_BY_LBS}).",
                    "reqps",
                    q(lbs("responses:rate5m"), by_backend),
                ),
                ts(
                    "LB 5xx ratio by backend and region",
                    f"Share of those responses that are 5xx ({SEEN_BY_LBS}).",
                    "percentunit",
                    q(lbs("5xx:ratio_rate5m"), by_backend),
                ),
                ts(
                    "LB response and queue time by backend and region",
                    f"HAProxy's average response time and queue time of each region's servers, weighted "
                    f"by their responses ({SEEN_BY_LBS}).",
                    "s",
                    q(lbs("response_time_seconds:avg5m"), f"{by_backend} response"),
                    q(lbs("queue_time_seconds:avg5m"), f"{by_backend} queue"),
                ),
                ts(
                    "LB retries by backend and region",
                    f"Retries per second of requests to each region's servers ({SEEN_BY_LBS}).",
                    "cps",
                    q(lbs("retries:rate5m"), by_backend),
                    width=24,
                ),
            ),
        ),
    )
