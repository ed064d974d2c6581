"""The exporter dashboard: the exporter itself and the processes of the kit."""

from __future__ import annotations

from .dsl import OK_FAIL, UP_DOWN, Dashboard, Row, T, process_row, q, rate, sel, stat, ts

EXPORTER = Dashboard(
    file="exporter.json",
    uid="tierwatch-exporter",
    title="tierwatch / Exporter",
    description="The exporter itself: is it scraped, is its probe loop running, how long probes take, "
    "circuit breaker states, how fresh each target's data is, and the CPU, memory, file descriptors and "
    "garbage collections of the exporter and the recovery service.",
    tiers=".*",
    rows=(
        Row(
            "Exporter",
            (
                stat(
                    "Exporter scraped",
                    "Whether Prometheus scrapes each exporter (job tierwatch) successfully.",
                    "none",
                    q(sel("up", 'job="tierwatch"'), "{{instance}}"),
                    alerts=("TierwatchExporterAbsent", "TierwatchExporterDown"),
                    mappings=UP_DOWN,
                    width=6,
                    height=5,
                ),
                stat(
                    "Alerting pipeline",
                    "The Watchdog alert always fires; when it is missing, the rules are not evaluated.",
                    "none",
                    q(sel("ALERTS", 'alertname="Watchdog"', 'alertstate="firing"'), "Watchdog"),
                    alerts=("Watchdog",),
                    mappings=(("1", "FIRING (good)", "green"),),
                    width=6,
                    height=5,
                ),
                stat(
                    "Targets by state",
                    "Configured targets by state (up, down, unknown = not probed yet).",
                    "none",
                    q("sum by (state) (" + sel("tierwatch_targets") + ")", "{{state}}"),
                    width=6,
                    height=5,
                ),
                stat(
                    "Circuits",
                    "Targets by circuit breaker state; open and half-open targets are not probed.",
                    "none",
                    q("sum by (state) (" + sel("tierwatch_circuit_state", T) + ")", "{{state}}"),
                    alerts=("TierwatchCircuitOpen",),
                    width=6,
                    height=5,
                ),
                stat(
                    "Configuration",
                    "Whether the exporter's last configuration reload was accepted (a refused file leaves "
                    "the previous configuration running).",
                    "none",
                    q(sel("tierwatch_config_last_reload_successful"), "{{instance}}"),
                    alerts=("TierwatchConfigReloadFailed",),
                    mappings=OK_FAIL,
                    width=6,
                    height=5,
                ),
            ),
        ),
        Row(
            "Probe loop",
            (
                ts(
                    "Probe rounds",
                    "Probe rounds completed per second (0 means the loop has stopped).",
                    "ops",
                    q(rate("tierwatch_probe_rounds_total"), "{{instance}}"),
                    alerts=("TierwatchProbesStalled",),
                ),
                ts(
                    "Probe round duration",
                    "Wall time of the last probe round (all targets, concurrently).",
                    "s",
                    q(sel("tierwatch_probe_round_duration_seconds"), "{{instance}}"),
                ),
                ts(
                    "Round overruns",
                    "Probe rounds per second that did not finish within the monitor interval.",
                    "ops",
                    q(rate("tierwatch_probe_round_overruns_total"), "{{instance}}"),
                ),
                ts(
                    "Scrape duration",
                    "How long Prometheus takes to scrape the exporter.",
                    "s",
                    q(sel("scrape_duration_seconds", 'job="tierwatch"'), "{{instance}}"),
                ),
            ),
        ),
        Row(
            "Probes",
            (
                ts(
                    "Probe duration",
                    "Duration of each target's last probe, successful or not.",
                    "s",
                    q(sel("tierwatch_probe_last_duration_seconds", T), "{{tier}} {{target}}"),
                ),
                ts(
                    "Probe failures by reason",
                    "Failed probes per second by target and reason.",
                    "cps",
                    q(
                        f"sum by (target, reason) ({rate('tierwatch_probe_failures_total', T)})",
                        "{{target}} {{reason}}",
                    ),
                ),
                ts(
                    "Probe error ratio",
                    "Failed / all probes per target over 5 min (target:tierwatch_probe_errors:ratio_rate5m).",
                    "percentunit",
                    q(sel("target:tierwatch_probe_errors:ratio_rate5m", T), "{{target}}"),
                ),
                ts(
                    "Data freshness",
                    "Seconds since each target was last probed (grows while its circuit is open or the "
                    "loop is stalled).",
                    "s",
                    q(f"time() - {sel('tierwatch_last_probe_timestamp_seconds', T)}", "{{target}}"),
                ),
            ),
        ),
        process_row('job=~"tierwatch|tierwatch-recovery"', "the exporter and the recovery service"),
    ),
)
