"""The app-server dashboard: health checks (RED and the availability SLO) and real user traffic."""

from __future__ import annotations

from .dsl import UP_DOWN, C, Dashboard, R, Row, T, q, rate, sel, stat, ts

# Real user traffic, from the records of rules/traffic.rules.yml (5-minute rates, the same the alerts
# read, so a panel and its alert agree): as the apps' own metrics and as the LBs saw it.
APP_WHERE = (
    "user routes only (not /health, /ready, /metrics), from the app servers' own metrics (job app), "
    "5-minute rate"
)
SEEN_BY_LBS = (
    "HAProxy's per-server series summed per backend and per the app servers' region (server names "
    "are the app servers' target names)"
)
LEGEND = "{{cluster}} {{region}}"
BY_BACKEND = "{{proxy}} {{region}}"


def lbs(name: str) -> str:
    """A record of the LBs' per-server series, summed per backend and app region."""
    return sel(f"cluster_proxy_region:tierwatch_haproxy_server_{name}", R)


TRAFFIC_ROWS: tuple[Row, ...] = (
    Row(
        "User requests (the apps' own metrics)",
        (
            ts(
                "Requests by region",
                f"User requests per second the app servers of each region answered ({APP_WHERE}).",
                "reqps",
                q(sel("cluster_region:tierwatch_app_http_requests:rate5m", R), LEGEND),
            ),
            ts(
                "5xx ratio by region",
                f"Share of user requests answered with a 5xx ({APP_WHERE}).",
                "percentunit",
                q(sel("cluster_region:tierwatch_app_http_5xx:ratio_rate5m", R), LEGEND),
                alerts=("AppTraffic5xxRatioHigh",),
            ),
            ts(
                "Latency p95 by region",
                f"95th percentile of user request duration, from the apps' histogram ({APP_WHERE}).",
                "s",
                q(sel("cluster_region:tierwatch_app_http_duration_seconds:p95_rate5m", R), LEGEND),
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
    Row(
        "User requests seen by the load balancers",
        (
            ts(
                "LB requests by backend and region",
                f"Responses per second the LBs got from each region's servers ({SEEN_BY_LBS}).",
                "reqps",
                q(lbs("responses:rate5m"), BY_BACKEND),
            ),
            ts(
                "LB 5xx ratio by backend and region",
                f"Share of those responses that are 5xx ({SEEN_BY_LBS}).",
                "percentunit",
                q(lbs("5xx:ratio_rate5m"), BY_BACKEND),
            ),
            ts(
                "LB response and queue time by backend and region",
                f"HAProxy's average response time and queue time of each region's servers, weighted "
                f"by their responses ({SEEN_BY_LBS}).",
                "s",
                q(lbs("response_time_seconds:avg5m"), f"{BY_BACKEND} response"),
                q(lbs("queue_time_seconds:avg5m"), f"{BY_BACKEND} queue"),
            ),
            ts(
                "LB retries by backend and region",
                f"Retries per second of requests to each region's servers ({SEEN_BY_LBS}).",
                "cps",
                q(lbs("retries:rate5m"), BY_BACKEND),
                width=24,
            ),
        ),
    ),
)


APP_T = ('tier="app"', T)

APP = Dashboard(
    file="app.json",
    uid="tierwatch-app",
    title="tierwatch / App servers",
    description="The app servers of both regions seen through their health checks: rate, errors, "
    "duration (RED) and the availability SLO.",
    tiers="app",
    rows=(
        Row(
            "Instances",
            (
                stat(
                    "App servers",
                    "Every app server, named region / target, and whether its health check passes.",
                    "none",
                    q(sel("tierwatch_up", *APP_T), "{{region}} / {{target}}"),
                    alerts=("AppInstanceDown", "AppRegionDown"),
                    mappings=UP_DOWN,
                    width=12,
                    height=5,
                ),
                stat(
                    "Availability SLO",
                    "Share of successful health checks per cluster over 1 hour and 1 day "
                    "(from cluster:tierwatch_slo_errors:ratio_avg*); the objective is 99.9%.",
                    "percentunit",
                    q(f"1 - {sel('cluster:tierwatch_slo_errors:ratio_avg1h', C)}", "{{cluster}} 1h"),
                    q(f"1 - {sel('cluster:tierwatch_slo_errors:ratio_avg1d', C)}", "{{cluster}} 1d"),
                    alerts=("AppAvailabilityBurnRateCritical", "AppAvailabilityBurnRateTicket"),
                    thresholds=((None, "red"), (0.999, "green")),
                    width=12,
                    height=5,
                ),
                stat(
                    "TLS certificates",
                    "Time left until the certificate of each https app server expires (the alerts cover the "
                    "load balancers' too).",
                    "s",
                    q(
                        f"{sel('tierwatch_http_tls_cert_expiry_timestamp_seconds', *APP_T)} - time()",
                        "{{target}}",
                    ),
                    alerts=("TlsCertificateExpiringSoon", "TlsCertificateExpired"),
                    thresholds=((None, "red"), (172800.0, "orange"), (1209600.0, "green")),
                    width=24,
                    height=4,
                ),
            ),
        ),
        Row(
            "Rate, errors, duration",
            (
                ts(
                    "Rate: health checks",
                    "Health checks per second, per region.",
                    "reqps",
                    q(
                        "sum by (cluster, region) (" + rate("tierwatch_probes_total", *APP_T) + ")",
                        "{{cluster}} {{region}}",
                    ),
                ),
                ts(
                    "Errors: failed checks by reason",
                    "Failed health checks per second by reason (protocol = wrong status or body).",
                    "cps",
                    q(
                        f"sum by (region, reason) ({rate('tierwatch_probe_failures_total', *APP_T)})",
                        "{{region}} {{reason}}",
                    ),
                    alerts=("AppErrorResponsesHigh",),
                ),
                ts(
                    "Errors: error answers ratio",
                    "Share of health checks answered with an error status or body over 5 minutes.",
                    "percentunit",
                    q(
                        sel("cluster_region:tierwatch_app_error_responses:ratio_rate5m", R),
                        "{{cluster}} {{region}}",
                    ),
                    alerts=("AppErrorResponsesHigh",),
                ),
                ts(
                    "Duration: latency p50 / p95",
                    "Health-check latency percentiles per region, over all its servers (the exporter's "
                    "histogram per cluster and region: the server filter does not apply).",
                    "s",
                    *(
                        q(
                            f"histogram_quantile({p}, sum by (region, le) "
                            f"({rate('tierwatch_cluster_probe_duration_seconds_bucket', APP_T[0], R)}))",
                            f"{{{{region}}}} p{int(p * 100)}",
                        )
                        for p in (0.5, 0.95)
                    ),
                    alerts=("AppProbeLatencyHigh",),
                ),
                ts(
                    "Duration: p95 over 5 minutes",
                    "95th percentile of health-check latency per region over 5 minutes (the alert's view).",
                    "s",
                    q(
                        sel("cluster_region:tierwatch_probe_duration_seconds:p95_rate5m", R),
                        "{{cluster}} {{region}}",
                    ),
                    alerts=("AppProbeLatencyHigh",),
                ),
                ts(
                    "Error budget burn (1h)",
                    "Health-check error ratio over 1 hour divided by the 0.1% budget: above 14.4 pages.",
                    "none",
                    q(f"{sel('cluster:tierwatch_slo_errors:ratio_avg1h', C)} / 0.001", "{{cluster}}"),
                    alerts=("AppAvailabilityBurnRateCritical",),
                ),
            ),
        ),
        Row(
            "Responses",
            (
                ts(
                    "HTTP status",
                    "Status code of each server's last health-check answer.",
                    "none",
                    q(sel("tierwatch_http_status_code", *APP_T), "{{target}}"),
                    width=12,
                ),
                ts(
                    "Response size",
                    "Body size of each server's last health-check answer "
                    "(opt-in: metrics.http_response_size).",
                    "bytes",
                    q(sel("tierwatch_http_response_size_bytes", *APP_T), "{{target}}"),
                    width=12,
                ),
            ),
        ),
        *TRAFFIC_ROWS,
    ),
)
