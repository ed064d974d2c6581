"""The load-balancer dashboard: the HAProxy pair behind the VIP, its frontends, backends and real traffic."""

from __future__ import annotations

from .dsl import UP_DOWN, C, Dashboard, Row, T, q, rate, role_panel, sel, stat, ts

# Real traffic, from the records of rules/traffic.rules.yml (5-minute rates, the same the alerts read,
# so a panel and its alert agree).
LB_WHERE = "both LBs of the pair summed, HAProxy's own Prometheus exporter (job haproxy), 5-minute rate"
LEGEND = "{{cluster}} {{proxy}}"


def record(name: str) -> str:
    """A per-backend record of each LB cluster (``proxy`` is the backend)."""
    return sel(f"cluster_proxy:tierwatch_haproxy_backend_{name}", C)


TRAFFIC_ROWS: tuple[Row, ...] = (
    Row(
        "Real traffic by backend",
        (
            ts(
                "Requests by backend",
                f"User requests per second each backend receives ({LB_WHERE}).",
                "reqps",
                q(record("requests:rate5m"), LEGEND),
            ),
            ts(
                "5xx ratio by backend",
                f"Share of each backend's responses that are 5xx, HAProxy's own included ({LB_WHERE}).",
                "percentunit",
                q(record("5xx:ratio_rate5m"), LEGEND),
            ),
            ts(
                "Response time by backend",
                "How long the backend's servers take to answer: HAProxy's average over its last "
                "1024 requests, weighted by each LB's request rate (an idle standby weighs nothing).",
                "s",
                q(record("response_time_seconds:avg5m"), LEGEND),
                alerts=("LBBackendLatencyHigh",),
            ),
            ts(
                "Queue time by backend",
                "How long requests wait for a free server slot (servers at their maxconn): "
                "HAProxy's average, weighted by each LB's request rate.",
                "s",
                q(record("queue_time_seconds:avg5m"), LEGEND),
                alerts=("LBBackendQueueLatencyHigh",),
            ),
            ts(
                "Retries by backend",
                "Share of each backend's requests the LBs retried because a connection to a server "
                f"failed ({LB_WHERE}).",
                "percentunit",
                q(record("retries:ratio_rate5m"), LEGEND),
                alerts=("LBBackendRetriesHigh",),
            ),
        ),
    ),
)


LB = Dashboard(
    file="lb.json",
    uid="tierwatch-lb",
    title="tierwatch / Load balancers",
    description="The HAProxy pair behind the VIP: which LB is active, frontend traffic and errors, "
    "backends and their servers.",
    tiers="lb",
    rows=(
        Row(
            "Pair",
            (
                role_panel(
                    "Load balancers",
                    "lb",
                    "active",
                    "standby",
                    ("LBActiveDown", "LBStandbyDown", "LBBothDown"),
                    width=10,
                    height=5,
                ),
                stat(
                    "VIP",
                    "Whether the pair's shared address answers with a 2xx/3xx status.",
                    "none",
                    q(sel("tierwatch_lb_vip_up", C), "{{cluster}}"),
                    alerts=("LBVipNotServed",),
                    mappings=(("1", "SERVING", "green"), ("0", "DOWN", "red")),
                    width=5,
                    height=5,
                ),
                stat(
                    "VIP served by a known LB",
                    "1 when the VIP's answer named one of the cluster's LBs in its served-by header.",
                    "none",
                    q(sel("tierwatch_lb_vip_identified", C), "{{cluster}}"),
                    mappings=(("1", "IDENTIFIED", "green"), ("0", "UNKNOWN", "orange")),
                    width=5,
                    height=5,
                ),
                stat(
                    "VIP probe latency",
                    "Latency of the last probe of the VIP.",
                    "s",
                    q(sel("tierwatch_lb_vip_probe_duration_seconds", C), "{{cluster}}"),
                    width=4,
                    height=5,
                ),
            ),
        ),
        Row(
            "Frontends",
            (
                ts(
                    "Frontend requests",
                    "HTTP requests received per second by each frontend of each LB.",
                    "reqps",
                    q(
                        f"sum by (target, proxy) ({rate('tierwatch_lb_frontend_requests_total', T)})",
                        "{{target}} {{proxy}}",
                    ),
                ),
                ts(
                    "Frontend responses by class",
                    "Responses per second the frontends sent, by status class.",
                    "reqps",
                    q(
                        f"sum by (proxy, code) ({rate('tierwatch_lb_frontend_responses_total', T)})",
                        "{{proxy}} {{code}}",
                    ),
                    alerts=("LB5xxRatioHigh",),
                ),
                ts(
                    "Frontend 5xx ratio",
                    "Share of frontend responses that were 5xx over 5 minutes, per cluster and frontend.",
                    "percentunit",
                    q(
                        sel("cluster_proxy:tierwatch_lb_frontend_5xx:ratio_rate5m", C),
                        "{{cluster}} {{proxy}}",
                    ),
                    alerts=("LB5xxRatioHigh",),
                ),
            ),
        ),
        Row(
            "Backends",
            (
                stat(
                    "Backends",
                    "Whether HAProxy has at least one usable server in each backend.",
                    "none",
                    q(sel("tierwatch_lb_backend_up", T), "{{target}} {{proxy}}"),
                    alerts=("LBBackendDown",),
                    mappings=UP_DOWN,
                    width=6,
                ),
                stat(
                    "Backend servers",
                    "Each server of each backend as the LB's health checks see it.",
                    "none",
                    q(sel("tierwatch_lb_server_up", T), "{{target}} {{server}}"),
                    alerts=("LBBackendServerDown", "LBBackendServerFlapping"),
                    mappings=UP_DOWN,
                    width=10,
                ),
                ts(
                    "Active servers per backend",
                    "Active (non-backup) servers UP in each backend.",
                    "short",
                    q(sel("tierwatch_lb_backend_active_servers", T), "{{target}} {{proxy}}"),
                ),
                ts(
                    "Sessions",
                    "Current sessions on frontends and backends.",
                    "short",
                    q(sel("tierwatch_lb_frontend_sessions_current", T), "{{target}} frontend {{proxy}}"),
                    q(sel("tierwatch_lb_backend_sessions_current", T), "{{target}} backend {{proxy}}"),
                ),
                ts(
                    "Queued requests",
                    "Requests waiting for a server, per backend.",
                    "short",
                    q(sel("tierwatch_lb_backend_queue_current", T), "{{target}} {{proxy}}"),
                ),
                ts(
                    "Backend connection errors",
                    "Failed connections per second from the LBs to backend servers.",
                    "cps",
                    q(
                        f"sum by (target, proxy) ({rate('tierwatch_lb_backend_connection_errors_total', T)})",
                        "{{target}} {{proxy}}",
                    ),
                ),
                ts(
                    "Server weights",
                    "Effective weight of each server (traffic shifting lowers it).",
                    "short",
                    q(sel("tierwatch_lb_server_weight", T), "{{target}} {{server}}"),
                ),
            ),
        ),
        *TRAFFIC_ROWS,
    ),
)
